"""A starting model that never saw LIVE-C, for ``bench_finetune.py`` (about 5 min on 2 threads).

The few-shot benchmark needs a quality model that never saw the user's kind of images. Every
model of the registry trained on LIVE-C, and the first such starting model (BIQ2021 + synthetic
degradations, hours of training) was lost with its machine. This one is cheap: new PMT-IQA heads
on the frozen ImageNet EfficientNet-Lite0 backbone, trained by the few-shot recipe itself
(``FinetuneConfig(backbone=...)``, heads only) on a seeded draw of 1,500 photos of the default
recipe's BIQ2021 training part (its own held-out 20 % choose the epoch; BIQ2021 Test and the
validation part are not used). It is weaker than the lost one: about 0.78 SRCC on its held-out
BIQ2021 photos and 0.71 on LIVE-C.

Usage::

    python benchmarks/make_fewshot_start.py --livec ~/iqa-data/ChallengeDB_release \\
        --biq ~/iqa-data/biq --out ~/runs/biq-heads
    python benchmarks/bench_finetune.py --init ~/runs/biq-heads/best.safetensors --n 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--livec", required=True, help="LIVE-C folder (the recipe's splits need it)")
    ap.add_argument("--biq", required=True)
    ap.add_argument("--out", required=True, help="run folder (best.safetensors)")
    ap.add_argument("--n", type=int, default=1500, help="BIQ2021 training photos")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import evaluate_default as E
    import torch

    from napari_pmt_iqa.training import FinetuneConfig, finetune

    torch.set_num_threads(args.threads)
    *_, bq_train, _ = E.splits(args.livec, args.biq)
    rng = np.random.default_rng(5)
    pick = sorted(rng.choice(len(bq_train.samples), args.n, replace=False).tolist())
    data = bq_train.subset([bq_train.samples[i] for i in pick], f"[{args.n}]")
    res = finetune(
        FinetuneConfig(
            data=data,
            backbone="efficientnet_lite0",
            adapt_head=False,
            out_dir=args.out,
            windows_per_image=16,
            holdout_windows=32,
            description="BIQ2021-only heads on ImageNet Lite0 (a few-shot benchmark start; "
            "never LIVE-C)",
        )
    )
    print(
        f"{res.best_path}: held-out SRCC {res.start_val.get('srcc', float('nan')):.3f} -> "
        f"{res.best_val.get('srcc', float('nan')):.3f} ({res.n_holdout} BIQ2021 photos), "
        f"{res.seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
