"""``pmt-iqa train``, ``pmt-iqa eval`` and ``pmt-iqa protocol``.

Multi-GPU or multi-node: the same commands under torchrun, e.g.
``torchrun --nproc-per-node 4 -m napari_pmt_iqa train --data ... --out runs/x``.
Ctrl-C once stops training cleanly (``state.pt`` is written; continue with ``--resume``), twice
aborts.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from pathlib import Path

EXIT_ERROR = 2
EXIT_STOPPED = 130


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.4f}"
    return str(v)


class ProgressPrinter:
    """A listener that shows a tqdm bar per epoch and prints one table row per epoch."""

    HEADER = f"{'epoch':>5} {'w_reg':>5} {'lr':>8} {'loss':>8} {'L1':>7} {'CE':>6} {'val SRCC':>8} {'PLCC':>7} {'KRCC':>7} {'time':>6}  best"

    def __init__(self, bars: bool = True, file=None) -> None:
        self.bars = bars
        self.file = file or sys.stderr
        self.bar = None
        self.epochs = 0
        self.header_done = False

    def _write(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stdout)

    def __call__(self, ev) -> None:
        from tqdm import tqdm

        from . import events as E

        if isinstance(ev, E.Preparing) and self.bars:
            if self.bar is None:
                self.bar = tqdm(
                    total=ev.total, desc="decoding images", unit="img", file=self.file, leave=False
                )
            self.bar.n = ev.done
            self.bar.refresh()
            if ev.done >= ev.total:
                self._close()
        elif isinstance(ev, E.DataIssue):
            self._write(f"warning: {ev.message}")
        elif isinstance(ev, E.Started):
            self._close()
            self.epochs = ev.epochs
            self.batches = ev.batches_per_epoch
            extra = (
                f", resumed at epoch {ev.start_epoch} batch {ev.start_batch}"
                if ev.resumed_from
                else ""
            )
            self._write(
                f"training on {ev.device} x{ev.world_size}: {ev.n_train} images, {ev.n_val} for "
                f"validation, {ev.batches_per_epoch} batches per epoch{extra}"
            )
        elif isinstance(ev, E.BatchEnd):
            if self.bars:
                if self.bar is None:
                    self.bar = tqdm(
                        total=ev.batches,
                        initial=ev.batch,
                        desc=f"epoch {ev.epoch + 1}/{self.epochs}",
                        unit="batch",
                        file=self.file,
                        leave=False,
                    )
                self.bar.update(1)
                self.bar.set_postfix(loss=f"{ev.loss:.3f}", img_s=f"{ev.images_per_s:.1f}")
        elif isinstance(ev, E.EpochEnd):
            self._close()
            if not self.header_done:
                self._write(self.HEADER)
                self.header_done = True
            v = ev.val or {}
            self._write(
                f"{ev.epoch + 1:>5} {ev.w_reg:>5.2f} {ev.lr:>8.1e} {ev.train_loss:>8.3f} {ev.train_l1:>7.2f} "
                f"{ev.train_ce:>6.3f} {_fmt(v.get('srcc', float('nan'))):>8} "
                f"{_fmt(v.get('plcc', float('nan'))):>7} {_fmt(v.get('krcc', float('nan'))):>7} "
                f"{ev.seconds:>5.0f}s  {'*' if ev.is_best else ''}"
            )
        elif isinstance(ev, E.Stopped):
            self._close()
            self._write(
                f"stopped at epoch {ev.epoch + 1}, batch {ev.batch}; state saved to {ev.state_path}"
            )
        elif isinstance(ev, E.Finished):
            self._close()
            self._write(f"done: best val SRCC {_fmt(ev.best_val_srcc)}, {ev.best_path}")
        elif isinstance(ev, E.Failed):
            self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --------------------------------------------------------------------------- arguments
def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="data set folder or CSV (image,mos[,split])")
    p.add_argument(
        "--dataset",
        default="auto",
        choices=["auto", "csv", "livec", "biq2021"],
        help="layout of --data (default: detected)",
    )
    p.add_argument(
        "--score-range",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="range of the scores (default: the data set's, or inferred)",
    )
    p.add_argument("--lower-is-better", action="store_true", help="scores are DMOS-like")
    p.add_argument("--limit", type=int, help="use a random subset of this many images (quick runs)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    p.add_argument("--out", required=True, help="output folder (best/last.safetensors, state.pt)")
    p.add_argument(
        "--init", help="registered model or checkpoint to fine-tune (default: ImageNet backbone)"
    )
    p.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        choices=["resnet50", "resnet34", "resnet18", "efficientnet_lite0", "tiny"],
    )
    p.add_argument(
        "--no-pretrained", action="store_true", help="start the backbone from random weights"
    )
    p.add_argument(
        "--no-multiscale",
        action="store_true",
        help="ablation: feed only the last backbone stage to the heads (no MS taps)",
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8, help="images per step (over all processes)")
    p.add_argument("--crops-per-image", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4, help="backbone learning rate")
    p.add_argument(
        "--head-lr", type=float, help="learning rate of the new layers (default 10 x --lr)"
    )
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument(
        "--lr-step", type=int, default=6, help="divide the rates by 10 every N epochs (0: never)"
    )
    p.add_argument("--freeze-backbone", action="store_true")
    p.add_argument(
        "--no-sync-bn",
        action="store_true",
        help="multi-GPU runs: keep per-process batch-norm statistics instead of SyncBatchNorm",
    )
    p.add_argument(
        "--constant-weights",
        nargs="*",
        type=float,
        metavar="W",
        help="constant loss weights [W_REG W_CLS] (default 1 1) instead of the progressive schedule",
    )
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--max-batches", type=int, help="at most N batches per epoch (quick runs)")
    p.add_argument("--cache-mb", type=float, default=2048, help="memory for decoded images")
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the table stays)")


def add_subcommands(sub) -> None:
    """Add ``train``, ``eval`` and ``protocol`` to an argparse sub-parser collection."""
    p = sub.add_parser(
        "train",
        help="train or fine-tune a model",
        description="Train PMT-IQA (the paper's recipe by default).",
    )
    _add_train_args(p)
    p.add_argument("--resume", help="state.pt (or its folder) of an interrupted run")
    p.set_defaults(func=cmd_train)

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

    p = sub.add_parser(
        "protocol", help="the paper's protocol: N random 80/20 splits, median SRCC/PLCC"
    )
    _add_train_args(p)
    p.add_argument("--splits", type=int, default=10)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--split-seed", type=int, default=0)
    p.set_defaults(func=cmd_protocol)


def _scale(args):
    if not args.score_range and not args.lower_is_better:
        return None
    if not args.score_range:
        raise SystemExit("error: --lower-is-better needs --score-range LOW HIGH")
    lo, hi = args.score_range
    return (lo, hi, not args.lower_is_better, f"score ({lo:g}-{hi:g})")


def config_from_args(args):
    """A :class:`TrainConfig` from parsed ``train``/``protocol`` arguments."""
    from .trainer import TrainConfig

    cw = args.constant_weights
    if cw is not None and len(cw) not in (0, 2):
        raise SystemExit("error: --constant-weights takes no value or two (W_REG W_CLS)")
    return TrainConfig(
        data=args.data,
        layout=args.dataset,
        score_scale=_scale(args),
        out_dir=args.out,
        init=args.init,
        backbone=args.backbone,
        pretrained=not args.no_pretrained,
        multiscale=not args.no_multiscale,
        epochs=args.epochs,
        batch_size=args.batch_size,
        crops_per_image=args.crops_per_image,
        lr=args.lr,
        head_lr=args.head_lr,
        weight_decay=args.weight_decay,
        lr_step=args.lr_step,
        freeze_backbone=args.freeze_backbone,
        sync_batchnorm=not args.no_sync_bn,
        progressive=cw is None,
        loss_weights=tuple(cw) if cw else (1.0, 1.0),
        precision=args.precision,
        device=args.device,
        val_fraction=args.val_fraction,
        seed=args.seed,
        num_workers=args.workers,
        resume=getattr(args, "resume", None),
        max_batches=args.max_batches,
        limit=args.limit,
        cache_mb=args.cache_mb,
        eval_batch_size=args.eval_batch_size,
    )


def _setup(args):
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _is_main() -> bool:
    from .distributed import world

    return world()[0] == 0


def _install_sigint(control):
    """First Ctrl-C: stop cleanly at the next batch; second: abort."""

    def handler(signum, frame):
        if control.stop_requested:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        print("\nstopping at the next batch (Ctrl-C again to abort) ...", file=sys.stderr)
        control.request_stop()

    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        return None


def _error(exc) -> int:
    msg = getattr(exc, "message", None) or str(exc)
    hint = getattr(exc, "hint", "")
    print(f"error: {msg}" + (f"\n{hint}" if hint else ""), file=sys.stderr)
    return EXIT_ERROR


def cmd_train(args) -> int:
    from ..data.datasets import DatasetError
    from .events import Control
    from .trainer import TrainingError, train

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


def cmd_eval(args) -> int:
    from ..data.datasets import DatasetError, load_biq2021, load_dataset
    from ..imaging import ImageError
    from ..weights import CheckpointError
    from .trainer import TrainConfig, TrainingError, evaluate, resolve_dataset

    _setup(args)
    if args.predictions:
        from ..cli_score import output_problem

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
        from tqdm import tqdm

        bar = tqdm(total=len(ds), desc="scoring", unit="img", file=sys.stderr, leave=False)

        def progress(done, total):
            bar.n = done
            bar.refresh()

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
        from .distributed import write_rows_csv

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


def cmd_protocol(args) -> int:
    from ..data.datasets import DatasetError
    from .events import Control
    from .protocol import run_protocol
    from .trainer import TrainingError

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


def main(argv: list[str] | None = None) -> int:
    """``python -m napari_pmt_iqa.training.cli train|eval|protocol ...`` (without ``score``)."""
    parser = argparse.ArgumentParser(prog="pmt-iqa")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
