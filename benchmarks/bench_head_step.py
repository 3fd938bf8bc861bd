"""One optimiser step of the few-shot recipe with the backbone head adapted: matrix path vs modules.

``training/head_maps.head_tap`` runs EfficientNet-Lite's pointwise head (1 x 1 convolution 320 ->
1280, batch norm, ReLU6) and the window average as two matrix products, the batch norm folded
into the first. This script times a whole training step (16 images, a block of 2 x 4 windows of
each, forwards, backwards, Adam) and one scoring pass over 20 held-out images (their whole
15 x 15 maps, as after every epoch) both ways, alternating in the same process, and prints a table
with the ratio. Both paths read the same packs (maps stored channels-last); "modules" forces the
fallback of ``head_tap`` (convolution, batch norm, activation, ``avg_pool2d``). The maps are random (the cost does not depend on their content); the model is the
default EfficientNet-Lite0 architecture::

    python benchmarks/bench_head_step.py [--threads 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of each path")
    ap.add_argument("--steps", type=int, default=20, help="steps (and scorings) per round")
    args = ap.parse_args(argv)
    from napari_pmt_iqa._torch_guard import guard_triton

    guard_triton()
    import numpy as np
    import torch

    from napari_pmt_iqa.model import PMTIQA
    from napari_pmt_iqa.training import head_maps
    from napari_pmt_iqa.training.head_maps import adapted_parameters, window_cells
    from napari_pmt_iqa.training.heads_fit import (
        FeaturePack,
        batch_loss,
        head_parameters,
        image_scores,
    )

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = PMTIQA(backbone="efficientnet_lite0", pretrained=False).float().eval()
    cells = window_cells(model)
    side = 9 + cells - 1  # a 500 x 500 image: 9 x 9 windows on a 15 x 15 map
    from napari_pmt_iqa.training.features import FeatureLayout

    dim = sum(FeatureLayout.of(model).sizes)
    rng = np.random.default_rng(0)

    def pack(n):
        maps = [[torch.rand(320, side, side) * 3] for _ in range(n)]
        rows = [torch.rand(81, dim) for _ in range(n)]
        return FeaturePack(rows, list(rng.uniform(10, 90, n)), maps)

    train, hold = pack(80), pack(20)
    model.train()
    model.backbone.eval()
    opt = torch.optim.Adam(
        [{"params": head_parameters(model)}, {"params": adapted_parameters(model)}], lr=1e-4
    )
    real_parts = head_maps._pointwise_parts

    def use(fast: bool):
        head_maps._pointwise_parts = real_parts if fast else (lambda head: None)

    def steps(k0: int) -> float:
        t0 = time.perf_counter()
        for k in range(args.steps):
            r = np.random.default_rng(k0 + k)
            imgs = list(r.choice(80, 16, replace=False))
            loss, _ = batch_loss(
                model, train, imgs, r, windows=8, reg_weight=1.0, rank_weight=1.0,
                rank_margin=0.5, cls_weight=0.1, anchor=0.0, start_params=None,
            )  # fmt: skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / args.steps * 1000

    def scorings() -> float:
        model.eval()
        t0 = time.perf_counter()
        for _ in range(max(1, args.steps // 4)):
            image_scores(model, hold)
        model.train()
        model.backbone.eval()
        return (time.perf_counter() - t0) / max(1, args.steps // 4) * 1000

    times: dict[str, dict[str, list[float]]] = {
        "modules": {"step": [], "score": []},
        "matrix": {"step": [], "score": []},
    }
    try:
        for fast in (True, False):  # warm-up
            use(fast)
            steps(0)
            scorings()
        for r in range(args.rounds):
            for fast in (False, True):
                use(fast)
                name = "matrix" if fast else "modules"
                times[name]["step"].append(steps(1000 * (r + 1)))
                times[name]["score"].append(scorings())
    finally:
        head_maps._pointwise_parts = real_parts
    med = {k: {q: statistics.median(v) for q, v in d.items()} for k, d in times.items()}
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rounds} alternating rounds")
    print("| path | training step (ms, median) | scoring 20 held-out images (ms, median) |")
    print("|---|---|---|")
    for name in ("modules", "matrix"):
        print(f"| {name} | {med[name]['step']:.1f} | {med[name]['score']:.1f} |")
    print(
        f"| ratio matrix / modules | {med['matrix']['step'] / med['modules']['step']:.2f} | "
        f"{med['matrix']['score'] / med['modules']['score']:.2f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
