"""Localisation on VALIDATION images, to choose between candidate checkpoints.

The same measurement as the ``local`` part of ``scripts/evaluate_default.py`` (one quarter of each
photo degraded by blur, noise or JPEG at level 3: is it the map's lowest quarter?), but on BIQ2021
training images held out for validation by the recipe (512 x 512), so that the localisation set of
the final report (Kodak + Wikipedia photos) is never used to choose a model.

Usage::

    python scripts/select_localisation.py runs/m6/best.safetensors --livec ~/iqa-data/ChallengeDB_release \\
        --biq ~/iqa-data/biq --n 60
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

import evaluate_default as E  # noqa: E402

from napari_pmt_iqa.weights import load_checkpoint  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoint")
    ap.add_argument("--livec", required=True)
    ap.add_argument("--biq", required=True)
    ap.add_argument("--n", type=int, default=60, help="validation images (the largest first)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--zoom", type=float, default=1.0, help="enlarge each photo by this factor first (bicubic)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    *_, bq_val = E.splits(args.livec, args.biq)
    sized = []
    for s in bq_val.samples:
        w, h = Image.open(s.path).size
        if min(w, h) >= 500:
            sized.append((w * h, str(s.path)))
    photos = [p for _, p in sorted(sized, reverse=True)[: args.n]]
    print(json.dumps(E.localisation(load_checkpoint(args.checkpoint), photos, zoom=args.zoom)))


if __name__ == "__main__":
    main()
