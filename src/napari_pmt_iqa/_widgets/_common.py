"""Pieces shared by the widgets: the model/device chooser and the state of a background job."""

from __future__ import annotations

import threading
from pathlib import Path

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QSpinBox,
    QWidget,
)

from .._settings import apply_cache_dir, get_settings

CHOOSE_FILE = "Choose file…"


class JobState:
    """Progress and cancellation shared between the GUI thread and one worker.

    The worker writes ``done``/``total`` (plain float assignments) and polls :meth:`cancelled`; the
    GUI reads the progress on a timer and calls :meth:`cancel`.
    """

    def __init__(self) -> None:
        self.done = 0.0
        self.total = 1.0
        self.reason = ""
        self._cancel = threading.Event()

    def progress(self, done: float, total: float) -> None:
        self.done, self.total = float(done), float(max(total, 1))

    def cancel(self, reason: str = "") -> None:
        self.reason = self.reason or reason
        self._cancel.set()

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def fraction(self) -> float:
        return max(0.0, min(1.0, self.done / self.total))


def notify(msg: str, error: bool) -> None:
    """Show ``msg`` in the viewer as an error or a warning notification."""
    from napari.utils.notifications import show_error, show_warning

    (show_error if error else show_warning)(msg)


class BackgroundJobs:
    """Mixin of the widgets that run one generator job at a time on a napari thread worker.

    The widget calls :meth:`_init_jobs` in its ``__init__`` and has ``progress`` (a progress bar
    of 0-1000), ``cancel_button`` and ``status`` (a label); it overrides :meth:`_set_busy` to
    enable or disable its own buttons. Progress comes from the job's :class:`JobState`, read on a
    timer; messages go to the status label and, for errors and warnings, to a notification.
    """

    def _init_jobs(self) -> None:
        self.worker = None
        self.state: JobState | None = None
        self.last_error = ""
        self._timer = QTimer(self)
        self._timer.setInterval(50)
        self._timer.timeout.connect(self._poll)

    def is_running(self) -> bool:
        return self.worker is not None

    def _set_busy(self, busy: bool) -> None:
        """Enable or disable the widget's own buttons (Cancel is handled here)."""

    def _message(self, text: str, error: bool = False, warn: bool = False) -> None:
        self.status.setText(text)
        if error or warn:
            self.last_error = text
            notify(text, error)

    def _poll(self) -> None:
        if self.state is not None:
            self.progress.setValue(int(1000 * self.state.fraction))

    def _start_job(self, func, *args, on_yield, on_return, text: str) -> None:
        """Run ``func(*args, state)`` on a worker; ``on_yield``/``on_return`` get its output."""
        from napari.qt.threading import create_worker

        self.state = JobState()
        self.last_error = ""
        self.worker = create_worker(
            func, *args, self.state, _start_thread=False, _ignore_errors=True
        )
        self.worker.yielded.connect(on_yield)
        self.worker.returned.connect(on_return)
        self.worker.errored.connect(lambda exc: self._message(error_text(exc), error=True))
        self.worker.finished.connect(self._on_finished)
        self._set_busy(True)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.status.setText(text)
        self._timer.start()
        self.worker.start()

    def _on_finished(self) -> None:
        self._timer.stop()
        self._poll()
        self.worker = None
        self.cancel_button.setEnabled(False)
        self._set_busy(False)

    def cancel(self, reason: str = "Cancelled.") -> None:
        """Ask the running job to stop at its next step (image, plane or tile)."""
        if self.state is not None and self.is_running():
            self.state.cancel(reason)
            self.status.setText("Cancelling…")


def error_text(exc: BaseException) -> str:
    """A message for the user: the text of our own errors, the type and text of anything else."""
    from ..data.datasets import DatasetError
    from ..devices import DeviceError
    from ..imaging import ImageError
    from ..weights import CheckpointError
    from .overlays import LayerError

    if isinstance(exc, (ImageError, CheckpointError, DatasetError, DeviceError, LayerError)):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "Out of memory: lower the memory budget (Preferences > napari-pmt-iqa) or crop the image."
    return f"{type(exc).__name__}: {exc}"


class ModelChooser(QWidget):
    """Model (registered names, user models, "Choose file…"), device and memory budget."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None, memory: bool = True) -> None:
        super().__init__(parent)
        from ..devices import available_devices  # imports torch (lazily, after guard_triton)

        settings = get_settings()
        apply_cache_dir(settings)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.model_combo = QComboBox()
        self.model_combo.setToolTip(
            "A registered model, a model you trained, or a checkpoint file (.safetensors)"
        )
        self.device_combo = QComboBox()
        self.device_combo.addItems(available_devices())
        idx = self.device_combo.findText(settings.device)
        if idx < 0 and settings.device:
            self.device_combo.addItem(settings.device)
            idx = self.device_combo.count() - 1
        self.device_combo.setCurrentIndex(max(0, idx))
        self.memory_spin = QSpinBox()
        self.memory_spin.setRange(16, 1_000_000)
        self.memory_spin.setSuffix(" MB")
        self.memory_spin.setValue(int(settings.memory_mb))
        self.memory_spin.setToolTip(
            "Memory budget of one backbone pass; larger images are scored in tiles"
        )
        self.info = QLabel()
        self.info.setWordWrap(True)
        self.info.setVisible(False)
        form.addRow("Model", self.model_combo)
        form.addRow("", self.info)
        form.addRow("Device", self.device_combo)
        if memory:
            form.addRow("Memory", self.memory_spin)
        self._last_index = 0
        self.refresh()
        self.model_combo.activated.connect(self._on_activated)

    # ------------------------------------------------------------------ models
    def refresh(self) -> None:
        """(Re)list the registered and user models, keeping the current choice when possible."""
        from ..weights import DEFAULT_MODEL, REGISTRY, list_models

        keep = self.current_model()
        extra = [
            self.model_combo.itemData(i)
            for i in range(self.model_combo.count())
            if self.model_combo.itemData(i) and Path(str(self.model_combo.itemData(i))).suffix
        ]
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        try:
            models = list_models()
        except Exception as exc:  # a broken cache folder must not break the widget
            models = {}
            self._show_info(f"Could not list the models ({exc}).")
        for name, desc in models.items():
            label = Path(name).name if Path(name).suffix else name
            self.model_combo.addItem(label, name)
            self.model_combo.setItemData(self.model_combo.count() - 1, desc or name, 3)  # tooltip
        for path in extra:
            if self.model_combo.findData(path) < 0:
                self.model_combo.addItem(Path(path).name, path)
        self.model_combo.addItem(CHOOSE_FILE, None)
        self.model_combo.blockSignals(False)
        if keep is not None and self.model_combo.findData(keep) >= 0:
            self.model_combo.setCurrentIndex(self.model_combo.findData(keep))
        elif DEFAULT_MODEL in models:
            self.model_combo.setCurrentIndex(self.model_combo.findData(DEFAULT_MODEL))
        else:
            self.model_combo.setCurrentIndex(0)
        self._last_index = self.model_combo.currentIndex()
        if DEFAULT_MODEL not in REGISTRY:
            self._show_info(
                f"The default model ({DEFAULT_MODEL}) is not shipped with this version yet: "
                f"choose a checkpoint file (.safetensors) with '{CHOOSE_FILE}'."
            )
        else:
            self.info.setVisible(False)

    def _show_info(self, text: str) -> None:
        self.info.setText(text)
        self.info.setVisible(True)

    def add_model(self, path: str | Path, select: bool = True) -> None:
        """Offer a checkpoint file (e.g. a model just trained) and select it.

        Raises
        ------
        CheckpointError
            The file is not a napari-pmt-iqa checkpoint (checked from its header only).
        """
        from ..weights import read_metadata

        path = str(Path(path).expanduser())
        read_metadata(path)
        i = self.model_combo.findData(path)
        if i < 0:
            i = self.model_combo.count() - 1  # before "Choose file…"
            self.model_combo.insertItem(i, Path(path).name, path)
        if select:
            self.model_combo.setCurrentIndex(i)
            self._last_index = i
        self.changed.emit()

    def _on_activated(self, index: int) -> None:
        if self.model_combo.itemData(index) is not None:
            self._last_index = index
            self.changed.emit()
            return
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a PMT-IQA checkpoint", "", "Checkpoints (*.safetensors);;All files (*)"
        )
        self.model_combo.setCurrentIndex(self._last_index)
        if path:
            try:
                self.add_model(path)
            except Exception as exc:
                from napari.utils.notifications import show_error

                show_error(f"Cannot use {path}: {error_text(exc)}")

    def current_model(self) -> str | None:
        """The chosen registered name or checkpoint path; None when nothing usable is chosen."""
        data = self.model_combo.currentData() if self.model_combo.count() else None
        return str(data) if data else None

    def device(self) -> str:
        return self.device_combo.currentText() or "auto"

    def memory_mb(self) -> int:
        return int(self.memory_spin.value())

    def require_model(self) -> str:
        """The chosen model, or a clear error when there is none."""
        from ..weights import CheckpointError

        model = self.current_model()
        if model is None:
            raise CheckpointError(
                f"No model is chosen: use '{CHOOSE_FILE}' to pick a checkpoint (.safetensors); the "
                "default model is not available in this version yet."
            )
        return model
