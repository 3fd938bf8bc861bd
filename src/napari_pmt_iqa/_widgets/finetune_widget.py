"""Fine-tune a PMT-IQA model inside napari: on a data set folder or on ratings given in the viewer.

The widget builds a :class:`~napari_pmt_iqa.training.TrainConfig`, runs the trainer on a worker
thread (see :mod:`napari_pmt_iqa._widgets.training_worker`), shows epoch and batch progress, the time
left and live curves (training loss per batch and per epoch, validation SRCC and PLCC per epoch),
and offers Pause / Resume / Stop. At the end, or on Stop, the best checkpoint (kept by the trainer
in the chosen output folder) is copied with its metadata into the user models folder, which the
model lists of later sessions read, and announced through
:data:`~napari_pmt_iqa._widgets.training_worker.model_trained`: an open score widget adds and selects
it at once. "Resume from checkpoint" continues a stopped run from its ``state.pt``.

States: ``idle -> training <-> paused -> stopping -> done | stopped | error -> (start again)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QEvent, Qt, Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._torch_guard import guard_triton
from .charts import CurvesPlot
from .rating_widget import (
    SCALE_HIGH,
    SCALE_LOW,
    SCALE_NAME,
    get_ratings,
    rated_pairs,
    ratings_changed,
)
from .training_worker import (
    Outcome,
    State,
    estimate_time_left,
    format_seconds,
    model_trained,
    publish_model,
    rss_mb,
    training_events,
    user_message,
)

BACKBONES = [
    ("ImageNet EfficientNet-Lite0", "efficientnet_lite0"),
    ("ImageNet ResNet-50", "resnet50"),
    ("ImageNet ResNet-34", "resnet34"),
    ("ImageNet ResNet-18", "resnet18"),
    ("tiny CNN (random init, for tests)", "tiny"),
]
CHOOSE_FILE = "Checkpoint file..."
LAYOUTS = ["auto", "csv", "livec", "biq2021"]
LEARNING_RATES = ["1e-3", "3e-4", "1e-4", "3e-5", "1e-5"]
#: Defaults by device kind: epochs, batch size, learning rate, freeze backbone.
DEFAULTS = {
    "cpu": {"epochs": 5, "batch_size": 4, "lr": "1e-4", "freeze_backbone": True},
    "gpu": {"epochs": 10, "batch_size": 16, "lr": "1e-4", "freeze_backbone": False},
}
MIN_RATINGS = 5


def default_out_dir() -> Path:
    """A fresh run folder under the plugin's cache (``.../napari-pmt-iqa/runs/finetune-<time>``)."""
    from ..weights import cache_dir

    return cache_dir() / "runs" / time.strftime("finetune-%Y%m%d-%H%M%S")


def prewarm_imports() -> None:
    """Import what training needs now, on the GUI thread, while the widget opens.

    Imports hold the GIL for long stretches (loading scipy's extension modules, first needed by
    the first validation, holds it for about 0.3 s): done on the trainer thread they would stall
    the GUI in the middle of training.
    """
    guard_triton()
    import safetensors.torch  # noqa: F401
    import scipy.stats  # noqa: F401

    from ..training import data as _data  # noqa: F401
    from ..training import trainer as _trainer  # noqa: F401


def _real_train() -> Callable[..., Any]:
    guard_triton()
    from ..training import train

    return train


# --------------------------------------------------------------------------- widget
class FinetuneWidget(QWidget):
    """Fine-tune PMT-IQA on a data set or on ratings given in the viewer, in the background.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it).
    train_fn
        The trainer, ``train(config, listeners=[...], control=Control())``; by default
        :func:`napari_pmt_iqa.training.train` (tests may pass another callable with that contract).
    """

    #: Emitted with the new :class:`State` whenever it changes.
    state_changed = Signal(str)
    #: Emitted with the published checkpoint path when a run left a usable model.
    model_ready = Signal(str)

    def __init__(
        self,
        napari_viewer: Any,
        train_fn: Callable[..., Any] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        guard_triton()
        self.viewer = napari_viewer
        self.train_fn = train_fn
        self.state = State.IDLE
        self.worker = None
        self.control = None
        self.config = None
        self.outcome: Outcome | None = None
        self.published_path: Path | None = None
        self.last_error = ""
        self.last_checkpoint = ""
        self.events: list = []
        self.rss_before: float | None = None
        self.rss_after: float | None = None
        self._closing = False
        prewarm_imports()
        self._reset_progress()
        self._build()
        self._connect()
        self.refresh_rating_count()
        self._apply_device_defaults()
        self._set_state(State.IDLE)

    # ------------------------------------------------------------------ UI
    def _build(self) -> None:
        from ..devices import available_devices  # imports torch (after guard_triton)
        from ..weights import DEFAULT_MODEL, list_models

        lay = QVBoxLayout(self)

        data_box = QGroupBox("Training data")
        dl = QVBoxLayout(data_box)
        self.ratings_radio = QRadioButton("Ratings in this viewer")
        self.ratings_count = QLabel()
        self.folder_radio = QRadioButton("Data set (folder or CSV)")
        grp = QButtonGroup(self)
        grp.addButton(self.ratings_radio)
        grp.addButton(self.folder_radio)
        self.ratings_radio.setChecked(True)
        self.data_edit = QLineEdit()
        self.data_edit.setPlaceholderText("folder of a data set, or a CSV image,mos")
        self.data_browse = QPushButton("...")
        self.data_browse.setFixedWidth(30)
        self.layout_combo = QComboBox()
        self.layout_combo.addItems(LAYOUTS)
        self.layout_combo.setToolTip("csv: image,mos[,split]; livec: ChallengeDB_release; biq2021")
        r1 = QHBoxLayout()
        r1.addWidget(self.ratings_radio)
        r1.addWidget(self.ratings_count, 1)
        dl.addLayout(r1)
        dl.addWidget(self.folder_radio)
        r2 = QHBoxLayout()
        r2.addWidget(self.data_edit, 1)
        r2.addWidget(self.data_browse)
        r2.addWidget(self.layout_combo)
        dl.addLayout(r2)
        lay.addWidget(data_box)

        form = QFormLayout()
        self.init_combo = QComboBox()
        self.init_combo.setToolTip(
            "Fine-tune a trained model (best with few images) or start from an ImageNet backbone."
        )
        try:
            models = list_models()
        except Exception:
            models = {}
        for name, desc in models.items():
            self.init_combo.addItem(Path(name).name if Path(name).suffix else name, f"model:{name}")
            self.init_combo.setItemData(
                self.init_combo.count() - 1, desc or name, Qt.ItemDataRole.ToolTipRole
            )
        for label, bb in BACKBONES:
            self.init_combo.addItem(label, f"backbone:{bb}")
        self.init_combo.addItem(CHOOSE_FILE, None)
        i = self.init_combo.findData(f"model:{DEFAULT_MODEL}")
        self.init_combo.setCurrentIndex(
            i if i >= 0 else self.init_combo.findData("backbone:efficientnet_lite0")
        )
        self._last_init = self.init_combo.currentIndex()
        self.device_combo = QComboBox()
        self.device_combo.addItems(available_devices())
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 512)
        self.lr_combo = QComboBox()
        self.lr_combo.setEditable(True)
        self.lr_combo.addItems(LEARNING_RATES)
        self.lr_combo.setToolTip(
            "Backbone learning rate; the heads use 10x (divided by 10 every 6 epochs)"
        )
        self.freeze_check = QCheckBox(
            "Freeze backbone (train the heads only: faster, fewer images)"
        )
        self.progressive_check = QCheckBox(
            "Progressive schedule (classification first, then regression)"
        )
        self.progressive_check.setChecked(True)
        self.out_edit = QLineEdit(str(default_out_dir()))
        self.out_edit.setToolTip(
            "The run folder: best.safetensors, last.safetensors and state.pt go here"
        )
        self.out_browse = QPushButton("...")
        self.out_browse.setFixedWidth(30)
        self.name_edit = QLineEdit("my-finetuned-model")
        self.name_edit.setToolTip(
            "Name of the model in the model lists (a copy goes to your models folder)"
        )
        out_row = QHBoxLayout()
        out_row.addWidget(self.out_edit, 1)
        out_row.addWidget(self.out_browse)
        form.addRow("Start from", self.init_combo)
        form.addRow("Device", self.device_combo)
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Learning rate", self.lr_combo)
        form.addRow(self.freeze_check)
        form.addRow(self.progressive_check)
        form.addRow("Output folder", out_row)
        form.addRow("Model name", self.name_edit)
        lay.addLayout(form)

        b1 = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.pause_button = QPushButton("Pause")
        self.stop_button = QPushButton("Stop")
        for b in (self.start_button, self.pause_button, self.stop_button):
            b1.addWidget(b)
        lay.addLayout(b1)
        b2 = QHBoxLayout()
        self.resume_ckpt_button = QPushButton("Resume from checkpoint")
        self.resume_ckpt_button.setToolTip(
            "Continue the run in the output folder from its state.pt"
        )
        self.use_button = QPushButton("Use in scorer")
        self.use_button.setToolTip(
            "Add the trained model to the score widget's model list and select it"
        )
        b2.addWidget(self.resume_ckpt_button)
        b2.addWidget(self.use_button)
        lay.addLayout(b2)

        self.epoch_bar = QProgressBar()
        self.epoch_bar.setFormat("epoch %v / %m")
        self.batch_bar = QProgressBar()
        self.batch_bar.setFormat("batch %v / %m")
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.plot = CurvesPlot(self)
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.epoch_bar)
        lay.addWidget(self.batch_bar)
        lay.addWidget(self.status_label)
        lay.addWidget(self.plot)
        lay.addWidget(self.result_label)
        lay.addStretch(1)

    def _connect(self) -> None:
        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        self.resume_ckpt_button.clicked.connect(self.resume_from_checkpoint)
        self.use_button.clicked.connect(self.use_in_scorer)
        self.device_combo.currentTextChanged.connect(self._apply_device_defaults)
        self.init_combo.activated.connect(self._on_init_activated)
        self.data_browse.clicked.connect(self._browse_data)
        self.out_browse.clicked.connect(self._browse_out)
        self.out_edit.textChanged.connect(lambda *_: self._update_buttons())
        self.ratings_radio.toggled.connect(lambda *_: self._update_buttons())
        ratings_changed.connect(self.refresh_rating_count)
        self.viewer.layers.events.inserted.connect(self.refresh_rating_count)
        self.viewer.layers.events.removed.connect(self.refresh_rating_count)
        # napari < 0.6 neither quits a plugin's workers nor closes its dock widgets when its window
        # closes: watch the window itself (see eventFilter)
        window = getattr(getattr(self.viewer, "window", None), "_qt_window", None)
        if window is not None:
            window.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt API)
        """Shut down when the viewer's window closes: at once on ``viewer.close()``, and after a
        close by the user only once the window is hidden (napari may ask first; a cancel goes on)."""
        kind = event.type()
        if not event.spontaneous() and (
            kind == QEvent.Type.Close or (kind == QEvent.Type.Hide and not obj.isVisible())
        ):
            self.shutdown()
        return False

    def _disconnect(self) -> None:
        ratings_changed.disconnect(self.refresh_rating_count)
        for emitter in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            try:
                emitter.disconnect(self.refresh_rating_count)
            except Exception:
                pass

    # ------------------------------------------------------------------ settings
    def _apply_device_defaults(self, *_: Any) -> None:
        """Sensible settings for a CPU (few epochs, small batches, frozen backbone) or a GPU."""
        dev = self.device_combo.currentText()
        kind = (
            "gpu"
            if dev.startswith(("cuda", "mps")) or (dev == "auto" and self.device_combo.count() > 2)
            else "cpu"
        )
        d = DEFAULTS[kind]
        self.epochs_spin.setValue(d["epochs"])
        self.batch_spin.setValue(d["batch_size"])
        self.lr_combo.setCurrentText(d["lr"])
        self.freeze_check.setChecked(d["freeze_backbone"])

    def set_init(self, kind: str, value: str) -> None:
        """Choose the starting model: ``("backbone", name)`` or ``("model", name_or_path)``."""
        i = self.init_combo.findData(f"{kind}:{value}")
        if i < 0:
            if kind != "model":
                raise ValueError(f"Unknown backbone {value!r}.")
            i = self.init_combo.count() - 1
            self.init_combo.insertItem(i, Path(value).name, f"{kind}:{value}")
        self.init_combo.setCurrentIndex(i)
        self._last_init = i

    def _on_init_activated(self, index: int) -> None:
        if self.init_combo.itemData(index) is not None:
            self._last_init = index
            return
        path, _ = QFileDialog.getOpenFileName(
            self, "Start from a checkpoint", "", "Checkpoints (*.safetensors);;All files (*)"
        )
        self.init_combo.setCurrentIndex(self._last_init)
        if path:
            self.set_init("model", path)

    def _browse_data(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Data set folder")
        if path:
            self.data_edit.setText(path)
            self.folder_radio.setChecked(True)

    def _browse_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Output folder")
        if path:
            self.out_edit.setText(path)

    def refresh_rating_count(self, *_: Any) -> None:
        if self._closing:
            return
        n = sum(len(get_ratings(ly)) for ly in self.viewer.layers)
        try:
            self.ratings_count.setText(f"({n} rated)")
        except RuntimeError:  # the Qt side was deleted with its viewer, without a close event
            self._closing = True
            self._disconnect()
            return
        self.ratings_count.setToolTip(
            f"Rate at least {MIN_RATINGS} images or planes with the rating widget (keys 1-5)."
        )

    def learning_rate(self) -> float:
        text = self.lr_combo.currentText().strip()
        try:
            lr = float(text)
        except ValueError as exc:
            raise ValueError(f"The learning rate {text!r} is not a number (e.g. 1e-4).") from exc
        if not 0 < lr < 1:
            raise ValueError(f"The learning rate must be between 0 and 1; got {lr}.")
        return lr

    def make_config(self, resume: str | Path | None = None):
        """The :class:`TrainConfig` of the current settings.

        Raises
        ------
        ValueError
            Too few or constant ratings, no data folder, a bad learning rate.
        """
        from ..score_scale import ScoreScale
        from ..training import TrainConfig

        kw: dict[str, Any] = {}
        if self.ratings_radio.isChecked():
            pairs = rated_pairs(self.viewer.layers)
            if len(pairs) < MIN_RATINGS:
                raise ValueError(
                    f"{len(pairs)} images are rated; rate at least {MIN_RATINGS} (better a few dozen) "
                    "with the rating widget (keys 1-5), or choose a data set folder."
                )
            if len({s for _, s in pairs}) < 2:
                raise ValueError(
                    "All ratings are equal: give better and worse images different scores."
                )
            kw["data"] = pairs
            kw["score_scale"] = ScoreScale(SCALE_LOW, SCALE_HIGH, True, SCALE_NAME)
            data_desc = f"{len(pairs)} planes rated in napari"
        else:
            path = self.data_edit.text().strip()
            if not path:
                raise ValueError(
                    "Choose a data set folder (or a CSV image,mos), or train on ratings."
                )
            kw["data"] = path
            kw["layout"] = self.layout_combo.currentText()
            data_desc = f"{path} (layout {kw['layout']})"
        choice = self.init_combo.currentData()
        if choice is None:
            raise ValueError("Choose a starting model.")
        kind, _, value = str(choice).partition(":")
        if kind == "backbone":
            kw["init"], kw["backbone"] = None, value
        else:
            kw["init"] = value
        out = self.out_edit.text().strip()
        if not out:
            raise ValueError("Choose an output folder.")
        cfg = TrainConfig(
            out_dir=str(Path(out).expanduser()),
            epochs=int(self.epochs_spin.value()),
            batch_size=int(self.batch_spin.value()),
            lr=self.learning_rate(),
            freeze_backbone=self.freeze_check.isChecked(),
            progressive=self.progressive_check.isChecked(),
            device=self.device_combo.currentText(),
            resume=str(resume) if resume else None,
            **kw,
        )
        self._data_desc = data_desc
        return cfg

    # ------------------------------------------------------------------ actions
    def start(self, resume: str | Path | None = None) -> bool:
        """Start training with the current settings (on a worker thread); False if it cannot."""
        if self.state.busy:
            return False
        try:
            config = self.make_config(resume=resume or None)
        except Exception as exc:
            self._report_error(user_message(exc))
            return False
        return self.start_with(config)

    def start_with(self, config: Any) -> bool:
        """Start training ``config`` (a ready :class:`TrainConfig`)."""
        from napari.qt.threading import create_worker

        from ..training.events import Control

        if self.state.busy:
            return False
        train_fn = self.train_fn or _real_train()
        self.config = config
        self.control = Control()
        self.outcome = None
        self.published_path = None
        self.last_error = ""
        self.events = []
        self._reset_progress()
        self.plot.clear(getattr(config, "epochs", 1))
        self.result_label.setText("")
        self.rss_before = rss_mb()
        name = self.name_edit.text().strip() or "finetuned"
        info = self._training_info(None)

        def publish(res: Any) -> Path | None:  # runs on the worker thread, after training
            best = getattr(res, "best_path", None)
            if not best or not Path(best).exists():
                return None
            extra = dict(info)
            extra.update(
                epochs_done=int(getattr(res, "epochs_done", 0) or 0),
                stopped=bool(getattr(res, "stopped", False)),
                best_val=_jsonable(getattr(res, "best_val", None) or {}),
            )
            return publish_model(best, name, extra, emit=False)

        worker = create_worker(
            training_events,
            config,
            train_fn,
            self.control,
            on_result=publish,
            _worker_class=_training_worker_class(),
            _start_thread=False,
        )
        worker.control = self.control
        worker.yielded.connect(self._on_events)
        worker.returned.connect(self._on_outcome)
        worker.errored.connect(self._on_worker_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_state(State.TRAINING)
        self.status_label.setText("Preparing the data and the model...")
        worker.start()
        return True

    def toggle_pause(self) -> None:
        """Pause (at the next batch) or resume a paused run."""
        if self.control is None:
            return
        if self.state == State.TRAINING:
            self.control.pause()
            self.pause_button.setEnabled(False)
            self.status_label.setText("Pausing at the next batch...")
        elif self.state == State.PAUSED:
            self.control.resume()
            self.pause_button.setEnabled(False)

    def pause(self) -> None:
        if self.state == State.TRAINING:
            self.toggle_pause()

    def resume(self) -> None:
        if self.state == State.PAUSED:
            self.toggle_pause()

    def stop(self) -> None:
        """Stop at the next batch; the best checkpoint so far is kept and published."""
        if self.control is not None and self.state.busy:
            self.control.request_stop()
            self._set_state(State.STOPPING)
            self.status_label.setText("Stopping at the next batch...")

    def state_file(self) -> Path | None:
        """The ``state.pt`` a stopped run can continue from (None if there is none)."""
        res = self.outcome.result if self.outcome is not None else None
        cand = getattr(res, "state_path", None)
        if cand and Path(cand).exists():
            return Path(cand)
        out = self.out_edit.text().strip()
        p = Path(out).expanduser() / "state.pt" if out else None
        return p if p is not None and p.exists() else None

    def resume_from_checkpoint(self) -> bool:
        """Continue the run of the output folder from its ``state.pt`` (e.g. after Stop)."""
        st = self.state_file()
        if st is None:
            self._report_error("There is no state.pt in the output folder to resume from.")
            return False
        if self.state.busy:
            return False
        cfg = self.config
        if cfg is not None and Path(str(cfg.out_dir)).expanduser().resolve() == st.parent.resolve():
            # the run of this session: continue it with its own settings and data
            import dataclasses

            return self.start_with(dataclasses.replace(cfg, resume=str(st)))
        return self.start(resume=st)  # a run of an earlier session: the current settings

    def use_in_scorer(self) -> bool:
        """Announce the trained model again (``model_trained``): the score widget selects it."""
        if self.published_path is None or not Path(self.published_path).exists():
            self._report_error(
                "No trained model yet: train (or stop a run after its first epoch) first."
            )
            return False
        from ..weights import read_metadata

        model_trained.emit(str(self.published_path), read_metadata(self.published_path))
        return True

    # ------------------------------------------------------------------ worker callbacks
    def _reset_progress(self) -> None:
        self._epochs = 1
        self._start_epoch = 0
        self._batches = 1
        self._done_batches = 0
        self._total_batches = 1
        self._t0 = time.perf_counter()
        self._paused_s = 0.0
        self._pause_t: float | None = None
        self._speed = 0.0

    def _on_events(self, events: list) -> None:
        if not events:
            return
        self.events.extend(events)
        for ev in events:
            kind = type(ev).__name__
            handler = getattr(self, f"_ev_{kind}", None)
            if handler is not None:
                handler(ev)
        self._update_progress_text()
        self.plot.update()

    def _ev_Preparing(self, ev) -> None:  # noqa: N802
        self.batch_bar.setRange(0, max(1, int(ev.total)))
        self.batch_bar.setValue(int(ev.done))
        self.status_label.setText(f"Preparing the images ({ev.stage}): {ev.done}/{ev.total}")

    def _ev_DataIssue(self, ev) -> None:  # noqa: N802
        from napari.utils.notifications import show_warning

        show_warning(f"Fine-tuning: {ev.message}")

    def _ev_CheckpointSaved(self, ev) -> None:  # noqa: N802
        self.last_checkpoint = ev.path

    def _ev_Started(self, ev) -> None:  # noqa: N802
        self._epochs = int(ev.epochs)
        self._start_epoch = int(ev.start_epoch)
        self._batches = max(1, int(ev.batches_per_epoch))
        self._total_batches = max(1, (self._epochs - self._start_epoch) * self._batches)
        self._t0 = time.perf_counter()
        self.plot.clear(self._epochs)
        self.epoch_bar.setRange(0, self._epochs)
        self.epoch_bar.setValue(self._start_epoch)
        self.batch_bar.setRange(0, self._batches)
        self.batch_bar.setValue(0)
        self._device = ev.device
        self._n = (ev.n_train, ev.n_val)

    def _ev_BatchEnd(self, ev) -> None:  # noqa: N802
        self._done_batches += 1
        self._speed = float(ev.images_per_s)
        self.batch_bar.setRange(0, max(1, int(ev.batches)))
        self.batch_bar.setValue(int(ev.batch) + 1)
        self.epoch_bar.setValue(int(ev.epoch))
        self.plot.add("batch loss", ev.epoch + (ev.batch + 1) / max(1, ev.batches), ev.loss)

    def _ev_EpochEnd(self, ev) -> None:  # noqa: N802
        self.epoch_bar.setValue(int(ev.epoch) + 1)
        self.plot.add("train loss", ev.epoch + 1, ev.train_loss)
        val = ev.val or {}
        self.plot.add("val SRCC", ev.epoch + 1, float(val.get("srcc", np.nan)))
        self.plot.add("val PLCC", ev.epoch + 1, float(val.get("plcc", np.nan)))

    def _ev_Paused(self, ev) -> None:  # noqa: N802
        if self.state != State.STOPPING:
            self._pause_t = time.perf_counter()
            self._set_state(State.PAUSED)

    def _ev_Resumed(self, ev) -> None:  # noqa: N802
        if self._pause_t is not None:
            self._paused_s += time.perf_counter() - self._pause_t
            self._pause_t = None
        if self.state != State.STOPPING:
            self._set_state(State.TRAINING)

    def _update_progress_text(self) -> None:
        if self.state == State.PAUSED:
            self.status_label.setText(
                "Paused. Resume to go on, Stop to end and keep the best model."
            )
            return
        if self.state == State.STOPPING or not self._done_batches:
            return
        elapsed = time.perf_counter() - self._t0 - self._paused_s
        left = estimate_time_left(elapsed, self._done_batches, self._total_batches)
        ep = self.epoch_bar.value()
        self.status_label.setText(
            f"Epoch {min(ep + 1, self._epochs)}/{self._epochs}, batch {self.batch_bar.value()}/"
            f"{self.batch_bar.maximum()} · {self._speed:.1f} img/s · about {format_seconds(left)} left"
        )

    def _on_outcome(self, outcome: Outcome) -> None:
        self.outcome = outcome
        if outcome is None:  # the worker was quit (viewer closed)
            return
        res, err = outcome.result, outcome.error
        if err is not None:
            failed = [e for e in outcome.events if type(e).__name__ == "Failed"]
            if failed:  # the trainer's own words: what happened and what to do
                msg = user_message(failed[-1].message or str(err), failed[-1].hint)
            elif hasattr(err, "message"):
                msg = user_message(err.message, getattr(err, "hint", ""))
            else:
                msg = user_message(err)
            best = (failed[-1].best_path if failed else "") or self._existing("best.safetensors")
            if best:
                msg += f"\nThe last good checkpoint stays at {best}."
            self._set_state(State.ERROR)
            self._report_error(msg)
            self.result_label.setText(msg)
            return
        stopped = bool(getattr(res, "stopped", False))
        best = getattr(res, "best_path", None)
        text = []
        if outcome.publish_error is not None:
            self._report_error(
                user_message(outcome.publish_error, "Check that the models folder is writable.")
            )
        if outcome.published is not None:
            self.published_path = Path(outcome.published)
            text.append(f"Best model: {best}\nAdded to your models as {self.published_path}")
            from ..weights import read_metadata

            model_trained.emit(str(self.published_path), read_metadata(self.published_path))
            self.model_ready.emit(str(self.published_path))
        elif outcome.publish_error is None:
            text.append("Stopped before the first epoch ended: no checkpoint was saved.")
        bv = getattr(res, "best_val", None) or {}
        if bv:
            text.append(
                "Best validation: "
                + ", ".join(f"{k.upper()} {v:.3f}" for k, v in bv.items() if isinstance(v, float))
            )
        self.result_label.setText("\n".join(text))
        self._set_state(State.STOPPED if stopped else State.DONE)
        from napari.utils.notifications import show_info

        show_info(
            ("Fine-tuning stopped" if stopped else "Fine-tuning finished")
            + (
                f": the model is in the score widget's list ({Path(self.published_path).name})."
                if self.published_path
                else "."
            )
        )

    def _on_worker_error(self, exc: BaseException) -> None:
        # training_events never raises for trainer errors; this is a bug in the glue itself
        self._set_state(State.ERROR)
        self._report_error(user_message(exc))

    def _on_finished(self) -> None:
        self.worker = None
        self.rss_after = rss_mb()
        try:
            if self.state.busy:  # quit without an outcome (widget or viewer closed)
                self._set_state(State.STOPPED)
            self._update_buttons()
        except RuntimeError:  # the Qt side is already gone with its viewer
            self._closing = True

    def _existing(self, name: str) -> str:
        out = self.out_edit.text().strip()
        p = Path(out).expanduser() / name if out else None
        return str(p) if p is not None and p.exists() else ""

    def _training_info(self, res: Any = None) -> dict:
        cfg = self.config
        return {
            "data": getattr(self, "_data_desc", ""),
            "init": str(getattr(cfg, "init", None) or f"ImageNet {getattr(cfg, 'backbone', '')}"),
            "epochs_done": int(getattr(res, "epochs_done", 0) or 0),
            "epochs": int(getattr(cfg, "epochs", 0) or 0),
            "batch_size": int(getattr(cfg, "batch_size", 0) or 0),
            "lr": float(getattr(cfg, "lr", 0.0) or 0.0),
            "freeze_backbone": bool(getattr(cfg, "freeze_backbone", False)),
            "progressive": bool(getattr(cfg, "progressive", True)),
            "device": str(getattr(cfg, "device", "")),
            "stopped": bool(getattr(res, "stopped", False)),
            "best_val": _jsonable(getattr(res, "best_val", None) or {}),
            "run_dir": str(getattr(cfg, "out_dir", "")),
        }

    def _report_error(self, msg: str) -> None:
        from napari.utils.notifications import show_error

        self.last_error = msg
        show_error(msg)

    # ------------------------------------------------------------------ state
    _STATUS = {
        State.IDLE: "Ready.",
        State.DONE: "Done.",
        State.STOPPED: "Stopped. 'Resume from checkpoint' continues the run.",
        State.ERROR: "Failed (see the message). Change the settings and start again.",
    }

    def _set_state(self, state: State) -> None:
        self.state = state
        if state in self._STATUS and not self._closing:
            self.status_label.setText(self._STATUS[state])
        self._update_buttons()
        self.state_changed.emit(state.value)

    def _update_buttons(self) -> None:
        if self._closing:
            return
        s = self.state
        busy = s.busy
        self.start_button.setEnabled(not busy)
        self.pause_button.setEnabled(s in (State.TRAINING, State.PAUSED))
        self.pause_button.setText("Resume" if s == State.PAUSED else "Pause")
        self.stop_button.setEnabled(s in (State.TRAINING, State.PAUSED))
        self.resume_ckpt_button.setEnabled(
            not busy and s != State.DONE and self.state_file() is not None
        )
        self.use_button.setEnabled(not busy and self.published_path is not None)
        for w in (
            self.ratings_radio,
            self.folder_radio,
            self.data_edit,
            self.data_browse,
            self.layout_combo,
            self.init_combo,
            self.device_combo,
            self.batch_spin,
            self.lr_combo,
            self.freeze_check,
            self.progressive_check,
            self.out_edit,
            self.out_browse,
            self.name_edit,
        ):
            w.setEnabled(not busy)
        self.epochs_spin.setEnabled(not busy)

    # ------------------------------------------------------------------ teardown
    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop a running trainer and wait (briefly) for its thread; disconnect from the viewer."""
        if self._closing:
            return
        self._closing = True
        self._disconnect()
        if self.control is not None:
            self.control.request_stop()
        if self.worker is not None:
            self.worker.quit()

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.shutdown()
        super().closeEvent(event)


def _jsonable(d: dict) -> dict:
    """Numbers as floats (NaN as None), so that the metadata is valid JSON."""
    out = {}
    for k, v in dict(d).items():
        if isinstance(v, (int, float, np.floating, np.integer)):
            v = float(v)
            out[str(k)] = None if v != v else v
        else:
            out[str(k)] = str(v)
    return out


_WORKER_CLASS = None


def _training_worker_class():
    """A napari GeneratorWorker whose ``quit`` also stops the trainer and whose end closes the
    generator (so the trainer thread is joined and memory released even when napari quits it)."""
    global _WORKER_CLASS
    if _WORKER_CLASS is None:
        from napari.qt.threading import GeneratorWorker

        class TrainingWorker(GeneratorWorker):
            control = None

            def quit(self) -> None:
                if self.control is not None:
                    self.control.request_stop()
                super().quit()

            def work(self):
                try:
                    return super().work()
                finally:
                    gen = getattr(self, "_gen", None)
                    if gen is not None:
                        gen.close()

        _WORKER_CLASS = TrainingWorker
    return _WORKER_CLASS
