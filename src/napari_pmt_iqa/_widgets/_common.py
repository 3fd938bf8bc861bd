"""Pieces shared by the widgets: the model/device chooser, the state of a background job, messages
for the viewer, and the scroll area every docked widget lives in."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtCore import QEvent, QSize, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._settings import Settings, apply_cache_dir, get_settings, watch_settings

CHOOSE_FILE = "Choose file…"
log = logging.getLogger("napari_pmt_iqa")


class JobState:
    """Progress and cancellation shared between the GUI thread and one worker.

    The worker writes ``done``/``total`` (plain float assignments) and polls :meth:`cancelled`; the
    GUI reads the progress on a timer and calls :meth:`cancel`. A job also counts as cancelled once
    napari asked its worker to quit (:meth:`watch`): napari does that from its task list, e.g. when
    the viewer is closed while the job runs.
    """

    def __init__(self) -> None:
        self.done = 0.0
        self.total = 1.0
        self.reason = ""
        self._cancel = threading.Event()
        self._worker = None

    def watch(self, worker) -> None:
        """Count ``worker.quit()`` (napari's task cancel) as a cancel request."""
        self._worker = worker

    def progress(self, done: float, total: float) -> None:
        self.done, self.total = float(done), float(max(total, 1))

    def cancel(self, reason: str = "") -> None:
        self.reason = self.reason or reason
        self._cancel.set()

    def cancelled(self) -> bool:
        if self._cancel.is_set():
            return True
        worker = self._worker
        if worker is not None and getattr(worker, "abort_requested", False):
            self.reason = (
                self.reason or "Cancelled in napari (its task list or closing the viewer)."
            )
            return True
        return False

    @property
    def fraction(self) -> float:
        return max(0.0, min(1.0, self.done / self.total))


def notify(msg: str, error: bool) -> None:
    """Show ``msg`` in the viewer as an error or a warning notification."""
    from napari.utils.notifications import show_error, show_warning

    (show_error if error else show_warning)(msg)


class TurnQueue:
    """Work for the GUI thread done one item per turn of the event loop (napari takes about
    0.1 s to build a layer, and collects garbage for each one removed: doing many at once stalls
    the viewer).

    ``handle(item)`` does one item; it may return False for an item with nothing left to do
    (e.g. its image is gone), and the next is taken in the same turn. An item that raises does
    not hold up the others. ``items`` is the list still to do (a widget may filter it); call
    :meth:`start` after adding to it.
    """

    def __init__(self, parent: QWidget, handle: Callable[[Any], Any], interval_ms: int = 15):
        self.items: list = []
        self._handle = handle
        self.timer = QTimer(parent)
        self.timer.setSingleShot(True)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._next)

    def start(self) -> None:
        self.timer.start()

    def clear(self) -> None:
        self.timer.stop()
        self.items = []

    def __bool__(self) -> bool:
        return bool(self.items)

    def _next(self) -> None:
        try:
            while self.items and self._handle(self.items.pop(0)) is False:
                pass
        finally:
            if self.items:
                self.timer.start()


class BackgroundJobs:
    """Mixin of the widgets that run one generator job at a time on a napari thread worker.

    The widget calls :meth:`_init_jobs` in its ``__init__`` and has ``progress`` (a progress bar
    of 0-1000), ``cancel_button`` and ``status`` (a label); it overrides :meth:`_set_busy` to
    enable or disable its own buttons. Progress comes from the job's :class:`JobState`, read on a
    timer; messages go to the status label and, for errors and warnings, to a notification.

    Each job also shows in napari's activity dock (a cancelable napari progress bar, whose Cancel
    cancels the job), and napari's own task cancel (``worker.quit()``, used when the viewer closes)
    stops it at its next tile too. A job that napari stopped that way returns nothing:
    :meth:`_on_job_aborted` reports it.
    """

    def _init_jobs(self) -> None:
        self.worker = None
        self.state: JobState | None = None
        self.last_error = ""
        self.activity = None  # the napari progress bar of the running job
        self._job_returned = False
        self._on_job_return = None
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
        if self.state is None:
            return
        value = int(1000 * self.state.fraction)
        self.progress.setValue(value)
        bar = self.activity
        if bar is not None:
            if getattr(bar, "is_canceled", False) and not self.state.cancelled():
                self.cancel("Cancelled in napari's activity dock.")
            if value > bar.n:
                bar.update(value - bar.n)

    def _start_job(self, func, *args, on_yield, on_return, text: str) -> None:
        """Run ``func(*args, state)`` on a worker; ``on_yield``/``on_return`` get its output."""
        from napari.qt.threading import create_worker

        self.state = JobState()
        self.last_error = ""
        self._job_returned = False
        self._on_job_return = on_return
        self.worker = create_worker(
            func, *args, self.state, _start_thread=False, _ignore_errors=True
        )
        self.state.watch(self.worker)
        # bound methods only: Qt drops them with the widget, a lambda would outlive it
        self.worker.yielded.connect(on_yield)
        self.worker.returned.connect(self._on_job_returned)
        self.worker.errored.connect(self._on_job_errored)
        self.worker.finished.connect(self._on_finished)
        self._set_busy(True)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.status.setText(text)
        self.activity = _activity_bar(f"PMT-IQA: {text.rstrip('…')}")
        self._timer.start()
        self.worker.start()

    def _on_job_returned(self, out) -> None:
        self._job_returned = True
        if self._on_job_return is not None:
            self._on_job_return(out)

    def _on_job_errored(self, exc: BaseException) -> None:
        self._job_returned = True
        self._message(error_text(exc), error=True)

    def _on_job_aborted(self) -> None:
        """The job was stopped by napari (``worker.quit()``) and returned nothing."""
        reason = self.state.reason if self.state is not None else ""
        self._message(reason or "Cancelled in napari.", warn=True)

    def _on_finished(self) -> None:
        self._timer.stop()
        self._poll()
        if self.activity is not None:
            self.activity.close()
            self.activity = None
        self.worker = None
        self.cancel_button.setEnabled(False)
        if not self._job_returned:
            self._on_job_aborted()
        self._set_busy(False)

    def cancel(self, reason: str = "Cancelled.") -> None:
        """Ask the running job to stop at its next step (image, plane or tile)."""
        if self.state is not None and self.is_running():
            self.state.cancel(reason)
            self.status.setText("Cancelling…")


def _activity_bar(desc: str):
    """A cancelable napari progress bar (0-1000) for the activity dock, or None without napari."""
    try:
        from napari.utils import cancelable_progress
    except ImportError:  # pragma: no cover
        return None
    return cancelable_progress(total=1000, desc=desc)


#: Advice written for the Python API, and what to say in the viewer instead.
_FOR_VIEWER = [
    (
        r"replace them \(e\.g\. np\.nan_to_num\) first\.",
        "napari cannot edit pixel values: replace them before opening the image, or score "
        "another layer.",
    ),
    (
        r" \(is an axis of the array misread\? see rgb= and channel_axis=\)\.",
        ". If the layer's axes are misread (colour channels shown as a stack of planes, say), "
        "open the file again with File > Open so that napari reads it as RGB.",
    ),
    (
        r"Select one channel \(e\.g\. image\[\.\.\., 0\]\), or pass rgb=False to score the "
        r"array as a stack of 2D planes, or channel_axis= to name the colour axis\.",
        "Split the channels (right-click the layer in the layer list > Split Stack) and score "
        "one of them.",
    ),
    (r"Select a sub-array first\.", "Split the stack (right-click the layer > Split Stack) first."),
    (r" \(use precision='bf16' or 'fp32'\)", ""),
    (r"pass \[image\]", "score the planes one by one"),
]

#: What to do in the viewer about each kind of error, added when the message does not say it.
_WHAT_TO_DO = {
    "DeviceError": "Choose another device in the widget's Device list.",
    "CheckpointError": f"Choose another model in the Model list, or a checkpoint with '{CHOOSE_FILE}'.",
}


def for_viewer(text: str) -> str:
    """Rewrite a message of the scoring core for a viewer user (no Python arguments or calls)."""
    for pattern, replacement in _FOR_VIEWER:
        text = re.sub(pattern, replacement, text)
    return text


def error_text(exc: BaseException) -> str:
    """A message for the viewer: what went wrong and what to do there; Python detail goes to the log.

    The project's own errors keep their text (rewritten by :func:`for_viewer`, with what to do in
    the widget where the message does not say it); a file that cannot be read says which and why;
    anything else says an unexpected error happened, and the log gets the traceback.
    """
    from ..data.datasets import DatasetError
    from ..devices import DeviceError
    from ..imaging import ImageError
    from ..scoring import ModelOutputError
    from ..weights import CheckpointError
    from .overlays import LayerError

    ours = (ImageError, CheckpointError, DatasetError, DeviceError, LayerError, ModelOutputError)
    if isinstance(exc, ours):
        text = for_viewer(str(exc))
        todo = _WHAT_TO_DO.get(type(exc).__name__, "")
        if todo and CHOOSE_FILE not in text and "Choose another" not in text:
            text = f"{text} {todo}"
        return text
    if isinstance(exc, MemoryError):
        return (
            "Out of memory: lower the widget's Memory budget (or Preferences > napari-pmt-iqa) or "
            "crop the image."
        )
    if isinstance(exc, IsADirectoryError) and exc.filename:
        return f"{exc.filename} is a folder, not a file: give a file name in it."
    if isinstance(exc, OSError) and (exc.filename or exc.strerror):
        what = exc.strerror or type(exc).__name__
        where = f" {exc.filename}" if exc.filename else ""
        log.warning("%s", exc, exc_info=exc)
        return f"Could not read{where}: {what}. Check the path in the widget."
    log.error("Unexpected error in a PMT-IQA widget", exc_info=exc)
    return (
        f"Unexpected error ({type(exc).__name__}); the details are in the log "
        "(napari's console or the terminal). Please report it with those details."
    )


class ModelChooser(QWidget):
    """Model (registered names, user models, "Choose file…"), device and memory budget.

    The device and memory budget start from the plugin's settings, and follow them when they are
    changed in napari's Preferences while the widget is open (a changed cache folder re-lists the
    models); a value the user set in the widget stays until that setting itself changes.
    """

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
        self.device_combo.setToolTip(
            "Where the model runs; the default comes from Preferences > napari-pmt-iqa"
        )
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
        self._settings = settings
        self.refresh()
        self.model_combo.activated.connect(self._on_activated)
        self._stop_watching = watch_settings(self.apply_settings)
        self.destroyed.connect(self._stop_watching)

    def apply_settings(self, settings: Settings) -> None:
        """Take up the settings that changed since the last ones (napari's Preferences)."""
        old, self._settings = self._settings, settings
        if settings.device != old.device:
            self.set_device(settings.device)
        if settings.memory_mb != old.memory_mb:
            self.memory_spin.setValue(int(settings.memory_mb))
        if settings.cache_dir != old.cache_dir:
            apply_cache_dir(settings)
            self.refresh()

    def set_device(self, device: str) -> None:
        """Choose ``device`` in the device list (added to it when it is not listed)."""
        idx = self.device_combo.findText(device)
        if idx < 0 and device:
            self.device_combo.addItem(device)
            idx = self.device_combo.count() - 1
        self.device_combo.setCurrentIndex(max(0, idx))

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


# --------------------------------------------------------------------------- docking
#: Smallest height of a docked widget's scroll area: a few rows stay visible, the rest scrolls.
DOCK_MIN_HEIGHT = 160
SCROLL_AREA_NAME = "pmt_iqa_scroll_area"


class _ScrollContents(QWidget):
    """The inner widget of a dock's scroll area: never laid out below its preferred height.

    A scroll area shrinks its widget down to the widget's minimum size; the layout then squashes
    every control down to its minimum (combo boxes, spin boxes and buttons a few pixels lower than
    they want). Reporting the preferred height as the minimum makes the area scroll instead.
    """

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        low = super().minimumSizeHint()
        return QSize(low.width(), max(low.height(), self.sizeHint().height()))

    def event(self, ev) -> bool:  # noqa: D102
        out = super().event(ev)
        if ev.type() == QEvent.Type.LayoutRequest:  # the contents changed: a new minimum width?
            width = self.minimumSizeHint().width()
            if width != getattr(self, "_last_min_width", None):
                self._last_min_width = width
                area = self.parentWidget().parentWidget() if self.parentWidget() else None
                if isinstance(area, QScrollArea):
                    area.updateGeometry()  # only then: other changes stay inside the area
        return out


class _ScrollArea(QScrollArea):
    """A vertical scroll area whose minimum width is always that of its contents (plus the bar).

    Fixed once when the widget is built, it would be too small as soon as the contents grow: Qt
    polishes the fonts and styles of a widget only when it is first shown, and a widget's texts
    change later; the right part of the contents would then be cut off.
    """

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        low = super().minimumSizeHint()
        inner = self.widget()
        if inner is None:
            return low
        bar = self.verticalScrollBar().sizeHint().width()
        width = inner.minimumSizeHint().width() + bar + 2 * self.frameWidth()
        return QSize(width, max(low.height(), self.minimumHeight()))


#: Characters a combo box asks room for, whatever its items (longer ones are elided).
COMBO_MIN_CHARS = 12


def compact_combos(widget: QWidget, chars: int = COMBO_MIN_CHARS) -> None:
    """Make every combo box in ``widget`` ask for room for ``chars`` characters, not its longest item.

    A combo box's preferred width is, by default, that of its longest item: one layer with a long
    name opened after the widget was docked would make the widget wider than its dock, and its
    right part would be cut off (the scroll area does not scroll sideways). Items are then shown
    elided when the dock is narrow; the popup list still shows them whole.
    """
    policy = QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(policy)
        combo.setMinimumContentsLength(chars)


def make_scrollable(widget: QWidget, min_height: int = DOCK_MIN_HEIGHT) -> QScrollArea:
    """Move ``widget``'s contents into a vertical scroll area inside ``widget`` itself.

    napari stacks docked widgets on the right and grows the main window to the sum of their minimum
    heights: four tall widgets make it taller than the screen. In a scroll area each one needs only
    ``min_height`` pixels; its contents keep their own sizes (never squashed below them: a wrapped
    label gets the height its text needs) and scroll when the dock is shorter. The minimum width is
    the contents' minimum width, so nothing is cut off sideways. Changes of the contents (a result
    shown, a label rewritten) stay inside the scroll area instead of making napari lay out its whole
    window again.

    ``widget`` keeps its class and attributes (its layout and child widgets move into an inner
    widget), so this works for any widget after it was built, without changing its module.

    Parameters
    ----------
    widget
        A widget with a layout.
    min_height
        Smallest height of the scroll area, in pixels.

    Returns
    -------
    QScrollArea
        The scroll area (also ``widget.findChild(QScrollArea, SCROLL_AREA_NAME)``).
    """
    layout = widget.layout()
    if layout is None or widget.findChild(QScrollArea, SCROLL_AREA_NAME) is not None:
        found = widget.findChild(QScrollArea, SCROLL_AREA_NAME)
        if found is not None:
            return found
        raise ValueError("make_scrollable needs a widget with a layout.")
    inner = _ScrollContents()
    inner.setObjectName("pmt_iqa_scroll_contents")
    inner.setLayout(layout)  # Qt moves the layout and its widgets from ``widget`` to ``inner``
    compact_combos(inner)
    area = _ScrollArea(widget)
    area.setObjectName(SCROLL_AREA_NAME)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(inner)
    area.setMinimumHeight(min_height)
    area.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return area


def dock_class(cls: type, doc: str = "") -> type:
    """A subclass of the widget class ``cls`` whose instances live in a scroll area.

    The manifest's widget commands point at these classes, so that every widget napari docks gets
    :func:`make_scrollable`, whatever module builds it. napari passes the viewer as
    ``napari_viewer`` (the subclass's ``__init__`` names it, which is how napari finds it).
    """

    def __init__(self, napari_viewer, *args, **kwargs):  # noqa: N807
        cls.__init__(self, napari_viewer, *args, **kwargs)
        make_scrollable(self)

    name = cls.__name__
    return type(
        name,
        (cls,),
        {
            "__init__": __init__,
            "__doc__": doc or f"{name} in a scroll area, as napari docks it.",
            "__module__": "napari_pmt_iqa._widgets.docks",
            "__qualname__": name,
        },
    )
