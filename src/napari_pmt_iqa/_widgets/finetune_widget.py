"""Fine-tune a PMT-IQA model inside napari on ratings given in the viewer (or on a data set).

The widget runs the few-shot recipe of :mod:`napari_pmt_iqa.training.finetune` (the one
``pmt-iqa finetune`` and :func:`napari_pmt_iqa.training.finetune` run, with the same defaults) on a
worker thread (:mod:`napari_pmt_iqa._widgets.training_worker`), and is made of three parts:

* :class:`~napari_pmt_iqa._widgets.finetune_form.FinetuneForm`, the settings, which build the
  :class:`~napari_pmt_iqa.training.FinetuneConfig`;
* :class:`~napari_pmt_iqa._widgets.finetune_progress.RunView`, the bars, curves and result;
* :func:`~napari_pmt_iqa._widgets.publishing.publish_model`, which copies the trained model into
  the user models folder (one copy per run), announced through
  :data:`~napari_pmt_iqa._widgets.training_worker.model_trained` so that an open score widget adds
  and selects it.

At the end it shows the held-out SRCC of the starting model and of the fine-tuned one; when the
fine-tune did not improve it, it asks before the new model replaces the current one in the scorer.
Pause / Resume / Stop act at the next step; "Resume from checkpoint" continues a stopped run from
its ``state.pt``.

States: ``idle -> training <-> paused -> stopping -> done | stopped | error -> (start again)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QEvent, Signal
from qtpy.QtWidgets import (
    QHBoxLayout,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .._torch_guard import guard_triton
from .finetune_form import FinetuneForm, default_out_dir  # noqa: F401  (re-exported)
from .finetune_progress import RunView, before_after
from .rating_widget import ratings_changed
from .training_worker import (
    Outcome,
    State,
    model_saved,
    model_trained,
    publish_model,
    rss_mb,
    training_events,
    user_message,
)


def _napari_before(version: tuple[int, int]) -> bool:
    """Whether the installed napari is older than ``version`` (major, minor)."""
    import napari

    try:
        return tuple(int(p) for p in napari.__version__.split(".")[:2]) < version
    except ValueError:  # an unusual version string: assume a recent napari
        return False


def prewarm_imports() -> None:
    """Import what training needs now, on the GUI thread, while the widget opens.

    Imports hold the GIL for long stretches (loading scipy's extension modules, first needed by
    the first held-out measurement, holds it for about 0.3 s): done on the trainer thread they
    would stall the GUI in the middle of training.
    """
    guard_triton()
    import safetensors.torch  # noqa: F401
    import scipy.optimize  # noqa: F401
    import scipy.stats  # noqa: F401
    import torch._dynamo  # noqa: F401  (the first optimiser imports it: about 2 s of GIL)

    from ..training import data as _data  # noqa: F401
    from ..training import finetune as _finetune  # noqa: F401
    from ..training import heads_fit as _heads_fit  # noqa: F401


def _real_finetune() -> Callable[..., Any]:
    guard_triton()
    from ..training.finetune import finetune

    return finetune


# --------------------------------------------------------------------------- widget
class FinetuneWidget(QWidget):
    """Fine-tune PMT-IQA on ratings given in the viewer (or a data set), in the background.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it).
    train_fn
        The trainer, ``fn(config, listeners=[...], control=Control())``; by default
        :func:`napari_pmt_iqa.training.finetune` (tests may pass another callable with that
        contract).
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
        self.announced = False
        self.last_error = ""
        self.rss_before: float | None = None
        self.rss_after: float | None = None
        self._closing = False
        prewarm_imports()
        self._build()
        self._connect()
        self._set_state(State.IDLE)

    # ------------------------------------------------------------------ UI
    def _build(self) -> None:
        lay = QVBoxLayout(self)
        self.form = FinetuneForm(self.viewer, self)
        lay.addWidget(self.form)
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
        self.run_view = RunView(self)
        lay.addWidget(self.run_view)
        lay.addStretch(1)
        # the controls tests and scripts reach for
        f, r = self.form, self.run_view
        self.ratings_radio, self.ratings_count = f.ratings_radio, f.ratings_count
        self.folder_radio, self.data_edit, self.layout_combo = (
            f.folder_radio,
            f.data_edit,
            f.layout_combo,
        )
        self.init_combo, self.device_combo = f.init_combo, f.device_combo
        self.defect_check, self.blend_combo = f.defect_check, f.blend_combo
        self.epochs_spin, self.seed_spin = f.epochs_spin, f.seed_spin
        self.out_edit, self.name_edit = f.out_edit, f.name_edit
        self.epoch_bar, self.batch_bar = r.epoch_bar, r.batch_bar
        self.status_label, self.plot, self.result_label = r.status_label, r.plot, r.result_label

    def _connect(self) -> None:
        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        self.resume_ckpt_button.clicked.connect(self.resume_from_checkpoint)
        self.use_button.clicked.connect(self.use_in_scorer)
        self.out_edit.textChanged.connect(lambda *_: self._update_buttons())
        self.ratings_radio.toggled.connect(lambda *_: self._update_buttons())
        ratings_changed.connect(self.refresh_rating_count)
        self.viewer.layers.events.inserted.connect(self.refresh_rating_count)
        self.viewer.layers.events.removed.connect(self.refresh_rating_count)
        # napari < 0.6 neither quits a plugin's workers nor closes its dock widgets when its window
        # closes: the widget watches the main window itself (eventFilter). There it takes
        # napari's ``window._qt_window`` (deprecated in newer napari, which cancels the workers
        # itself); elsewhere the widget finds the window among its Qt parents when it is shown or
        # starts a run (a dock never shown, e.g. a tab never brought to the front, can still train).
        self._watching_window = False
        if _napari_before((0, 6)):
            window = getattr(getattr(self.viewer, "window", None), "_qt_window", None)
            if window is not None:
                window.installEventFilter(self)
                self._watching_window = True

    def _watch_window(self) -> None:
        """Install the window-closing filter on the main window, once it is among our parents."""
        if self._watching_window:
            return
        window = self.parentWidget()
        while window is not None and not isinstance(window, QMainWindow):
            window = window.parentWidget()
        if window is not None:
            window.installEventFilter(self)  # no Python reference: it would keep the window
            self._watching_window = True  # (and its viewer) alive

    def showEvent(self, event) -> None:  # noqa: N802 (Qt API)
        super().showEvent(event)
        self._watch_window()

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

    @property
    def events(self) -> list:
        """The events of the current (or last) run."""
        return self.run_view.events

    def set_init(self, kind: str, value: str) -> None:
        """Choose the starting model: ``("backbone", name)`` or ``("model", name_or_path)``."""
        self.form.set_init(kind, value)

    def make_config(self, resume: str | Path | None = None):
        """The :class:`~napari_pmt_iqa.training.FinetuneConfig` of the current settings."""
        return self.form.make_config(resume)

    def refresh_rating_count(self, *_: Any) -> None:
        if self._closing:
            return
        try:
            self.form.refresh_count()
        except RuntimeError:  # the Qt side was deleted with its viewer, without a close event
            self._closing = True
            self._disconnect()

    # ------------------------------------------------------------------ actions
    def start(self, resume: str | Path | None = None) -> bool:
        """Start fine-tuning with the current settings (on a worker thread); False if it cannot."""
        if self.state.busy:
            return False
        try:
            config = self.make_config(resume=resume or None)
        except Exception as exc:
            msg = user_message(exc)
            self._report_error(msg)
            self.status_label.setText("Not started (see the message).")
            self.result_label.setText(f"Not started: {msg}")
            return False
        if not resume:
            from .finetune_form import fresh_run_folder

            asked = Path(str(config.out_dir))
            free = fresh_run_folder(asked)
            if free != asked:  # the folder holds an earlier run: keep it, use the next one
                from napari.utils.notifications import show_info

                config.out_dir = str(free)
                self.out_edit.setText(str(free))
                show_info(f"{asked} holds an earlier run, which is kept: this run goes to {free}.")
        return self.start_with(config)

    def start_with(self, config: Any) -> bool:
        """Start the run of ``config`` (a ready :class:`~napari_pmt_iqa.training.FinetuneConfig`)."""
        from napari.qt.threading import create_worker

        from ..training.events import Control

        if self.state.busy:
            return False
        self._watch_window()
        train_fn = self.train_fn or _real_finetune()
        self.config = config
        self.control = Control()
        self.outcome = None
        self.published_path = None
        self.announced = False
        self.last_error = ""
        self.run_view.reset(getattr(config, "epochs", None) or 1)
        self.rss_before = rss_mb()
        name = self.name_edit.text().strip() or "finetuned"
        info = self._training_info(None)
        resumed = bool(getattr(config, "resume", None))

        def publish(res: Any) -> Path | None:  # runs on the worker thread, after training
            best = getattr(res, "best_path", None)
            if not best or not Path(best).exists():
                return None
            extra = dict(info)
            extra.update(self._training_info(res))
            # a resumed run replaces its earlier copy; a new run adds a model
            return publish_model(best, name, extra, emit=False, replace_run=resumed)

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
        """Pause (at the next step) or resume a paused run."""
        if self.control is None:
            return
        if self.state == State.TRAINING:
            self.control.pause()
            self.pause_button.setEnabled(False)
            self.status_label.setText("Pausing at the next step...")
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
        """Stop at the next step; the best model so far is kept and published."""
        if self.control is not None and self.state.busy:
            self.control.request_stop()
            self._set_state(State.STOPPING)
            self.status_label.setText("Stopping at the next step...")

    def state_file(self) -> Path | None:
        """The ``state.pt`` a stopped run can continue from (None if there is none)."""
        res = self.outcome.result if self.outcome is not None else None
        cand = getattr(res, "state_path", None)
        if cand and Path(cand).exists():
            return Path(cand)
        out = self.form.out_dir()
        p = out / "state.pt" if out is not None else None
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
        """Announce the trained model (``model_trained``): the score widget selects it."""
        if self.published_path is None or not Path(self.published_path).exists():
            self._report_error(
                "No trained model yet: train (or stop a run after its first epoch) first."
            )
            return False
        self._announce()
        return True

    def _announce(self) -> None:
        from ..weights import read_metadata

        model_trained.emit(str(self.published_path), read_metadata(self.published_path))
        self.announced = True
        self.model_ready.emit(str(self.published_path))

    def ask_use_anyway(self, text: str) -> bool:
        """Ask whether a model that did not improve should replace the current one in the scorer.

        Tests replace this method; a real session shows a question dialog.
        """
        answer = QMessageBox.question(
            self,
            "The fine-tuned model did not improve",
            text + "\n\nUse it in the scorer anyway?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    # ------------------------------------------------------------------ worker callbacks
    def _on_events(self, events: list) -> None:
        if not events:
            return
        for ev in events:
            kind = type(ev).__name__
            if kind == "DataIssue":
                from napari.utils.notifications import show_warning

                show_warning(f"Fine-tuning: {ev.message}")
            elif kind == "Paused" and self.state != State.STOPPING:
                self.run_view.paused()
                self._set_state(State.PAUSED)
            elif kind == "Resumed":
                self.run_view.resumed()
                if self.state != State.STOPPING:
                    self._set_state(State.TRAINING)
        self.run_view.on_events(events, show_progress=self.state == State.TRAINING)
        if self.state == State.PAUSED:
            self.status_label.setText(
                "Paused. Resume to go on, Stop to end and keep the best model so far."
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
        text = []
        if outcome.publish_error is not None:
            self._report_error(
                user_message(outcome.publish_error, "Check that the models folder is writable.")
            )
        if getattr(res, "start_val", None) or getattr(res, "best_val", None):
            text.append(before_after(res))
        if outcome.published is not None:
            self.published_path = Path(outcome.published)
            text.append(f"Saved to your models as {self.published_path.name}.")
        elif outcome.publish_error is None:
            text.append("Stopped before the first epoch ended: no model was saved.")
        self.result_label.setText("\n".join(text))
        self._set_state(State.STOPPED if stopped else State.DONE)
        use = False
        if self.published_path is not None:
            use = bool(getattr(res, "improved", True)) or self.ask_use_anyway(
                before_after(res)
                + ": the fine-tuned model did not beat the starting model on the held-out "
                "ratings (rating more images, over the whole range, helps)."
            )
            if use:
                self._announce()
            else:
                from ..weights import read_metadata

                model_saved.emit(str(self.published_path), read_metadata(self.published_path))
                text.append(
                    "Not used in the scorer: it did not improve on the held-out ratings "
                    "(it is in the scorer's model list; 'Use in scorer' selects it)."
                )
                self.result_label.setText("\n".join(text))
        from napari.utils.notifications import show_info

        show_info(
            ("Fine-tuning stopped" if stopped else "Fine-tuning finished")
            + (
                f": the model is in the score widget's list ({self.published_path.name})."
                if use and self.published_path
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
        out = self.form.out_dir()
        p = out / name if out is not None else None
        return str(p) if p is not None and p.exists() else ""

    def _training_info(self, res: Any = None) -> dict:
        cfg = self.config
        init = getattr(cfg, "init", None)
        backbone = getattr(cfg, "backbone", None)
        info = {
            "data": self.form.data_desc,
            "init": str(init) if init else (f"ImageNet {backbone}" if backbone else "default"),
            "recipe": "few-shot",
            "device": str(getattr(cfg, "device", "")),
            "seed": int(getattr(cfg, "seed", 0) or 0),
            "run_dir": str(getattr(cfg, "out_dir", "")),
        }
        if res is not None:
            info.update(
                epochs_done=int(getattr(res, "epochs_done", 0) or 0),
                stopped=bool(getattr(res, "stopped", False)),
                holdout_before=_jsonable(getattr(res, "start_val", None) or {}),
                holdout_after=_jsonable(getattr(res, "best_val", None) or {}),
                improved=bool(getattr(res, "improved", False)),
            )
        return info

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
        self.form.set_enabled(not busy)

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
