"""``pmt-iqa protocol``: the paper's protocol (N random 80/20 splits, median SRCC/PLCC).

Under torchrun like ``pmt-iqa train``; Ctrl-C once stops cleanly, twice aborts.
"""

from __future__ import annotations

import signal

from ._common import (
    EXIT_STOPPED,
    ProgressPrinter,
    _add_train_args,
    _error,
    _fmt,
    _install_sigint,
    _is_main,
    _setup,
    config_from_args,
)


def add_subcommands(sub) -> None:
    """Add ``protocol`` to an argparse sub-parser collection."""
    p = sub.add_parser(
        "protocol", help="the paper's protocol: N random 80/20 splits, median SRCC/PLCC"
    )
    _add_train_args(p)
    p.add_argument("--splits", type=int, default=10)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--split-seed", type=int, default=0)
    p.set_defaults(func=cmd_protocol)


def cmd_protocol(args) -> int:
    from ..data.datasets import DatasetError
    from ..training.errors import TrainingError
    from ..training.events import Control
    from ..training.protocol import run_protocol

    _setup(args)
    control = Control()
    old = _install_sigint(control)
    main = _is_main()

    def on_split(row):
        if main:
            print(
                f"split {row['split']}: test SRCC {_fmt(row['test_srcc'])} PLCC {_fmt(row['test_plcc'])} "
                f"KRCC {_fmt(row['test_krcc'])} (val SRCC {_fmt(row['val_srcc'])}, best epoch "
                f"{row['best_epoch']}, {row['seconds']:.0f}s)",
                flush=True,
            )

    try:
        cfg = config_from_args(args)
        listeners = [ProgressPrinter(bars=not args.no_progress)] if main else []
        res = run_protocol(
            cfg,
            splits=args.splits,
            test_fraction=args.test_fraction,
            split_seed=args.split_seed,
            out_dir=args.out,
            listeners=listeners,
            control=control,
            on_split=on_split,
        )
    except (TrainingError, DatasetError) as exc:
        return _error(exc)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    if main:
        print(
            f"{len(res.rows)} splits: median SRCC {_fmt(res.median_srcc)}  median PLCC "
            f"{_fmt(res.median_plcc)}  ({res.csv_path})"
        )
    return EXIT_STOPPED if res.stopped else 0
