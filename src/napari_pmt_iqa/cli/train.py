"""``pmt-iqa train``: train or fine-tune a model.

Multi-GPU or multi-node: the same command under torchrun, e.g.
``torchrun --nproc-per-node 4 -m napari_pmt_iqa train --data ... --out runs/x``.
Ctrl-C once stops training cleanly (``state.pt`` is written; continue with ``--resume``), twice
aborts.
"""

from __future__ import annotations

import signal

from ._common import (
    EXIT_STOPPED,
    ProgressPrinter,
    _add_train_args,
    _error,
    _install_sigint,
    _is_main,
    _setup,
    config_from_args,
)


def add_subcommands(sub) -> None:
    """Add ``train`` to an argparse sub-parser collection."""
    p = sub.add_parser(
        "train",
        help="train or fine-tune a model",
        description="Train PMT-IQA (the paper's recipe by default).",
    )
    _add_train_args(p)
    p.add_argument("--resume", help="state.pt (or its folder) of an interrupted run")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from ..data.datasets import DatasetError
    from ..training.errors import TrainingError
    from ..training.events import Control
    from ..training.trainer import train

    _setup(args)
    control = Control()
    old = _install_sigint(control)
    try:
        cfg = config_from_args(args)
        listeners = [ProgressPrinter(bars=not args.no_progress)] if _is_main() else []
        result = train(cfg, listeners=listeners, control=control)
    except (TrainingError, DatasetError) as exc:
        return _error(exc)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    if result.stopped:
        if _is_main():
            print(f"resume with: --resume {result.state_path}")
        return EXIT_STOPPED
    return 0
