"""The intensity-rule traps of issue 15 with the default model: a stray pixel, wide integer types,
and a stack with one darker plane.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/check_intensity_rule.py [--photo PATH]

Prints the score of one photo as uint8, floats in [0, 1], floats with one pixel at 1.001, int64 and
uint16 (all equal under the rule), and the plane scores of a uint16 stack of five 12-bit grey
copies of it with plane 2 ten times darker (one rule for the stack: plane 2 scores lower), next to
plane 2 scored alone (its own percentile stretch).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", default="~/iqa-data/ffdnet/testsets/Kodak24/kodim05.png")
    args = ap.parse_args(argv)

    import torch
    from PIL import Image

    from napari_pmt_iqa.scoring import get_model, score

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    m = get_model(None, "cpu")
    img = np.asarray(Image.open(os.path.expanduser(args.photo)).convert("RGB"))

    def s(a):
        return score(a, m, "cpu", maps=False)

    f = img / 255.0
    f1 = f.copy()
    f1[10, 10, 0] = 1.001
    print(
        f"uint8 {s(img).score:.3f}; float [0,1] {s(f).score:.3f}; one pixel at 1.001 "
        f"{s(f1).score:.3f}; int64 {s(img.astype(np.int64)).score:.3f}; uint16 "
        f"{s(img.astype(np.uint16)).score:.3f}"
    )
    g = (img.astype(np.float64).mean(-1) * 16).astype(np.uint16)  # a 12-bit grey plane
    stack = np.stack([g, g, g // 10, g, g])
    planes = " ".join(f"{v:.2f}" for v in s(stack).scores)
    print(
        f"uint16 stack, plane 2 ten times darker: {planes} (plane 2 alone: {s(stack[2]).score:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
