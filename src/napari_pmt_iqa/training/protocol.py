"""The paper's evaluation protocol: N random 80/20 splits, median SRCC and PLCC on the test parts.

Each split trains a model on its 80 % (selecting the epoch on a validation part carved out of it,
never on the test part), then scores the 20 % test part with the best checkpoint. Every split's
row goes to a CSV that is rewritten atomically after each split, so an interrupted protocol keeps
what it measured.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .errors import TrainingError
from .evaluation import evaluate
from .events import Control, Event
from .prepare import resolve_dataset
from .trainer import train

COLUMNS = (
    "split",
    "split_seed",
    "n_train",
    "n_val",
    "n_test",
    "best_epoch",
    "epochs_done",
    "val_srcc",
    "test_srcc",
    "test_plcc",
    "test_krcc",
    "seconds",
    "best_path",
)


@dataclass
class ProtocolResult:
    """Rows of every split and the medians over them."""

    rows: list[dict] = field(default_factory=list)
    median_srcc: float = float("nan")
    median_plcc: float = float("nan")
    csv_path: str | None = None
    stopped: bool = False


def _median(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if isinstance(r.get(key), float) and math.isfinite(r[key])]
    return float(np.median(vals)) if vals else float("nan")


def _write(path: Path, rows: list[dict], final: bool) -> None:
    from .distributed import write_rows_csv

    out = list(rows)
    if final and rows:
        out.append(
            {
                "split": "median",
                "test_srcc": _median(rows, "test_srcc"),
                "test_plcc": _median(rows, "test_plcc"),
                "test_krcc": _median(rows, "test_krcc"),
                "val_srcc": _median(rows, "val_srcc"),
            }
        )
    write_rows_csv(path, out, COLUMNS)


def run_protocol(
    config: TrainConfig,
    splits: int = 10,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    listeners: Iterable[Callable[[Event], None]] = (),
    control: Control | None = None,
    on_split: Callable[[dict], None] | None = None,
) -> ProtocolResult:
    """Run the protocol on ``config.data`` with the training settings of ``config``.

    Parameters
    ----------
    config
        The training recipe; its ``data`` is the whole data set (its own ``split`` column, if any,
        is ignored: the protocol makes its own splits). ``limit`` takes a subset first.
    splits, test_fraction, split_seed
        Split ``i`` uses seed ``split_seed + i`` (by reference content where the data set has it).
    out_dir
        ``split_XX/`` folders with each split's checkpoints, and ``protocol.csv``.
    on_split
        Called with each split's row when it is done.

    Returns
    -------
    ProtocolResult
    """
    from ..data.datasets import random_split
    from ..weights import load_checkpoint
    from .distributed import _setup_distributed, world

    if splits < 1:
        raise TrainingError(f"splits must be at least 1; got {splits}.")
    if not 0 < test_fraction < 1:
        raise TrainingError(f"test_fraction must be between 0 and 1; got {test_fraction}.")
    out = Path(out_dir or config.out_dir or "protocol").expanduser()
    d, _dev = _setup_distributed(config.device)  # one process group for all splits
    try:
        ds = resolve_dataset(config)
        ds = replace(ds, samples=[replace(s, split=None) for s in ds.samples])
        rank = world()[0]
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        csv_path = out / "protocol.csv"
        rows: list[dict] = []
        control = control or Control()
        res = ProtocolResult(csv_path=str(csv_path))
        for i in range(splits):
            t0 = time.time()
            seed_i = split_seed + i
            pool, test = random_split(ds, test_fraction, seed=seed_i)
            cfg = replace(
                config, data=pool, out_dir=out / f"split_{i:02d}", limit=None, resume=None
            )
            r = train(cfg, listeners=listeners, control=control)
            if r.stopped:
                res.stopped = True
                break
            row = {
                "split": i,
                "split_seed": seed_i,
                "n_train": r.n_train,
                "n_val": r.n_val,
                "n_test": len(test),
                "best_epoch": r.best_epoch,
                "epochs_done": r.epochs_done,
                "val_srcc": float(r.best_val.get("srcc", float("nan"))),
            }
            best = r.best_path or str(out / f"split_{i:02d}" / "best.safetensors")
            model = load_checkpoint(best, device=str(_dev))
            m = evaluate(
                model,
                test,
                device=str(_dev),
                precision=config.precision,
                batch_size=config.eval_batch_size,
            )
            if m.get("unreadable"):
                import warnings

                warnings.warn(
                    f"split {i}: {len(m['unreadable'])} test image(s) could not be read and are left "
                    f"out, e.g. {m['unreadable'][0][0]}",
                    RuntimeWarning,
                    stacklevel=2,
                )
            row.update(
                n_test=m.get("n", len(test)),
                test_srcc=m["srcc"],
                test_plcc=m["plcc"],
                test_krcc=m["krcc"],
                seconds=time.time() - t0,
                best_path=best,
            )
            rows.append(row)
            if rank == 0:
                _write(csv_path, rows, final=False)
            if on_split:
                on_split(row)
        res.rows = rows
        res.median_srcc = _median(rows, "test_srcc")
        res.median_plcc = _median(rows, "test_plcc")
        if rank == 0:
            _write(csv_path, rows, final=True)
        return res
    finally:
        if d.owns_group:
            from .distributed import close_process_group

            close_process_group()
