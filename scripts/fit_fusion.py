"""Choose the defect-aware score's weights and thresholds on VALIDATION images.

A model with a defect head can take a penalty off every crop's score (``ModelConfig``
``defect_weights`` and ``defect_thresholds``, see ``PMTIQA.fuse``)::

    p = sum_k w_k * max(0, level_k - t_k)
    fused = score - max(score, 0) * (1 - exp(-p))

so that the quality map lowers where the defect head sees blur, noise or compression, and only
past a level that authentic photos rarely reach (the threshold keeps the human scores as they
were). This script measures, for a grid of weights per family and of thresholds, on the recipe's
validation parts only:

* human scores: SRCC on the LIVE-C validation part and on the BIQ2021 validation part;
* localisation: one quarter of each of ``--n`` BIQ2021 validation photos degraded (blur, noise or
  JPEG at level 3, as ``scripts/select_localisation.py``): is it the quality map's lowest quarter?
* graded order: levels 1-5 of every kind of the degradation bank on ``--graded`` validation photos
  (the held-out kinds reported apart).

It caches every crop's head score and defect levels once (``--cache``; for the localisation
photos also the share of each quarter of the image under each map cell), so a grid costs seconds.
A weight is the strength of the penalty per defect level: 0.1 takes about 10 % off a crop's
score per level past the threshold.

Usage (the recipe of ``pmt-lite0-v4``, ``docs/results.md`` section 1)::

    python scripts/fit_defects.py src/napari_pmt_iqa/weights/pmt-lite0-livec-biq.safetensors \
        --livec ~/iqa-data/ChallengeDB_release --biq ~/iqa-data/biq --pristine-root ~/iqa-data \
        --out runs/v1d/model.safetensors --specific --ridge 0.01 0.03 0.1 0.3
    python scripts/fit_fusion.py runs/v1d/model.safetensors --livec ~/iqa-data/ChallengeDB_release \
        --biq ~/iqa-data/biq --cache runs/cells-v1.npz --out runs/cells-v1.json \
        --write runs/v4/model.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).parent))

import evaluate_default as E  # noqa: E402

from napari_pmt_iqa.data.crops import load_rgb  # noqa: E402
from napari_pmt_iqa.data.degradations import HELD_OUT_KINDS, KINDS, SANITY_KINDS, distort  # noqa: E402
from napari_pmt_iqa.scoring import score  # noqa: E402
from napari_pmt_iqa.weights import load_checkpoint  # noqa: E402


def _cells(model, img):
    """Head scores ``(n,)`` and defect levels ``(n, K)`` of every crop of ``img`` (no fusion),
    and the result (for its map geometry)."""
    r = score(img, model=model, device="cpu", maps=True, precision=E.PRECISION)
    # on the internal 0-100 scale, where PMTIQA.fuse works
    s = model.score_scale.to_internal(r.crop_scores.reshape(-1))
    d = r.maps.crop_grid(r.maps.defects).reshape(len(model.config.defect_kinds), -1).T
    return s.astype(np.float64), d.astype(np.float64), r


def _quarter_weights(r, shape):
    """``(cells, 4)``: the share of each quarter's pixels under each crop-grid cell (each column
    sums to 1), so that a quarter's map mean is ``values @ weights``."""
    m = r.maps
    my, mx = m.quality.shape
    t, _, left, _ = m.padding
    ny, nx = r.crop_scores.shape
    # the same pixel-to-cell rule as the evaluation (E.quadrant_means), folded back from the
    # padded map (edge cells repeated) to the crop grid
    g = m.geometry
    h, w = shape
    ys = np.clip(
        np.floor((np.arange(h) + 0.5 - g.translate[0]) / g.scale[0]).astype(int), 0, my - 1
    )
    xs = np.clip(
        np.floor((np.arange(w) + 0.5 - g.translate[1]) / g.scale[1]).astype(int), 0, mx - 1
    )
    # padded cell -> crop-grid cell (edge cells repeat the crop grid's edge)
    cy = np.clip(ys - t, 0, ny - 1)
    cx = np.clip(xs - left, 0, nx - 1)
    hh, ww = h // 2, w // 2
    out = np.zeros((ny * nx, 4))
    halves_y, halves_x = (slice(0, hh), slice(hh, h)), (slice(0, ww), slice(ww, w))
    for quad in range(4):  # TL, TR, BL, BR
        rows, cols = halves_y[quad // 2], halves_x[quad % 2]
        ry = np.bincount(cy[rows], minlength=ny) / len(cy[rows])
        rx = np.bincount(cx[cols], minlength=nx) / len(cx[cols])
        out[:, quad] = np.outer(ry, rx).reshape(-1)
    return out


def _pack(items):
    """Concatenate ragged per-image arrays: ``(values, offsets)``."""
    offsets = np.cumsum([0] + [len(a) for a in items])
    return np.concatenate(items), offsets


def collect(model, livec, biq, n, n_graded, key):
    _, _, lc_val, _, _, _, bq_val = E.splits(livec, biq)
    data = {"key": np.array(key)}
    for name, part in (("livec", lc_val), ("biq", bq_val)):
        s, d, mos = [], [], []
        for smp in part.samples:
            a, b, _ = _cells(model, load_rgb(smp.path))
            s.append(a)
            d.append(b)
            mos.append(smp.mos)
        data[f"{name}_s"], data[f"{name}_off"] = _pack(s)
        data[f"{name}_d"], _ = _pack(d)
        data[f"{name}_mos"] = np.array(mos)
        print(name, len(s), flush=True)
    sized = sorted(
        ((np.prod(Image.open(s.path).size), str(s.path)) for s in bq_val.samples), reverse=True
    )
    photos = [p for _, p in sized[:n]]
    for kind in SANITY_KINDS:
        s, d, wq, quads = [], [], [], []
        for i, p in enumerate(photos):
            img = load_rgb(p)
            h, w = img.shape[:2]
            quad = (i + SANITY_KINDS.index(kind)) % 4
            y0, x0 = (quad // 2) * (h // 2), (quad % 2) * (w // 2)
            y1, x1 = (y0 + h // 2) if quad < 2 else h, (x0 + w // 2) if quad % 2 == 0 else w
            bad = img.copy()
            bad[y0:y1, x0:x1] = distort(np.ascontiguousarray(img[y0:y1, x0:x1]), kind, 3, seed=i)
            a, b, r = _cells(model, bad)
            s.append(a)
            d.append(b)
            wq.append(_quarter_weights(r, (h, w)))
            quads.append(quad)
        data[f"loc_{kind}_s"], data[f"loc_{kind}_off"] = _pack(s)
        data[f"loc_{kind}_d"], _ = _pack(d)
        data[f"loc_{kind}_w"], _ = _pack(wq)
        data[f"loc_{kind}_quad"] = np.array(quads)
        print("local", kind, flush=True)
    graded = [p for _, p in sized[n : n + n_graded]]
    for kind in KINDS:
        s, d = [], []
        for p in graded:
            img = load_rgb(p)
            for lv in range(1, 6):
                a, b, _ = _cells(model, distort(img, kind, lv, seed=1))
                s.append(a)
                d.append(b)
        data[f"graded_{kind}_s"], data[f"graded_{kind}_off"] = _pack(s)
        data[f"graded_{kind}_d"], _ = _pack(d)
    data["graded_photos"] = np.array(len(graded))
    print("graded", len(graded), flush=True)
    return data


def fused(s, d, w, t):
    """The defect-aware crop scores (as ``PMTIQA.fuse``)."""
    p = np.maximum(d - t, 0.0) @ w
    return s + np.maximum(s, 0.0) * np.expm1(-p)


def image_means(values, offsets):
    return np.add.reduceat(values, offsets[:-1]) / np.diff(offsets)


def evaluate(data, w, t, graded: bool = True):
    """Every validation figure for weights ``w`` (K,) and thresholds ``t`` (K,); the graded
    order (the slowest part) only with ``graded``."""
    w, t = np.asarray(w, dtype=float), np.asarray(t, dtype=float)
    out = {}
    for name in ("livec", "biq"):
        img = image_means(fused(data[f"{name}_s"], data[f"{name}_d"], w, t), data[f"{name}_off"])
        out[f"srcc_{name}"] = float(spearmanr(img, data[f"{name}_mos"])[0])
    for kind in SANITY_KINDS:
        v = fused(data[f"loc_{kind}_s"], data[f"loc_{kind}_d"], w, t)
        q = v[:, None] * data[f"loc_{kind}_w"]
        off = data[f"loc_{kind}_off"]
        means = np.add.reduceat(q, off[:-1], axis=0)  # (images, 4)
        out[f"loc_{kind}"] = float(np.mean(means.argmin(axis=1) == data[f"loc_{kind}_quad"]))
    out["loc_min"] = min(out[f"loc_{k}"] for k in SANITY_KINDS)
    out["loc_mean"] = float(np.mean([out[f"loc_{k}"] for k in SANITY_KINDS]))
    if not graded:
        return out
    for kind in KINDS:
        v = fused(data[f"graded_{kind}_s"], data[f"graded_{kind}_d"], w, t)
        s = image_means(v, data[f"graded_{kind}_off"]).reshape(-1, 5)  # (photos, levels)
        good = sum((s[:, i] > s[:, j]).sum() for i, j in itertools.combinations(range(5), 2))
        out[f"graded_{kind}"] = float(good / (10 * len(s)))
    out["graded_sanity"] = float(np.mean([out[f"graded_{k}"] for k in SANITY_KINDS]))
    out["graded_sanity_min"] = float(min(out[f"graded_{k}"] for k in SANITY_KINDS))
    out["graded_held_out"] = float(np.mean([out[f"graded_{k}"] for k in HELD_OUT_KINDS]))
    return out


def choose(rows, base, tolerance):
    """The chosen row: human-score SRCC on both validation parts no lower than without fusion
    (less ``tolerance``); then the worst localisation kind, the mean over the kinds, and the summed
    SRCC."""
    ok = [
        r
        for r in rows
        if r["srcc_livec"] >= base["srcc_livec"] - tolerance
        and r["srcc_biq"] >= base["srcc_biq"] - tolerance
    ]
    ok.sort(
        key=lambda r: (
            round(r["loc_min"], 6),
            round(r["loc_mean"], 6),
            r["srcc_livec"] + r["srcc_biq"],
        ),
        reverse=True,
    )
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoint")
    ap.add_argument("--livec", required=True)
    ap.add_argument("--biq", required=True)
    ap.add_argument("--n", type=int, default=60, help="localisation photos")
    ap.add_argument("--graded", type=int, default=24, help="graded-order photos")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--grid", default="0,0.05,0.1,0.2,0.3,0.5,0.8,1.2", help="weights tried per family"
    )
    ap.add_argument("--thresholds", default="0,0.5,1,1.5,2", help="thresholds tried per family")
    ap.add_argument(
        "--tolerance", type=float, default=0.002, help="SRCC a choice may lose against no fusion"
    )
    ap.add_argument(
        "--min-graded",
        type=float,
        default=0.95,
        help="the least share of graded pairs a choice orders right, for each of blur, noise, JPEG",
    )
    ap.add_argument(
        "--leading",
        type=int,
        default=300,
        help="leading combinations whose graded order is measured",
    )
    ap.add_argument("--out", type=Path, help="write the grid's figures and the choice here (JSON)")
    ap.add_argument("--write", type=Path, help="write the model with the chosen fusion here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint)
    kinds = tuple(model.config.defect_kinds)
    if not kinds:
        sys.exit("This model has no defect head: fit one first (pmt-iqa defects).")
    if model.fuses_defects:
        sys.exit("This model already fuses its defect levels: give the checkpoint without fusion.")
    from napari_pmt_iqa.weights import sha256_of

    # the cached values belong to one network, head and set of photos
    key = f"{sha256_of(args.checkpoint)[:16]}-n{args.n}-g{args.graded}"
    if args.cache.exists():
        data = dict(np.load(args.cache))
        if str(data.get("key")) != key:
            sys.exit(
                f"{args.cache} holds the values of another checkpoint or photo count "
                f"({data.get('key')}, not {key}): give another --cache or delete it."
            )
    else:
        data = collect(model, args.livec, args.biq, args.n, args.graded, key)
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.cache, **data)
    grid = [float(g) for g in args.grid.split(",")]
    thresholds = [float(g) for g in args.thresholds.split(",")]
    k = len(kinds)
    base = {"weights": [0.0] * k, "thresholds": [0.0] * k, **evaluate(data, [0.0] * k, [0.0] * k)}
    rows = []
    for w in itertools.product(grid, repeat=k):
        if not any(w):
            continue
        # a family without weight needs no threshold
        per_family = [thresholds if wk else [0.0] for wk in w]
        for t in itertools.product(*per_family):
            rows.append(
                {"weights": list(w), "thresholds": list(t), **evaluate(data, w, t, graded=False)}
            )
    print("kinds:", kinds, f"({len(rows)} combinations)")
    print("no fusion:", json.dumps(base))
    ok = choose(rows, base, args.tolerance)
    # the graded order (the sanity figure) for the leading rows: a choice must keep it, and reach
    # --min-graded for each of blur, noise and JPEG
    ok = [{**r, **evaluate(data, r["weights"], r["thresholds"])} for r in ok[: args.leading]]
    floor = max(args.min_graded, base["graded_sanity_min"] - 0.01)
    ok = [r for r in ok if r["graded_sanity_min"] >= floor]
    if not ok:
        print(
            f"no combination among the {args.leading} leading ones orders graded versions >= {floor}"
        )
    for r in ok[:10]:
        print(
            json.dumps(
                {
                    key: (round(v, 4) if isinstance(v, float) else v)
                    for key, v in r.items()
                    if not key.startswith("graded_") or key in ("graded_sanity", "graded_held_out")
                }
            )
        )
    best = ok[0] if ok else None
    if args.out:
        args.out.write_text(
            json.dumps({"kinds": kinds, "baseline": base, "chosen": best, "rows": rows}, indent=1)
        )
    if args.write and best:
        model.config = dataclasses.replace(
            model.config,
            defect_weights=tuple(best["weights"]),
            defect_thresholds=tuple(best["thresholds"]),
        )
        from napari_pmt_iqa.weights import build_metadata, save_checkpoint

        meta = {k2: v for k2, v in model.meta.items() if k2 not in ("format_version", "config")}
        # the figures of this model on the validation parts; the network's own (unfused) ones
        # are kept apart
        meta["metrics"] = {
            "val": {
                "srcc_livec": best["srcc_livec"],
                "srcc_biq2021": best["srcc_biq"],
                "n": {"livec": len(data["livec_mos"]), "biq2021": len(data["biq_mos"])},
            },
            "without_fusion": model.meta.get("metrics", {}),
        }
        meta["fusion"] = {
            "weights": dict(zip(kinds, best["weights"])),
            "thresholds": dict(zip(kinds, best["thresholds"])),
            "form": "crop score * exp(-sum_k weight_k * max(0, level_k - threshold_k))",
            "chosen_on": {
                "livec_val": len(data["livec_mos"]),
                "biq_val": len(data["biq_mos"]),
                "localisation_photos": int(len(data["loc_jpeg_quad"])),
                "graded_photos": int(data["graded_photos"]),
            },
            "validation": {
                key: v for key, v in best.items() if key not in ("weights", "thresholds")
            },
            "validation_without": {
                key: v for key, v in base.items() if key not in ("weights", "thresholds")
            },
        }
        save_checkpoint(args.write, model, metadata=build_metadata(model, **meta))
        print("wrote", args.write)


if __name__ == "__main__":
    main()
