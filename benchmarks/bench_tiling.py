"""Tiled against one-pass scores of the default model: do the memory budget and the tiles change
the score?

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_tiling.py [--photo 006.png]

A real photo (Wikipedia photos of the data folder, else skimage's astronaut) resized to 1500 x 1500
is scored at ``memory_mb`` 100, 450 and 600 (three different tilings: every budget below about
340 MB gives the smallest tile, 8 windows plus the halo, so 300, 100 and 16 MB tile alike), and
resized to 2048 x 2048 at the default 1024, each against one pass over the whole image (a budget
large enough for it). ``--budgets`` and ``--sides`` pick other ones. Printed per row: the tile side,
the number of tiles, the image-score shift, the largest and mean change of a crop score (0-100
scale) and the time of both.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def photo(side: int, name: str) -> np.ndarray:
    from PIL import Image

    path = os.path.expanduser(f"~/iqa-data/zelex/wikipedia-photos/{name}")
    if os.path.exists(path):
        im = Image.open(path).convert("RGB")
    else:
        from skimage import data

        im = Image.fromarray(data.astronaut())
    return np.asarray(im.resize((side, side), Image.BICUBIC))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", default="006.png")
    ap.add_argument("--model", default=None)
    ap.add_argument("--budgets", type=float, nargs="*", default=[100, 450, 600])
    ap.add_argument("--sides", type=int, nargs="*", default=[1500, 2048])
    args = ap.parse_args(argv)

    import torch

    from napari_pmt_iqa import scoring
    from napari_pmt_iqa.receptive_field import tile_halo

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model = scoring.get_model(args.model, "cpu")
    bb = model.config.backbone
    print(f"{bb}, halo {tile_halo(bb)} px, fp32, {torch.get_num_threads()} threads")
    print(
        "| image | memory_mb | tile side | tiles | score shift | largest crop change | "
        "mean crop change | time tiled / one pass |"
    )
    print("|---|---|---|---|---|---|---|---|")
    plan = [(args.sides[0], args.budgets)] + [(s, (1024,)) for s in args.sides[1:]]
    for side, budgets in plan:
        img = photo(side, args.photo)
        t0 = time.perf_counter()
        one = scoring.score(img, model, "cpu", maps=False, memory_mb=1e6)
        t_one = time.perf_counter() - t0
        for mb in budgets:
            calls = []
            t0 = time.perf_counter()
            r = scoring.score(
                img,
                model,
                "cpu",
                maps=False,
                memory_mb=mb,
                progress=lambda d, t, c=calls: c.append(t),
            )
            dt = time.perf_counter() - t0
            d = np.abs(r.crop_scores - one.crop_scores)
            print(
                f"| {side} x {side} | {mb:g} | {scoring._tile_size(bb, mb, 224)} | {calls[-1]} | "
                f"{r.score - one.score:+.4f} | {d.max():.4f} | {d.mean():.5f} | "
                f"{dt:.1f} s / {t_one:.1f} s |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
