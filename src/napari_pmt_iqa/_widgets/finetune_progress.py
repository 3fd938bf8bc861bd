"""The run view of the fine-tune widget: progress bars, status line, live curves, the result.

:class:`RunView` turns the trainer's events (coalesced by
:func:`~napari_pmt_iqa._widgets.training_worker.training_events`) into the epoch and batch bars,
the speed and time left, and the curves: loss per step and per epoch (left axis), held-out SRCC
and PLCC per epoch (right axis), with the starting model's held-out SRCC at epoch 0.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QProgressBar, QVBoxLayout, QWidget

from .charts import CurvesPlot
from .training_worker import estimate_time_left, format_seconds


def srcc_text(val: dict | None) -> str:
    v = (val or {}).get("srcc")
    return "n/a" if v is None or not math.isfinite(float(v)) else f"{float(v):.3f}"


def before_after(result: Any) -> str:
    """``"Held-out SRCC (20 ratings): starting model 0.612 -> fine-tuned 0.701 (+0.089)"``."""
    start = getattr(result, "start_val", None) or {}
    best = getattr(result, "best_val", None) or {}
    n = getattr(result, "n_holdout", None)
    text = (
        f"Held-out SRCC{f' ({n} ratings)' if n else ''}: starting model {srcc_text(start)} "
        f"→ fine-tuned {srcc_text(best)}"
    )
    a, b = start.get("srcc"), best.get("srcc")
    if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
        text += f" ({b - a:+.3f})"
    return text


class RunView(QWidget):
    """Bars, status, curves and result text of a fine-tuning run."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.epoch_bar = QProgressBar()
        self.epoch_bar.setFormat("epoch %v / %m")
        self.batch_bar = QProgressBar()
        self.batch_bar.setFormat("step %v / %m")
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.plot = CurvesPlot(self)
        self.plot.title = "loss (left)  ·  held-out SRCC / PLCC (right)"
        self.plot.x_label = "epoch (0: the starting model)"
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        for w in (self.epoch_bar, self.batch_bar, self.status_label, self.plot, self.result_label):
            lay.addWidget(w)
        self.events: list = []
        self.last_checkpoint = ""
        self.reset(1)

    # ------------------------------------------------------------------ state
    def reset(self, epochs: int = 1) -> None:
        """Forget the previous run (bars, curves, text)."""
        self.events = []
        self._epochs = 1
        self._start_epoch = 0
        self._batches = 1
        self._done_batches = 0
        self._total_batches = 1
        self._t0 = time.perf_counter()
        self._paused_s = 0.0
        self._pause_t: float | None = None
        self._speed = 0.0
        self._refitting = False
        self.baseline: dict = {}
        self.plot.clear(epochs)
        self.result_label.setText("")

    def paused(self) -> None:
        self._pause_t = time.perf_counter()

    def resumed(self) -> None:
        if self._pause_t is not None:
            self._paused_s += time.perf_counter() - self._pause_t
            self._pause_t = None

    def on_events(self, events: list, show_progress: bool) -> None:
        """Handle a batch of events; ``show_progress``: also rewrite the status line."""
        if not events:
            return
        self.events.extend(events)
        before = self.plot.total_points()
        for ev in events:
            handler = getattr(self, f"_ev_{type(ev).__name__}", None)
            if handler is not None:
                handler(ev)
        if show_progress:
            self._progress_text()
        if self.plot.total_points() != before:  # repaint the chart only when it changed
            self.plot.update()

    # ------------------------------------------------------------------ events
    def _ev_Preparing(self, ev) -> None:  # noqa: N802
        self.batch_bar.setRange(0, max(1, int(ev.total)))
        self.batch_bar.setValue(int(ev.done))
        what = "decoding the images" if ev.stage == "decoding" else "running the backbone once"
        self.status_label.setText(f"Preparing ({what}): {ev.done}/{ev.total} images")

    def _ev_CheckpointSaved(self, ev) -> None:  # noqa: N802
        self.last_checkpoint = ev.path

    def _ev_Baseline(self, ev) -> None:  # noqa: N802
        self.baseline = dict(ev.val or {})
        self.plot.add("val SRCC", 0, float(self.baseline.get("srcc", np.nan)))
        self.plot.add("val PLCC", 0, float(self.baseline.get("plcc", np.nan)))

    def _ev_Started(self, ev) -> None:  # noqa: N802
        self._epochs = int(ev.epochs)
        self._start_epoch = int(ev.start_epoch)
        self._batches = max(1, int(ev.batches_per_epoch))
        self._total_batches = max(1, (self._epochs - self._start_epoch) * self._batches)
        self._t0 = time.perf_counter()
        self.plot.epochs = max(1, self._epochs)
        self.plot.update()  # a new x range
        self.epoch_bar.setRange(0, self._epochs)
        self.epoch_bar.setValue(self._start_epoch)
        self.batch_bar.setRange(0, self._batches)
        self.batch_bar.setValue(0)

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

    def _ev_Refitting(self, ev) -> None:  # noqa: N802
        self._refitting = True
        self.epoch_bar.setValue(self.epoch_bar.maximum())
        self.batch_bar.setRange(0, max(1, int(ev.total)))
        self.batch_bar.setValue(int(ev.done))
        self.status_label.setText(
            f"Refitting on all {ev.n_images} ratings, {ev.epochs} epochs: step {ev.done}/{ev.total}"
        )

    def _progress_text(self) -> None:
        if not self._done_batches or self._refitting:
            return
        elapsed = time.perf_counter() - self._t0 - self._paused_s
        left = estimate_time_left(elapsed, self._done_batches, self._total_batches)
        ep = self.epoch_bar.value()
        self.status_label.setText(
            f"Epoch {min(ep + 1, self._epochs)}/{self._epochs}, step {self.batch_bar.value()}/"
            f"{self.batch_bar.maximum()} · {self._speed:.0f} img/s · at most "
            f"{format_seconds(left)} left (stops earlier when the held-out ratings stop improving)"
        )

    def kinds(self, name: str) -> list:
        """The events of one type seen in this run (tests, diagnostics)."""
        return [e for e in self.events if type(e).__name__ == name]
