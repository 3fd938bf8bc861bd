"""``pmt-iqa finetune``: the few-shot recipe on a user's ratings (the fine-tune widget's recipe).

``pmt-iqa finetune --data ratings.csv --init MODEL --out DIR`` reads the CSV the rating widget
saves (or any ``image,mos`` CSV or data-set folder), fine-tunes ``MODEL`` (default: the default
model) with the defaults of :class:`~napari_pmt_iqa.training.FinetuneConfig`, and prints the
held-out SRCC of the starting and of the fine-tuned model. Ctrl-C once stops cleanly (``state.pt``
is written; continue with ``--resume``), twice aborts.
"""

from __future__ import annotations

import json
import math
import signal
import sys

from ._common import (
    EXIT_STOPPED,
    _add_data_args,
    _error,
    _fmt,
    _install_sigint,
    _scale,
    _setup,
    output_problem,
)


def add_subcommands(sub) -> None:
    """Add ``finetune`` to an argparse sub-parser collection."""
    from ..training.finetune import FinetuneConfig

    d = FinetuneConfig()
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model on a few hundred ratings (the fine-tune widget's recipe)",
        description=(
            "Fine-tune a quality model on ratings of your own kind of images with the few-shot "
            "recipe (the backbone runs once per image, frozen up to its pointwise head; the "
            "heads and that head trained on every rating, selected on a held-out part). Prints "
            "the held-out SRCC before and after."
        ),
    )
    _add_data_args(p)
    p.add_argument("--out", required=True, help="run folder (best.safetensors, report.json)")
    p.add_argument(
        "--init", help="registered model or checkpoint to fine-tune (default: the default model)"
    )
    p.add_argument(
        "--backbone",
        choices=[
            "efficientnet_lite0",
            "efficientnet_lite1",
            "efficientnet_lite2",
            "resnet18",
            "resnet34",
            "resnet50",
            "tiny",
        ],
        help="start from this ImageNet backbone with new heads instead of a trained model",
    )
    p.add_argument("--device", default=d.device)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--epochs",
        type=int,
        help="epochs of the selection run (default: from the number of ratings)",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=d.holdout_fraction,
        help=f"share of the ratings held out to select and report on (default {d.holdout_fraction})",
    )
    p.add_argument(
        "--windows-per-image",
        type=int,
        default=d.windows_per_image,
        help=f"224-px windows of each training image kept for the head training (about; all "
        f"of them up to twice as many when the backbone head is adapted; default "
        f"{d.windows_per_image})",
    )
    p.add_argument(
        "--head-lr",
        type=float,
        default=d.head_lr,
        help=f"learning rate of the backbone's pointwise head (default {d.head_lr})",
    )
    p.add_argument(
        "--heads-only",
        action="store_true",
        help="train the heads alone: keep the backbone's pointwise head as it is (by default it "
        "is adapted too where the backbone has one)",
    )
    p.add_argument(
        "--no-defect-score",
        action="store_true",
        help="drop the starting model's defect-aware score (the default model lowers crops with "
        "strong blur, noise or compression): the heads then learn the ratings as they are; by "
        "default they train through it and the fine-tuned model keeps it",
    )
    p.add_argument(
        "--blend",
        type=float,
        default=d.blend,
        help="share of the fine-tuned step kept in the saved model, between the calibrated "
        "starting model (0) and the fine-tuned weights alone (1); default 0.5 from a quality "
        "model, 1 from --backbone (new heads)",
    )
    p.add_argument(
        "--no-refit",
        action="store_true",
        help="keep the selection run's model instead of refitting on every rating",
    )
    p.add_argument("--resume", help="state.pt (or its folder) of a stopped run")
    p.add_argument("--name", default="", help="description of the model in the model lists")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print the report as JSON at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_finetune)


def config_from_args(args):
    """The :class:`~napari_pmt_iqa.training.FinetuneConfig` of parsed ``finetune`` arguments."""
    from ..training.finetune import FinetuneConfig

    d_adapt = FinetuneConfig().adapt_head
    return FinetuneConfig(
        data=args.data,
        layout=args.dataset,
        score_scale=_scale(args),
        limit=args.limit,
        init=args.init,
        backbone=args.backbone,
        out_dir=args.out,
        device=args.device,
        seed=args.seed,
        epochs=args.epochs,
        holdout_fraction=args.holdout,
        windows_per_image=args.windows_per_image,
        adapt_head=False if args.heads_only else d_adapt,
        head_lr=args.head_lr,
        defect_score=not args.no_defect_score,
        blend=args.blend,
        refit=not args.no_refit,
        resume=args.resume,
        description=args.name,
    )


class FinetunePrinter:
    """A listener that shows the feature pass and the epochs as progress bars (stderr)."""

    def __init__(self, bars: bool = True, file=None) -> None:
        self.bars = bars
        self.file = file or sys.stderr
        self.bar = None
        self.stage = ""

    def _write(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stdout)

    def _bar(self, stage: str, total: int, unit: str):
        from tqdm import tqdm

        if self.bar is not None and self.stage == stage:
            return self.bar
        self._close()
        self.stage = stage
        self.bar = tqdm(total=total, desc=stage, unit=unit, file=self.file, leave=False)
        return self.bar

    def __call__(self, ev) -> None:
        from ..training import events as E
        from ..training.finetune import Baseline, Refitting

        if isinstance(ev, E.Preparing):
            if self.bars:
                name = "decoding images" if ev.stage == "decoding" else "backbone pass"
                bar = self._bar(name, ev.total, "img")
                bar.n = ev.done
                bar.refresh()
        elif isinstance(ev, E.DataIssue):
            self._write(f"warning: {ev.message}")
        elif isinstance(ev, Baseline):
            self._close()
            self._write(
                f"held-out part: {ev.n_holdout} ratings; starting model SRCC "
                f"{_fmt(float(ev.val.get('srcc', math.nan)))}"
            )
        elif isinstance(ev, E.Started):
            self._close()
            extra = f", resumed at epoch {ev.start_epoch + 1}" if ev.resumed_from else ""
            self._write(
                f"training the heads on {ev.device}: {ev.n_train} images, up to {ev.epochs} "
                f"epochs of {ev.batches_per_epoch} steps{extra}"
            )
            if self.bars:
                bar = self._bar("epochs", ev.epochs, "epoch")
                bar.n = ev.start_epoch
                bar.refresh()
        elif isinstance(ev, E.EpochEnd):
            if self.bars and self.bar is not None:
                self.bar.n = ev.epoch + 1
                self.bar.set_postfix(
                    val_srcc=_fmt(float((ev.val or {}).get("srcc", math.nan))), refresh=True
                )
        elif isinstance(ev, Refitting):
            if self.bars:
                bar = self._bar(f"refit on all {ev.n_images} ratings", ev.total, "step")
                bar.n = ev.done
                bar.refresh()
        elif isinstance(ev, (E.Stopped, E.Finished, E.Failed)):
            self._close()
            if isinstance(ev, E.Stopped):
                self._write(f"stopped after {ev.epoch} epochs; state saved to {ev.state_path}")

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.stage = ""


def summary(result) -> str:
    """The before/after lines printed at the end of a fine-tune."""
    before = float(result.start_val.get("srcc", math.nan))
    after = float(result.best_val.get("srcc", math.nan))
    lines = [
        f"held-out SRCC ({result.n_holdout} ratings): starting model {_fmt(before)} -> "
        f"fine-tuned {_fmt(after)}"
        + (f" ({after - before:+.4f})" if math.isfinite(before) and math.isfinite(after) else "")
    ]
    if result.best_path:
        how = (
            f"refitted on all {result.n_train + result.n_holdout} ratings"
            if result.refit
            else f"trained on {result.n_train} ratings"
        )
        lines.append(
            f"model: {result.best_path} ({how}; {result.best_epoch + 1 if result.best_epoch is not None else '?'}"
            f" epochs selected of {result.epochs_done}; {result.seconds:.0f} s)"
        )
    if not result.improved and not result.stopped:
        lines.append(
            "the fine-tuned model did not beat the starting model on the held-out ratings: keep "
            "the starting model, or rate more images (using the whole range)."
        )
    return "\n".join(lines)


def cmd_finetune(args) -> int:
    from ..data.datasets import DatasetError
    from ..training.errors import TrainingError
    from ..training.events import Control
    from ..training.finetune import finetune
    from ..weights import CheckpointError

    _setup(args)
    problem = output_problem(args.out, "the run folder", folder=True)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    control = Control()
    old = _install_sigint(control)
    try:
        cfg = config_from_args(args)
        result = finetune(
            cfg, listeners=[FinetunePrinter(bars=not args.no_progress)], control=control
        )
    except (TrainingError, DatasetError, CheckpointError) as exc:
        return _error(exc)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    print(summary(result))
    if args.json and result.report_path:
        with open(result.report_path, encoding="utf-8") as f:
            print(json.dumps(json.load(f), indent=2))
    if result.stopped:
        print(f"resume with: --resume {result.state_path}")
        return EXIT_STOPPED
    return 0
