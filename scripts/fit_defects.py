"""Fit the defect head of a checkpoint (``training/defects.py``) and choose its ridge penalty on
VALIDATION images.

The rows are windows of pristine photos (the training recipe's pristine folders, never Kodak24 nor
the Wikipedia photos) and of a seeded sample of the best-rated images of the LIVE-C and BIQ2021
*training* parts, each clean and degraded per defect family. Each ridge penalty is judged by the
localisation of the defect maps on the validation images of ``scripts/select_localisation.py``
(BIQ2021 training images held out by the recipe): the smallest hit rate over blur, noise and JPEG,
then their mean. The chosen head is attached and the checkpoint written to ``--out``.

Usage (``v2.safetensors``: the network of ``pmt-lite0-v2``, from the git history; the shipped
``pmt-lite0-v3`` file holds the same network and gives the same fit)::

    python scripts/fit_defects.py v2.safetensors \\
        --livec ~/iqa-data/ChallengeDB_release --biq ~/iqa-data/biq --pristine-root ~/iqa-data \\
        --out runs/defects/model.safetensors --ridge 0.01 0.03 0.1 0.3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

import evaluate_default as E  # noqa: E402
import train_default as T  # noqa: E402

from napari_pmt_iqa.data.degradations import SANITY_KINDS  # noqa: E402
from napari_pmt_iqa.training.defects import (  # noqa: E402
    DefectRows,
    attach_defect_head,
    defect_rows,
    fit_defects,
    save_with_defect_head,
)
from napari_pmt_iqa.weights import load_checkpoint  # noqa: E402


def validation_photos(livec, biq, n):
    """The ``n`` largest BIQ2021 validation images (the photos of select_localisation.py)."""
    *_, bq_val = E.splits(livec, biq)
    sized = []
    for s in bq_val.samples:
        w, h = Image.open(s.path).size
        if min(w, h) >= 500:
            sized.append((w * h, str(s.path)))
    return [p for _, p in sorted(sized, reverse=True)[:n]]


def fit_photos(livec, biq, pristine_root, out, best_rated, top, seed):
    """Pristine photos plus ``best_rated`` of the ``top`` best-rated training-part images."""
    photos = T.pristine_list(Path(pristine_root).expanduser(), out / "pristine.txt")
    photos = photos.read_text().split()
    _, lc_train, _, _, _, bq_train, _ = T.default_splits(livec, biq)
    best = []
    for part in (lc_train, bq_train):
        ranked = sorted(part.samples, key=lambda s: -s.mos)
        best += [str(s.path) for s in ranked[: int(round(top * len(ranked)))]]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(best), min(best_rated, len(best)), replace=False)
    return photos, [best[i] for i in sorted(pick)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoint")
    ap.add_argument("--livec", required=True)
    ap.add_argument("--biq", required=True)
    ap.add_argument("--pristine-root", required=True)
    ap.add_argument("--out", required=True, help="checkpoint to write (with the chosen head)")
    ap.add_argument("--ridge", type=float, nargs="+", default=[0.01, 0.1, 0.3, 1.0, 3.0])
    ap.add_argument(
        "--specific",
        action="store_true",
        help="the default fit (each family also against the other families' defects); "
        "accepted so that recorded commands run",
    )
    ap.add_argument(
        "--plain",
        action="store_true",
        help="fit each family on clean rows and its own only (default: also on the other "
        "families' defects, at level 0, as the shipped head)",
    )
    ap.add_argument("--best-rated", type=int, default=300, help="best-rated training images used")
    ap.add_argument("--top", type=float, default=0.15, help="best-rated share they come from")
    ap.add_argument("--n-val", type=int, default=60, help="validation photos for the choice")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.plain and args.specific:
        ap.error("--plain and --specific exclude each other")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(args.checkpoint)
    pristine, best = fit_photos(
        args.livec, args.biq, args.pristine_root, out.parent, args.best_rated, args.top, args.seed
    )
    from napari_pmt_iqa.weights import sha256_of

    # the rows depend on the network, the photos and the seed: the cache is named by them
    key = f"{sha256_of(args.checkpoint)[:12]}-{len(pristine)}-{len(best)}-s{args.seed}"
    cache = out.parent / f"defect_rows-{key}.npz"
    t0 = time.time()
    if cache.exists():
        z = np.load(cache)
        rows = DefectRows(
            z["features"], z["levels"], z["family"], tuple(z["kinds"]), int(z["photos"])
        )
    else:
        rows = defect_rows(
            model,
            pristine + best,
            seed=args.seed,
            progress=lambda i, n: (
                print(f"rows: {i}/{n} photos", flush=True) if i % 50 == 0 or i == n else None
            ),
        )
        np.savez(cache, **{**rows.__dict__, "kinds": np.array(rows.kinds)})
    print(f"{len(rows.features)} rows from {rows.photos} photos ({time.time() - t0:.0f} s)")
    photos = validation_photos(args.livec, args.biq, args.n_val)
    results = []
    for r in args.ridge:
        fit = fit_defects(rows, ridge=r, specific=not args.plain)
        attach_defect_head(model, fit)
        loc = E.localisation(model, photos)
        rates = [loc[k]["defect_hit_rate"] for k in SANITY_KINDS]
        results.append({"ridge": r, "defect_hit_rate": dict(zip(SANITY_KINDS, rates))})
        print(json.dumps(results[-1]), flush=True)

    def rank(d):  # the worst kind, then the mean; on a tie the larger (safer) penalty
        rates = list(d["defect_hit_rate"].values())
        return (round(min(rates), 6), round(float(np.mean(rates)), 6), d["ridge"])

    best_r = max(results, key=rank)
    fit = fit_defects(rows, ridge=best_r["ridge"], specific=not args.plain)
    attach_defect_head(model, fit)
    save_with_defect_head(
        out,
        model,
        fit,
        pristine_photos=len(pristine),
        best_rated_photos=len(best),
        selection={"validation_photos": len(photos), "tried": results},
    )
    print(f"chose ridge {best_r['ridge']}: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
