"""Qt-free glue between the trainer and the fine-tune widget.

Design (after careamics-napari): the trainer (:func:`napari_pmt_iqa.training.train`) runs on a
plain Python thread; its listener puts the typed events of :mod:`napari_pmt_iqa.training.events`
into a queue; :func:`training_events` is a generator that starts that thread, drains the queue and
yields the events in small batches. The widget wraps the generator in a napari generator worker
(``napari.qt.threading.create_worker``), so neither the trainer nor the queue ever runs on the GUI
thread, and the GUI only handles a few coalesced updates per second.

Why a thread and not a subprocess: the trainer releases everything it allocated when it returns
(the model, the optimiser and the data live in its frame); :func:`release_memory` then collects
garbage, empties PyTorch's CUDA cache where CUDA was used and hands freed heap pages back to the
operating system (``malloc_trim`` on glibc). What a thread cannot give back is the CUDA context
itself (a few hundred MB of GPU memory per process, created the first time CUDA is used, also by
scoring on the GPU). A subprocess would free that too, but it would have to re-import torch (seconds),
could not train on images held in the viewer without copying them, and would double the code
paths for errors. ``docs/finetune.md`` records the CPU numbers measured here.

This module imports neither Qt nor torch at import time. It also holds :data:`model_trained`, the
psygnal signal the score widget listens to, to swap a freshly trained model in without a restart
(:func:`~napari_pmt_iqa._widgets.publishing.publish_model`, which copies a trained model into the
user models folder, is re-exported here).
"""

from __future__ import annotations

import gc
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from psygnal import Signal

__all__ = [
    "Outcome",
    "State",
    "TrainingSignals",
    "estimate_time_left",
    "model_saved",
    "model_trained",
    "publish_model",
    "release_memory",
    "rss_mb",
    "training_events",
    "user_message",
]


class State(str, Enum):
    """States of a fine-tuning session (the widget's buttons follow them)."""

    IDLE = "idle"
    TRAINING = "training"
    PAUSED = "paused"
    STOPPING = "stopping"
    DONE = "done"
    STOPPED = "stopped"
    ERROR = "error"

    @property
    def busy(self) -> bool:
        """True while a trainer thread exists (training, paused or stopping)."""
        return self in (State.TRAINING, State.PAUSED, State.STOPPING)


class TrainingSignals:
    """Holder of the module-level signals (psygnal needs a class to bind ``Signal`` to)."""

    #: Emitted with ``(checkpoint_path, metadata)`` when a fine-tuned model has been saved.
    model_trained = Signal(str, dict)
    #: Emitted with ``(checkpoint_path, metadata)`` when a fine-tuned model was saved to the user
    #: models but not chosen for the scorer (it did not improve and the user said no).
    model_saved = Signal(str, dict)


_SIGNALS = TrainingSignals()

#: ``model_trained.connect(callback(path: str, meta: dict))``: a model trained in the GUI is ready.
#: The score widget listens to it and adds (and selects) the new checkpoint in its model list.
model_trained = _SIGNALS.model_trained
#: ``model_saved.connect(callback(path: str, meta: dict))``: a model saved but not chosen; the
#: score widget adds it to its model list without selecting it.
model_saved = _SIGNALS.model_saved


@dataclass
class Outcome:
    """What the training thread ended with: the trainer's result, or the exception it raised."""

    result: Any = None
    error: BaseException | None = None
    seconds: float = 0.0
    events: list = field(default_factory=list)  # the Failed / Stopped / Finished events seen
    published: Any = None  # what ``on_result`` returned (e.g. the published checkpoint)
    publish_error: BaseException | None = None


_END = object()


def training_events(
    config: Any,
    train_fn: Callable[..., Any],
    control: Any,
    poll_s: float = 0.05,
    join_timeout_s: float = 60.0,
    min_interval_s: float = 0.25,
    on_result: Callable[[Any], Any] | None = None,
) -> Generator[list, None, Outcome]:
    """Run ``train_fn(config, listeners=[...], control=control)`` on a thread; yield its events.

    Parameters
    ----------
    config
        The :class:`~napari_pmt_iqa.training.TrainConfig`.
    train_fn
        The trainer (normally :func:`napari_pmt_iqa.training.train`; tests pass a fake one).
    control
        The :class:`~napari_pmt_iqa.training.events.Control` shared with the widget.
    poll_s
        How long to wait for events before yielding an empty list (the generator worker checks for
        quit requests at each yield).
    join_timeout_s
        How long to wait for the trainer to end at the next batch after a stop request.
    min_interval_s
        Events are collected for at least this long between yields, so that a fast trainer does
        not flood the GUI thread with updates (state changes are passed on at once). Each update
        repaints the dock, and a napari window holds an OpenGL canvas, so Qt composes the whole
        window for it: with software OpenGL (Xvfb, virtual machines, remote desktops) that takes
        the CPU from training. Measured with 100 ratings on 2 cores under Xvfb
        (``benchmarks/bench_finetune_gui.py``): the fine-tune took 55-60 s at 0.05 s, 38 s at
        0.25 s, 35 s at 0.5 s (32 s without a GUI); 0.25 s keeps the bars live (4 updates a
        second).
    on_result
        Called with the trainer's result (after success or a stop) on the worker thread, e.g. to
        publish the checkpoint without blocking the GUI; its return value (or exception) goes into
        the :class:`Outcome`.

    Yields
    ------
    list
        The events that arrived since the last yield (possibly none).

    Returns
    -------
    Outcome
        The trainer's result or its exception (never raised here: the widget reports it).
    """
    q: queue.SimpleQueue = queue.SimpleQueue()
    box: dict[str, Any] = {}
    t0 = time.perf_counter()

    def target() -> None:
        try:
            box["result"] = train_fn(config, listeners=[q.put], control=control)
        except BaseException as exc:  # reported to the GUI, never lost
            box["error"] = exc
        finally:
            q.put(_END)

    thread = threading.Thread(target=target, name="pmt-iqa-train", daemon=True)
    thread.start()
    ended = False
    final: list = []
    try:
        last = time.perf_counter()
        while not ended:
            batch: list = []
            timeout = poll_s
            while True:  # collect for at least min_interval_s after the last yield (GUI load)
                try:
                    item = q.get(timeout=max(timeout, 0.0))
                except queue.Empty:
                    break
                if item is _END:
                    ended = True
                    break
                batch.append(item)
                if type(item).__name__ in ("Finished", "Stopped", "Failed", "Paused", "Resumed"):
                    if type(item).__name__ in ("Finished", "Stopped", "Failed"):
                        final.append(item)
                    timeout = 0.0  # state changes go out at once
                else:
                    timeout = min_interval_s - (time.perf_counter() - last)
            last = time.perf_counter()
            yield batch
        thread.join()
        out = Outcome(box.get("result"), box.get("error"), time.perf_counter() - t0, final)
        if on_result is not None and out.error is None and out.result is not None:
            try:
                out.published = on_result(out.result)
            except Exception as exc:
                out.publish_error = exc
        return out
    finally:
        if thread.is_alive():  # the generator was closed early (viewer closed, worker quit)
            control.request_stop()
            thread.join(join_timeout_s)
        box.clear()
        release_memory()


def release_memory(full_gc: bool = False) -> dict:
    """Give memory back after training: GC, the CUDA cache (where CUDA was used), the C heap.

    Parameters
    ----------
    full_gc
        Run a full garbage collection. It holds the GIL for a few hundred ms in a napari
        process (300k+ objects), which would stall the GUI, so by default only the young
        generations are collected: the trainer's objects are freed by reference counting when it
        returns (measured: no difference in RSS, see docs/finetune.md).

    Returns
    -------
    dict
        ``{"cuda_reserved_mb": ..., "rss_mb": ...}`` after the release (``None`` where unknown).
    """
    gc.collect() if full_gc else gc.collect(1)
    out: dict[str, Any] = {"cuda_reserved_mb": None}
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                out["cuda_reserved_mb"] = torch.cuda.memory_reserved() / 2**20
        except Exception:  # never fail a clean-up
            pass
    from ..memory import release_free_memory

    release_free_memory()
    out["rss_mb"] = rss_mb()
    return out


def rss_mb() -> float | None:
    """Resident memory of this process in MB (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def estimate_time_left(
    elapsed_s: float,
    batches_done: int,
    batches_total: int,
    eval_s_per_epoch: float = 0.0,
    epochs_left: int = 0,
) -> float | None:
    """Seconds left, from the time per batch so far (None until a batch has finished)."""
    if batches_done <= 0 or elapsed_s <= 0:
        return None
    left = max(0, batches_total - batches_done)
    return elapsed_s / batches_done * left + eval_s_per_epoch * max(0, epochs_left)


def format_seconds(s: float | None) -> str:
    """``"1:02:03"`` / ``"2:03"`` / ``"?"``."""
    if s is None or s != s:
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


# --------------------------------------------------------------------------- messages
_HINTS: Sequence[tuple[str, str]] = (
    ("out of memory", "Lower the batch size, freeze the backbone, or train on the CPU."),
    ("cuda error", "The GPU reported an error: try again, lower the batch size, or use the CPU."),
    ("truncated", "An image file is corrupt: remove or replace it (its name is in the message)."),
    ("not a readable image", "An image file cannot be read: remove it from the data set."),
    ("no usable images", "Check the data folder and its layout (csv, livec or biq2021)."),
    ("equal", "Rate the images with different scores: a model learns from differences."),
    ("columns", "The CSV needs the columns image,mos (see docs/finetune.md)."),
)


def user_message(error: BaseException | str, hint: str = "") -> str:
    """A one-paragraph message for a failure: what happened and what to do."""
    text = str(error) if not isinstance(error, str) else error
    if isinstance(error, BaseException) and not text:
        text = type(error).__name__
    if isinstance(error, MemoryError):
        text = text or "Out of memory."
        hint = hint or "Lower the batch size or the number of images, or freeze the backbone."
    if not hint:
        low = text.lower()
        hint = next((h for key, h in _HINTS if key in low), "")
    msg = f"Fine-tuning failed: {text}"
    if hint:
        msg += f"\nWhat to do: {hint}"
    return msg


from .publishing import publish_model  # noqa: E402,F401  (re-exported)
