"""Folder triage: score every image of a folder (no MOS needed), sort, filter, open the worst.

The worker (:func:`triage_job`) lists the folder (the image extensions of ``pmt-iqa score``,
optionally recursive), decodes the next images on a thread pool while the model scores one
(:func:`napari_pmt_iqa.batch.prefetch`), and yields one small row per file: the widget keeps the
rows, never the images, so memory stays flat for thousands of files. Unreadable files get a row with
their error and the run goes on. Clicking a row opens that image in the viewer with its quality maps
(scored again with maps, on a second worker); only the image opened last is kept unless "Keep
opened images" is checked. The table is exported as CSV (:func:`napari_pmt_iqa.export.write_table_csv`).

Scores are computed in fp32, as the score widget computes them, so that an image has the same
score in the table, in the score widget and in the Python API (``pmt-iqa score`` runs bf16 where
the hardware has it, within the tolerance stated in its help).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .._torch_guard import guard_triton
from ._common import BackgroundJobs, JobState, ModelChooser, TurnQueue, error_text

TRIAGE_KEY = "pmt_iqa_triage"
COLUMNS = ("file", "score", "class", "error")
#: Precision of the table's scores and of an opened image's maps (that of the score widget).
SCORE_PRECISION = "fp32"
#: Columns of the exported CSV.
EXPORT_FIELDS = (
    "path",
    "score",
    "units",
    "score_low",
    "score_high",
    "higher_is_better",
    "quality_class",
    "class_low",
    "class_high",
    "probability",
    "planes",
    "error",
)


def _summary(result: Any) -> dict:
    """The row of one scored file (a stack: the mean of its planes)."""
    planes = result.planes if hasattr(result, "planes") else [result]
    first = planes[0]
    probs = np.mean([p.class_probs for p in planes], axis=0)
    c = int(np.argmax(probs))
    return {
        "score": float(result.score),
        "units": first.units,
        "score_low": float(first.score_range[0]),
        "score_high": float(first.score_range[1]),
        "higher_is_better": bool(first.higher_is_better),
        "quality_class": c + 1,
        "class_low": float(first.class_edges[c]),
        "class_high": float(first.class_edges[c + 1]),
        "probability": float(probs[c]),
        "planes": len(planes),
        "error": "",
    }


def _reason(message: str, path: str) -> str:
    """An error message for the Error column: without the file's path (the File column has it)."""
    if message.startswith(path):
        message = message[len(path) :].lstrip(" :")
        if message.startswith("is "):
            message = message[3:]
    return message.replace(path, Path(path).name)  # (a library's own message may repeat it)


def triage_job(
    root: str,
    recursive: bool,
    model,
    device: str,
    memory_mb: float,
    precision: str,
    state: JobState,
):
    """Worker: yields ``("files", n)``, then ``("row", k, row)`` per file (``row["path"]``,
    scores or ``error``). Returns ``("ok", n)``, ``("cancelled", reason)`` or ``("error", msg)``."""
    try:
        from ..batch import auto_precision, image_files, prefetch
        from ..imaging import read_image
        from ..scoring import ScoringCancelled, get_model, score

        folder = Path(root).expanduser()
        if not folder.is_dir():
            return ("error", f"{folder} is not a folder: choose a folder of images.")
        files = image_files(folder, recursive=recursive)
        if not files:
            hint = "" if recursive else " (tick 'Include sub-folders' to look deeper)"
            return ("error", f"{folder} holds no image files{hint}.")
        n = len(files)
        yield ("files", n)
        net = get_model(model, device)
        if precision == "auto":
            precision = auto_precision(next(net.parameters()).device.type)
        state.progress(0, n)
        for k, (path, image, err) in enumerate(prefetch(files, read_image)):
            if state.cancelled():
                return ("cancelled", state.reason or "Scoring was cancelled.")
            row = {"path": str(path)}
            if err is not None:
                row["error"] = error_text(err)
            else:
                try:
                    res = score(
                        image,
                        net,
                        device,
                        maps=False,
                        memory_mb=memory_mb,
                        precision=precision,
                        cancel=state.cancelled,
                    )
                    row.update(_summary(res))
                except ScoringCancelled:
                    return ("cancelled", state.reason or "Scoring was cancelled.")
                except Exception as exc:  # one bad image never stops the run
                    row["error"] = error_text(exc)
            del image
            state.progress(k + 1, n)
            yield ("row", k, row)
        return ("ok", n)
    except Exception as exc:
        return ("error", error_text(exc))


def open_job(path: str, model, device: str, memory_mb: float, precision: str = "auto"):
    """Worker of a click: ``("ok", path, image, result)`` (scored with maps, in the precision of
    the table so that the opened image shows the table's score) or ``("error", msg)``."""
    try:
        from ..batch import auto_precision
        from ..imaging import read_image
        from ..scoring import get_model, score

        image = read_image(path)
        net = get_model(model, device)
        if precision == "auto":
            precision = auto_precision(next(net.parameters()).device.type)
        res = score(image, net, device, maps=True, memory_mb=memory_mb, precision=precision)
        return ("ok", path, image, res)
    except Exception as exc:
        return ("error", f"Could not open {Path(path).name}: {error_text(exc)}")


class _NumberItem(QTableWidgetItem):
    """A table cell that sorts by its number (empty cells last)."""

    def __init__(self, value: float | None, text: str) -> None:
        super().__init__(text)
        self.value = value

    def __lt__(self, other) -> bool:  # noqa: D105
        a = self.value if self.value is not None else np.inf
        b = getattr(other, "value", None)
        b = b if b is not None else np.inf
        return a < b


class TriageWidget(BackgroundJobs, QWidget):
    """Score a folder of unrated images: a sortable, filterable table; a click opens the image.

    Parameters
    ----------
    napari_viewer
        The viewer (injected by napari).
    """

    def __init__(self, napari_viewer: Any) -> None:
        guard_triton()
        super().__init__()
        from ..data.datasets import IMAGE_SUFFIXES

        self.viewer = napari_viewer
        self._init_jobs()
        self.rows: list[dict] = []
        self.n_files = 0
        self._t0 = 0.0
        self._open_worker = None
        self._opened: list = []  # layers opened from the table (image first, then its maps)
        # the maps go in (and the previous image's layers out) one per turn of the event loop:
        # napari takes about 0.1 s to build a layer, and collects garbage for each one removed
        self._layer_jobs = TurnQueue(self, self._do_layer_job)

        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("a folder of images")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.path_edit)
        row.addWidget(browse)
        self.recursive_check = QCheckBox("Include sub-folders")
        exts = " ".join(sorted(IMAGE_SUFFIXES))
        self.recursive_check.setToolTip(f"Image files: {exts}")
        self.chooser = ModelChooser(self)
        self.score_button = QPushButton("Score folder")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.eta_label = QLabel()
        self.min_spin = QDoubleSpinBox()
        self.max_spin = QDoubleSpinBox()
        for sp, v in ((self.min_spin, 0.0), (self.max_spin, 100.0)):
            sp.setRange(-1e9, 1e9)
            sp.setDecimals(2)
            sp.setValue(v)
            sp.setToolTip("Show only the images whose score lies in this range")
        self.errors_check = QCheckBox("Show unreadable files")
        self.errors_check.setChecked(True)
        self.keep_check = QCheckBox("Keep opened images")
        self.keep_check.setToolTip(
            "Off: opening an image from the table closes the one opened before (memory stays flat)"
        )
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(["File", "Score", "Class", "Error"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setSortingEnabled(True)
        self.table.sortItems(1, Qt.SortOrder.AscendingOrder)  # by score, the worst first
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.export_button = QPushButton("Export table (CSV)…")
        self.export_button.setToolTip("Save the rows shown (in their order) as CSV")
        self.export_button.setEnabled(False)
        self.summary_label = QLabel()
        self.summary_label.setWordWrap(True)
        self.status = QLabel()
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Folder", row)
        form.addRow("", self.recursive_check)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.chooser)
        buttons = QHBoxLayout()
        buttons.addWidget(self.score_button)
        buttons.addWidget(self.cancel_button)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.eta_label)
        filt = QHBoxLayout()
        filt.addWidget(QLabel("Scores from"))
        filt.addWidget(self.min_spin)
        filt.addWidget(QLabel("to"))
        filt.addWidget(self.max_spin)
        lay.addLayout(filt)
        opts = QHBoxLayout()
        opts.addWidget(self.errors_check)
        opts.addWidget(self.keep_check)
        lay.addLayout(opts)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.summary_label)
        lay.addWidget(self.export_button)
        lay.addWidget(self.status)

        self.score_button.clicked.connect(lambda: self.score_folder())
        self.cancel_button.clicked.connect(lambda: self.cancel("Scoring was cancelled."))
        self.export_button.clicked.connect(lambda: self.export_table())
        self.table.cellClicked.connect(lambda r, c: self.open_row(r))
        self.min_spin.valueChanged.connect(lambda _: self.apply_filter())
        self.max_spin.valueChanged.connect(lambda _: self.apply_filter())
        self.errors_check.toggled.connect(lambda _: self.apply_filter())

    # ------------------------------------------------------------------ helpers
    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a folder of images")
        if path:
            self.path_edit.setText(path)

    def _set_busy(self, busy: bool) -> None:
        self.score_button.setEnabled(not busy)
        self.export_button.setEnabled(not busy and bool(self.rows))

    # ------------------------------------------------------------------ scoring
    def score_folder(self, path: str | None = None) -> None:
        """Score every image of the folder ``path`` (default: the folder field) in a worker."""
        if self.is_running():
            self._message("Scoring is already running; wait or cancel it.", warn=True)
            return
        path = str(path or self.path_edit.text()).strip()
        if not path:
            self._message("Choose a folder of images first (Folder field).", error=True)
            return
        try:
            model = self.chooser.require_model()
        except Exception as exc:
            self._message(error_text(exc), error=True)
            return
        self.path_edit.setText(path)
        self.rows = []
        self.n_files = 0
        self.table.setRowCount(0)
        self._worst_first = False  # the first score tells which end is the worst
        self.summary_label.setText("")
        self.eta_label.setText("Listing the folder…")
        self._t0 = time.perf_counter()
        self._start_job(
            triage_job,
            path,
            self.recursive_check.isChecked(),
            model,
            self.chooser.device(),
            self.chooser.memory_mb(),
            SCORE_PRECISION,
            on_yield=self._on_item,
            on_return=self._on_done,
            text=f"Scoring the images of {path}…",
        )

    def _on_item(self, item) -> None:
        if item[0] == "files":
            self.n_files = int(item[1])
            return
        row = item[2]
        self.rows.append(row)
        self._add_row(len(self.rows) - 1, row)
        done = len(self.rows)
        elapsed = time.perf_counter() - self._t0
        left = elapsed / done * (self.n_files - done)
        self.eta_label.setText(
            f"{done} of {self.n_files} images, {_duration(elapsed)} so far, about "
            f"{_duration(left)} left"
        )

    def _add_row(self, index: int, row: dict) -> None:
        sorting = self.table.isSortingEnabled()
        self.table.setSortingEnabled(False)  # the Qt way to insert into a sorted table
        r = self.table.rowCount()
        self.table.insertRow(r)
        name = QTableWidgetItem(Path(row["path"]).name)
        name.setData(Qt.ItemDataRole.UserRole, index)
        name.setToolTip(row["path"])
        ok = not row.get("error")
        value = row["score"] if ok else None
        score_item = _NumberItem(value, f"{value:.2f}" if ok else "")
        cls = row.get("quality_class")
        cls_item = _NumberItem(
            cls if ok else None,
            f"{cls} ({row['class_low']:.3g}-{row['class_high']:.3g})" if ok else "",
        )
        err = QTableWidgetItem(_reason(row.get("error", ""), row["path"]))
        err.setToolTip(row.get("error", ""))
        for c, it in enumerate((name, score_item, cls_item, err)):
            self.table.setItem(r, c, it)
        self.table.setSortingEnabled(sorting)
        if ok and not getattr(self, "_worst_first", True):
            self._worst_first = True
            header = self.table.horizontalHeader()
            if sorting and header.sortIndicatorSection() == 1:  # still the default: by score
                better_high = bool(row.get("higher_is_better", True))
                order = Qt.SortOrder.AscendingOrder if better_high else Qt.SortOrder.DescendingOrder
                self.table.sortItems(1, order)
        self._filter_row(self.table.row(name))

    def _on_done(self, out) -> None:
        n_ok = sum(1 for r in self.rows if not r.get("error"))
        n_bad = len(self.rows) - n_ok
        if out[0] == "error":
            self.eta_label.setText("")
            self._message(out[1], error=True)
            return
        units = next((r["units"] for r in self.rows if not r.get("error")), "")
        text = f"{n_ok} images scored ({units})" if n_ok else "No image could be scored"
        if n_bad:
            text += f", {n_bad} could not be read or scored (see the Error column)"
        self.summary_label.setText(text + ". Click a row to open that image with its maps.")
        self.eta_label.setText(
            f"{len(self.rows)} of {self.n_files} images in {_duration(time.perf_counter() - self._t0)}"
        )
        if out[0] == "cancelled":
            self._message(
                f"{out[1]} {len(self.rows)} of {self.n_files} images were done.", warn=True
            )
        else:
            self._message(f"Scored the folder: {text}.", warn=n_bad > 0 and n_ok == 0)
        self.export_button.setEnabled(bool(self.rows))

    # ------------------------------------------------------------------ filtering
    def _row_index(self, r: int) -> int:
        return int(self.table.item(r, 0).data(Qt.ItemDataRole.UserRole))

    def _filter_row(self, r: int) -> None:
        row = self.rows[self._row_index(r)]
        if row.get("error"):
            hide = not self.errors_check.isChecked()
        else:
            hide = not (self.min_spin.value() <= row["score"] <= self.max_spin.value())
        self.table.setRowHidden(r, hide)

    def apply_filter(self) -> None:
        """Show only the rows whose score lies between the two spin boxes (and the errors)."""
        for r in range(self.table.rowCount()):
            self._filter_row(r)

    def shown_rows(self) -> list[dict]:
        """The rows of the table as shown: in their sorted order, without the filtered ones."""
        return [
            self.rows[self._row_index(r)]
            for r in range(self.table.rowCount())
            if not self.table.isRowHidden(r)
        ]

    # ------------------------------------------------------------------ opening
    def open_row(self, r: int) -> None:
        """Open the image of table row ``r`` in the viewer with its maps (on a worker)."""
        row = self.rows[self._row_index(r)]
        if row.get("error"):
            self._message(f"{Path(row['path']).name} cannot be opened: {row['error']}", warn=True)
            return
        if self._open_worker is not None:
            self._message("An image is being opened; wait a moment.", warn=True)
            return
        from napari.qt.threading import create_worker

        model = self.chooser.current_model()
        self._open_worker = create_worker(
            open_job,
            row["path"],
            model,
            self.chooser.device(),
            self.chooser.memory_mb(),
            SCORE_PRECISION,
            _start_thread=False,
            _ignore_errors=True,
        )
        self._open_worker.returned.connect(self._on_opened)
        self._open_worker.finished.connect(self._on_open_finished)
        self.status.setText(f"Opening {Path(row['path']).name}…")
        self._open_worker.start()

    def _on_open_finished(self) -> None:
        self._open_worker = None

    def is_opening(self) -> bool:
        """Whether an image from the table is being opened (its maps included)."""
        return self._open_worker is not None or bool(self._layer_jobs)

    def _do_layer_job(self, job: tuple) -> None:
        """Add one map (``("add", spec, image)``) or remove one layer (``("remove", layer)``)."""
        from .overlays import add_keeping_selection

        if job[0] == "remove":
            if job[1] in self.viewer.layers:
                self.viewer.layers.remove(job[1])
        elif job[2] in self.viewer.layers:
            self._opened.append(add_keeping_selection(self.viewer, job[1]))

    def _on_opened(self, out) -> None:
        from .overlays import METADATA_KEY, overlay_specs, result_metadata, score_meaning

        if out[0] != "ok":
            self._message(out[1], error=True)
            return
        _, path, image, result = out
        keep = self.keep_check.isChecked()
        old = [] if keep else self._opened
        if old:
            self._opened = []
        # still to do from earlier clicks: every removal, and the maps of images that stay
        pending = [
            job
            for job in self._layer_jobs.items
            if job[0] == "remove" or (keep and job[2] in self.viewer.layers)
        ]
        name = Path(path).name
        meta = {
            TRIAGE_KEY: {"path": path},
            METADATA_KEY: result_metadata(result, self.chooser.current_model() or ""),
        }
        # as the file was scored: a colour image stays colour, however small (napari would show
        # a (20, 20, 3) array as 20 planes of 20 x 3 pixels)
        rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
        if old and old[0] in self.viewer.layers:  # the previous image at once, its maps below
            self.viewer.layers.remove(old[0])
        layer = self.viewer.add_image(image, name=name, metadata=meta, rgb=rgb)
        self._opened.append(layer)
        self.viewer.layers.selection.active = layer

        specs = overlay_specs(result, layer.name, layer.scale, layer.translate)
        # the shown map first, then what was pending and the old layers out, then the hidden
        # maps; an old layer of a new map's name (the same file opened again) goes out just
        # before that map comes in, so that napari does not rename the new one
        specs.sort(key=lambda spec: not spec.kwargs.get("visible", False))
        removals = [("remove", lay) for lay in old[1:]] + [j for j in pending if j[0] == "remove"]
        by_name = {job[1].name: job for job in removals if job[1] in self.viewer.layers}

        def add(spec) -> list:
            clash = by_name.pop(spec.name, None)
            return ([clash] if clash else []) + [("add", spec, layer)]

        first = add(specs[0]) if specs else []
        rest = [job for spec in specs[1:] for job in add(spec)]
        used = {id(job) for job in first + rest}
        removals = [job for job in removals if id(job) not in used]
        kept_adds = [job for job in pending if job[0] == "add"]
        self._layer_jobs.items = first + kept_adds + removals + rest
        self._layer_jobs.start()
        self.status.setText(f"{name}: {score_meaning(result)}")

    # ------------------------------------------------------------------ export
    def export_table(self, path: str | None = None) -> str | None:
        """Save the table as shown (sorted, filtered) as CSV; ``path`` None asks for a file."""
        from ..export import write_table_csv

        rows = self.shown_rows()
        if not rows:
            self._message("The table is empty: score a folder first.", warn=True)
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Export the table", "folder_scores.csv", "CSV (*.csv)"
            )
            if not path:
                return None
        try:
            write_table_csv(path, EXPORT_FIELDS, rows)
        except Exception as exc:
            self._message(f"Could not export the table: {error_text(exc)}", error=True)
            return None
        self._message(f"Saved {len(rows)} rows to {path}.")
        return str(path)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.cancel("The widget was closed.")
        self._layer_jobs.clear()
        super().closeEvent(event)


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


__all__ = ["TriageWidget", "triage_job"]
