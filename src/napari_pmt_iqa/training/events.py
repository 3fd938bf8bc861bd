"""Typed training events: the one interface between the trainer and whoever watches it.

The trainer calls ``emit(event)`` on every listener it was given; a CLI progress bar, the napari
fine-tune widget (through a queue read by a thread worker) and the tests all consume the same
events. Events are plain frozen dataclasses, so they can cross threads and processes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Event:
    """Base class of all training events."""

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, **asdict(self)}


@dataclass(frozen=True)
class Started(Event):
    epochs: int
    batches_per_epoch: int
    n_train: int
    n_val: int
    start_epoch: int = 0
    device: str = "cpu"
    start_batch: int = 0
    world_size: int = 1
    resumed_from: str = ""


@dataclass(frozen=True)
class BatchEnd(Event):
    epoch: int
    batch: int
    batches: int
    loss: float
    l1: float
    ce: float
    images_per_s: float = 0.0
    data_s: float = 0.0  # time spent waiting for this batch's data
    step_s: float = 0.0  # time of the forward/backward/optimiser step
    rank: float = float("nan")  # ranking loss of the synthetic pairs (when the run has them)
    rank_acc: float = float("nan")  # share of those pairs ordered right


@dataclass(frozen=True)
class EpochEnd(Event):
    epoch: int
    epochs: int
    w_reg: float
    w_cls: float
    train_loss: float
    train_l1: float
    train_ce: float
    #: srcc, plcc, plcc_logistic, krcc (the means over the data sets), ``sets`` (each data set's),
    #: ``synthetic_acc`` (graded held-out photos ordered right) and ``select`` (what picks the best)
    val: dict = field(default_factory=dict)
    lr: float = 0.0
    seconds: float = 0.0
    is_best: bool = False
    #: more figures of the epoch: the synthetic task's weight, ranking loss and accuracy
    #: (``w_syn``, ``train_rank``, ``train_rank_acc``) when the run has it
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Preparing(Event):
    """Images are being decoded and checked before training (``done`` of ``total``)."""

    done: int
    total: int
    stage: str = "decoding"


@dataclass(frozen=True)
class DataIssue(Event):
    """A problem with the data that training works around (e.g. undecodable images left out)."""

    message: str
    items: tuple = ()


@dataclass(frozen=True)
class CheckpointSaved(Event):
    path: str
    epoch: int
    kind: str  # "best", "last" or "state"
    val_srcc: float = float("nan")


@dataclass(frozen=True)
class Paused(Event):
    epoch: int
    batch: int


@dataclass(frozen=True)
class Resumed(Event):
    epoch: int
    batch: int


@dataclass(frozen=True)
class Finished(Event):
    best_path: str
    best_val_srcc: float
    epochs_done: int
    seconds: float


@dataclass(frozen=True)
class Stopped(Event):
    """A stop was requested; the last good checkpoint is on disk."""

    epoch: int
    batch: int
    best_path: str = ""
    state_path: str = ""


@dataclass(frozen=True)
class Failed(Event):
    message: str
    hint: str = ""
    best_path: str = ""


class Listener(Protocol):
    def __call__(self, event: Event) -> None: ...


class Control:
    """Stop / pause requests shared between a trainer and its controller (thread-safe)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._run = threading.Event()
        self._run.set()

    def request_stop(self) -> None:
        self._stop.set()
        self._run.set()  # a paused trainer must wake up to stop

    def pause(self) -> None:
        self._run.clear()

    def resume(self) -> None:
        self._run.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def paused(self) -> bool:
        return not self._run.is_set()

    def wait_if_paused(self, timeout: float | None = None) -> bool:
        """Block while paused; return True if the trainer should go on (not stopped)."""
        self._run.wait(timeout)
        return not self._stop.is_set()


class EventLog:
    """A listener that keeps every event (handy in tests)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


EmitFn = Callable[[Event], None]


class Emitter:
    """Sends each event to every listener; a listener that raises is warned about once, never
    allowed to stop the run (the trainer's and the fine-tuning recipe's ``listeners``)."""

    def __init__(self, listeners, enabled: bool = True, what: str = "training") -> None:
        self.listeners = list(listeners or [])
        self.enabled = enabled
        self.what = what
        self._warned: set[int] = set()

    def __call__(self, event: Event) -> None:
        if not self.enabled:
            return
        for fn in self.listeners:
            try:
                fn(event)
            except Exception as exc:  # a broken listener must not kill the run
                if id(fn) not in self._warned:
                    self._warned.add(id(fn))
                    import warnings

                    warnings.warn(
                        f"A {self.what} listener failed: {exc!r}", RuntimeWarning, stacklevel=2
                    )
