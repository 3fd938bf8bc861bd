"""``pmt-iqa eval``: SRCC/PLCC/KRCC of a model on a data set (optionally per-image predictions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._common import _add_data_args, _error, _fmt, _scale, _setup, count_bar, output_problem


def add_subcommands(sub) -> None:
    """Add ``eval`` to an argparse sub-parser collection."""
    p = sub.add_parser("eval", help="SRCC/PLCC/KRCC of a model on a data set")
    _add_data_args(p)
    p.add_argument("--model", required=True, help="checkpoint file or registered model name")
    p.add_argument(
        "--part",
        default="test",
        choices=["train", "test", "all"],
        help="BIQ2021 part (default: test, the held-out split)",
    )
    p.add_argument("--split", help="only rows of this split column value (generic CSV layout)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--predictions", help="write per-image predictions to this CSV")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from ..data.datasets import DatasetError, load_biq2021, load_dataset
    from ..imaging import ImageError
    from ..training.config import TrainConfig
    from ..training.errors import TrainingError
    from ..training.evaluation import evaluate
    from ..training.prepare import resolve_dataset
    from ..weights import CheckpointError

    _setup(args)
    if args.predictions:
        problem = output_problem(args.predictions, "the predictions CSV")
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    try:
        path = Path(args.data).expanduser()
        if not path.exists():
            raise DatasetError(f"The data set {path} does not exist.")
        layout = args.dataset
        if layout == "auto":
            from ..data.datasets import detect_layout

            layout = detect_layout(path)
        ds = load_biq2021(path, args.part) if layout == "biq2021" else load_dataset(path, layout)
        if args.split:
            ds = ds.split(args.split.lower())
            if not len(ds):
                raise DatasetError(f"No rows of {path} have split {args.split!r}.")
        ds = resolve_dataset(TrainConfig(data=ds, score_scale=_scale(args), limit=args.limit))
        if ds.skipped:
            print(
                f"warning: {len(ds.skipped)} images left out, e.g. {ds.skipped[0]}", file=sys.stderr
            )
        bar, progress = count_bar(len(ds), "scoring", "img")

        m, preds = evaluate(
            args.model,
            ds,
            device=args.device,
            precision=args.precision,
            batch_size=args.batch_size,
            progress=progress,
            return_predictions=True,
        )
        bar.close()
    except (TrainingError, DatasetError, ImageError, CheckpointError, ValueError) as exc:
        return _error(exc)
    unreadable = m.pop("unreadable", [])
    for p, why in unreadable[:5]:
        print(f"warning: left out {p}: {why}", file=sys.stderr)
    if len(unreadable) > 5:
        print(f"warning: {len(unreadable) - 5} more unreadable images left out", file=sys.stderr)
    m["unreadable"] = len(unreadable)
    if args.predictions:
        from ..training.distributed import write_rows_csv

        rows = [
            {"path": str(s.path), "mos": s.mos, "prediction": float(p)}
            for s, p in zip(ds.samples, preds)
        ]
        write_rows_csv(args.predictions, rows, ("path", "mos", "prediction"))
    if args.json:
        print(json.dumps({**m, "data": ds.name, "model": str(args.model)}))
    else:
        print(
            f"{ds.name}: n={m['n']}  SRCC {_fmt(m['srcc'])}  PLCC {_fmt(m['plcc'])}  KRCC {_fmt(m['krcc'])}"
        )
    return 0
