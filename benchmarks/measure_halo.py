"""Measure what ``napari_pmt_iqa.receptive_field`` holds: receptive fields and tile halos.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/measure_halo.py                 # every backbone (minutes)
    OMP_NUM_THREADS=2 python benchmarks/measure_halo.py --backbones efficientnet_lite0 default

Three tables:

1. the theoretical receptive field of each tap (gradient support of one feature, random input),
   per backbone (random weights for the ResNets, ImageNet weights for EfficientNet-Lite; the
   support does not depend on the weights);
2. the effective field: for interior windows of real photos, the largest relative change of each
   tap vector when the window is computed in a tile with only ``halo`` pixels of context around it
   (``default`` is the shipped model; EfficientNet-Lite with ImageNet weights);
3. for the default model, the largest change of a crop score (0-100 scale) at each halo.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

CROP, LATTICE = 224, 32


def photos(n: int, side: int) -> list[np.ndarray]:
    """Real photos resized to ``side`` (Wikipedia photos of the data folder, else skimage's)."""
    from PIL import Image

    folder = os.path.expanduser("~/iqa-data/zelex/wikipedia-photos")
    if os.path.isdir(folder):
        names = sorted(os.listdir(folder))[:n]
        ims = [Image.open(os.path.join(folder, f)).convert("RGB") for f in names]
    else:
        from skimage import data

        ims = [Image.fromarray(a) for a in (data.astronaut(), data.chelsea(), data.coffee())[:n]]
    return [np.asarray(im.resize((side, side), Image.BICUBIC)) for im in ims]


def model_for(name: str):
    import torch

    from napari_pmt_iqa.model import PMTIQA
    from napari_pmt_iqa.scoring import get_model

    if name == "default":
        return get_model(None, "cpu")
    torch.manual_seed(0)
    return PMTIQA(backbone=name, pretrained=name.startswith("efficientnet")).eval()


def window_taps(model, rgb: np.ndarray):
    import torch

    t = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.inference_mode():
        pooled, ny, nx = model.window_pooled(model.stage_maps(model.normalize(t)))
        taps = model.taps_from_pooled(pooled)
    return [p.view(ny, nx, -1) for p in pooled], torch.cat(taps, 1).view(ny, nx, -1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--backbones",
        nargs="*",
        default=[
            "tiny",
            "resnet18",
            "resnet34",
            "resnet50",
            "efficientnet_lite0",
            "efficientnet_lite1",
            "efficientnet_lite2",
            "default",
        ],
    )
    ap.add_argument("--halos", nargs="*", type=int, default=[128, 192, 256, 320, 384, 448, 512])
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--windows", type=int, default=6, help="interior windows per image")
    ap.add_argument("--side", type=int, default=1472)
    args = ap.parse_args(argv)

    import torch

    from napari_pmt_iqa.receptive_field import measure_receptive_field
    from napari_pmt_iqa.scoring import _heads

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    print("1. theoretical receptive field beyond the feature's cell (px, before / after)")
    for name in args.backbones:
        if name == "default":
            continue
        fields = measure_receptive_field(model_for(name).backbone)
        print(
            f"  {name:<20}" + "  ".join(f"s{4 * 2**k}: {a}/{b}" for k, (a, b) in enumerate(fields))
        )

    rng = np.random.default_rng(0)
    imgs = photos(args.images, args.side)
    print("2. largest relative change of the tap vectors (stride 4, 8, 16, 32) at each halo")
    for name in [b for b in args.backbones if b == "default" or b.startswith("efficientnet")]:
        model = model_for(name)
        errs = {h: np.zeros(4) for h in args.halos}
        score_err = {h: 0.0 for h in args.halos}
        for img in imgs:
            ref_pooled, ref_taps = window_taps(model, img)
            ny, nx = ref_taps.shape[:2]
            ref_s = _heads(model, ref_taps.reshape(ny * nx, -1))[0].view(ny, nx)
            m = max(args.halos) // LATTICE
            for _ in range(args.windows):
                i, j = int(rng.integers(m, ny - m)), int(rng.integers(m, nx - m))
                for h in args.halos:
                    y0, x0 = i * LATTICE - h, j * LATTICE - h
                    tile = img[y0 : y0 + CROP + 2 * h, x0 : x0 + CROP + 2 * h]
                    pooled, taps = window_taps(model, tile)
                    k = h // LATTICE
                    for s in range(4):
                        a, b = pooled[s][k, k], ref_pooled[s][i, j]
                        errs[h][s] = max(errs[h][s], float((a - b).norm() / b.norm()))
                    s_tile = float(_heads(model, taps[k : k + 1, k].reshape(1, -1))[0][0])
                    score_err[h] = max(score_err[h], abs(s_tile - float(ref_s[i, j])))
        print(f"  {name}")
        for h in args.halos:
            line = "  ".join(f"{e:.1e}" for e in errs[h])
            extra = f"   crop score change {score_err[h]:.4f}" if name == "default" else ""
            print(f"    halo {h:>4}: {line}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
