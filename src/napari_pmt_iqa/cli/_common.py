"""What several ``pmt-iqa`` verbs share: exit codes, the training progress printer, the data and
training arguments, the ``TrainConfig`` built from them, Ctrl-C handling, error printing and the
check that an output path can be written.
"""

from __future__ import annotations

import argparse
import math
import os
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

        from ..training import events as E

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
#: The backbones ``--backbone`` takes (``napari_pmt_iqa.model.available_backbones()``; listed here so
#: that building the parser does not import torch; a test keeps the two equal).
BACKBONE_CHOICES = (
    "resnet50",
    "resnet34",
    "resnet18",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "tiny",
)


def _add_data_args(p: argparse.ArgumentParser, many: bool = False) -> None:
    if many:
        p.add_argument(
            "--data",
            required=True,
            nargs="+",
            help="data set folder(s) or CSV(s) (image,mos[,split][,ref]); several are trained on "
            "together, each on its own score scale",
        )
    else:
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
    _add_data_args(p, many=True)
    p.add_argument(
        "--data-repeat",
        nargs="+",
        type=float,
        metavar="R",
        help="with several --data: training images of each per epoch x (default 1 each)",
    )
    p.add_argument("--out", required=True, help="output folder (best/last.safetensors, state.pt)")
    p.add_argument(
        "--init", help="registered model or checkpoint to fine-tune (default: ImageNet backbone)"
    )
    p.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        choices=BACKBONE_CHOICES,
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
    p.add_argument(
        "--lr-schedule",
        choices=("step", "cosine"),
        default="step",
        help="step: --lr-step decay (default); cosine: down to 5%% of the rates at the last epoch",
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
    g = p.add_argument_group(
        "distortion-aware objective",
        "ranking pairs of synthetically degraded pristine photos, trained with the human scores",
    )
    g.add_argument(
        "--synthetic",
        nargs="+",
        metavar="PATH",
        help="pristine photos: folders, image files or .txt lists of image paths (default: off)",
    )
    g.add_argument(
        "--synthetic-top",
        type=float,
        default=0.0,
        help="also use this share of the best-rated training images as pristine photos",
    )
    g.add_argument(
        "--synthetic-kinds",
        nargs="+",
        metavar="KIND",
        help="degradation kinds of the bank (default: all but the held-out kinds)",
    )
    g.add_argument("--synthetic-pairs", type=int, default=8, help="ranking pairs per step")
    g.add_argument(
        "--synthetic-margin", type=float, default=3.0, help="margin per level (0-100 scale)"
    )
    g.add_argument(
        "--synthetic-cross",
        type=float,
        default=0.0,
        help="share of cross-region pairs (a clean crop against another crop of the photo, degraded)",
    )
    g.add_argument(
        "--synthetic-kind-margin",
        nargs="+",
        metavar="KIND=POINTS",
        type=kind_margin_arg,
        help="margin per level of these kinds instead of --synthetic-margin (e.g. jpeg=12)",
    )
    g.add_argument(
        "--synthetic-zoom",
        type=float,
        default=1.0,
        help="cut pairs from photos enlarged by up to this factor (1: off)",
    )
    g.add_argument("--synthetic-weight", type=float, default=1.0, help="weight of the ranking loss")
    g.add_argument(
        "--synthetic-schedule",
        choices=("progressive", "constant"),
        default="progressive",
        help="progressive: the weight falls to --synthetic-floor x over the epochs",
    )
    g.add_argument("--synthetic-floor", type=float, default=0.3)


def kind_margin_arg(text: str) -> tuple[str, float]:
    """``KIND=POINTS`` of ``--synthetic-kind-margin`` as ``(kind, points)``."""
    kind, sep, value = text.partition("=")
    try:
        points = float(value)
    except ValueError:
        points = float("nan")
    if not sep or not kind or not points > 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not KIND=POINTS with a positive number of points (e.g. jpeg=12)"
        )
    return kind, points


def _scale(args):
    if not args.score_range and not args.lower_is_better:
        return None
    if not args.score_range:
        raise SystemExit("error: --lower-is-better needs --score-range LOW HIGH")
    lo, hi = args.score_range
    return (lo, hi, not args.lower_is_better, f"score ({lo:g}-{hi:g})")


def config_from_args(args):
    """A :class:`TrainConfig` from parsed ``train``/``protocol`` arguments."""
    from ..training.config import TrainConfig

    cw = args.constant_weights
    if cw is not None and len(cw) not in (0, 2):
        raise SystemExit("error: --constant-weights takes no value or two (W_REG W_CLS)")
    data = args.data
    if isinstance(data, list):
        data = data[0] if len(data) == 1 else data
    return TrainConfig(
        data=data,
        data_repeat=tuple(args.data_repeat) if getattr(args, "data_repeat", None) else None,
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
        lr_schedule=args.lr_schedule,
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
        synthetic=args.synthetic,
        synthetic_top=args.synthetic_top,
        synthetic_kinds=tuple(args.synthetic_kinds) if args.synthetic_kinds else None,
        synthetic_pairs=args.synthetic_pairs,
        synthetic_margin=args.synthetic_margin,
        synthetic_cross=args.synthetic_cross,
        synthetic_kind_margin=dict(args.synthetic_kind_margin)
        if args.synthetic_kind_margin
        else None,
        synthetic_zoom=args.synthetic_zoom,
        synthetic_weight=args.synthetic_weight,
        synthetic_schedule=args.synthetic_schedule,
        synthetic_floor=args.synthetic_floor,
    )


def _setup(args):
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _is_main() -> bool:
    from ..training.distributed import world

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


def count_bar(total: int, desc: str, unit: str):
    """A tqdm bar on stderr and a ``progress(done, total)`` callback that moves it."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)

    def progress(done, _total):
        bar.n = done
        bar.refresh()

    return bar, progress


def _error(exc) -> int:
    msg = getattr(exc, "message", None) or str(exc)
    hint = getattr(exc, "hint", "")
    print(f"error: {msg}" + (f"\n{hint}" if hint else ""), file=sys.stderr)
    return EXIT_ERROR


def output_problem(path: str | os.PathLike, what: str, folder: bool = False) -> str:
    """Why ``path`` cannot be written ("" if it can); checked before any work starts.

    ``folder``: the path is a folder to write files into (created if missing); otherwise a file,
    which must not be an existing folder and whose folder must be writable.
    """
    import tempfile

    path = Path(path)  # exactly the path that is written (the shell expands ~)
    if not folder and path.is_dir():
        return f"{what} {path} is an existing folder; give a file name (for example {path / 'scores.csv'})."
    if folder and path.exists() and not path.is_dir():
        return f"{what} {path} is an existing file, not a folder; choose another location."
    target = path if folder else path.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as exc:
        return f"cannot write {what} in {target} ({exc.strerror or exc}); choose another location."
    return ""
