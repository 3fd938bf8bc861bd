"""Measure a checkpoint honestly: held-out test sets, baselines, sanity and speed.

Parts (``--parts``, comma-separated; default all):

``livec``      SRCC/PLCC/KRCC on the LIVE-C test part (the seeded 80/20 split of train_default.py,
               untouched by training and selection).
``biq``        the same on the BIQ2021 Test split (2,000 images; reserved for the end: docs/results.md
               says how often it was used).
``brisque``    BRISQUE (the offline ``brisque`` package) on the same test images.
``probe``      a linear probe: ridge regression on frozen ImageNet EfficientNet-Lite0 features
               (global average of the last stage over the whole image), fitted on the same training
               data (LIVE-C train part + BIQ2021 Train), ridge strength chosen on the validation parts.
``sanity``     graded synthetic distortions (blur, noise, JPEG at 5 levels) of Kodak24 photos that
               no model saw: the share of correctly ordered pairs (less distortion -> higher score);
               also every other kind of the degradation bank, the held-out kinds (never trained
               on) reported apart.
``local``      localisation: photos no model saw in training or selection (the 24 full-size Kodak
               photos, 768 x 512, and the 49 Wikipedia photos of Zelex/images, about 1300 x 860),
               one quarter of each degraded by one kind (blur, noise or JPEG at level 3: sigma
               2.5 px, std 22, quality 20; every photo once per kind, the quarter rotating): the
               share of images whose lowest-scoring quarter of the quality map is the degraded one,
               and the share of image pixels under a map cell (coverage).
``fastcrops``  method="fast" versus method="crops" on the LIVE-C test part: mean/max absolute
               difference and SRCC of both.
``speed``      seconds per 500x500 image, this model next to the ResNet-50 paper model (random
               weights), same process, 2 threads.

When the model and a baseline (probe, BRISQUE) are measured in the same run, the SRCC difference
model - baseline on each test set gets a 95 % paired bootstrap interval (2,000 resamples of the test
images), and ``--predictions`` writes every per-image score to a CSV.

Usage::

    python scripts/evaluate_default.py --model runs/stage2/best.safetensors \
        --livec ~/iqa-data/ChallengeDB_release --biq ~/iqa-data/BIQ2021 \
        --kodak ~/iqa-data/pristine/testsets/Kodak24 --out docs/eval_default.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from napari_pmt_iqa.atomic import atomic_write_text
from napari_pmt_iqa.batch import auto_precision
from napari_pmt_iqa.data.crops import DecodeCache, load_rgb
from napari_pmt_iqa.data.datasets import load_biq2021
from napari_pmt_iqa.data.degradations import HELD_OUT_KINDS, KINDS, SANITY_KINDS, distort
from napari_pmt_iqa.metrics import iqa_metrics
from napari_pmt_iqa.model import PMTIQA
from napari_pmt_iqa.scoring import score
from napari_pmt_iqa.weights import load_checkpoint


def splits(livec_root, biq_root, split_seed=0):
    """The data parts of the default recipe (exactly those of scripts/train_default.py)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from train_default import default_splits

    return default_splits(livec_root, biq_root, split_seed)


#: bf16 where this CPU runs it natively (the recorded figures were measured so), else fp32: emulated
#: bf16 is about 25 x slower.
PRECISION = auto_precision("cpu")


def model_scores(model, samples, cache, method="fast", precision=PRECISION):
    return [
        score(
            np.asarray(cache.get(s.path)),
            model=model,
            device="cpu",
            method=method,
            precision=precision,
            maps=False,
        ).score
        for s in samples
    ]


def brisque_scores(samples, cache):
    import brisque.brisque as bq_mod
    from brisque import BRISQUE

    # brisque 0.2.0 breaks on numpy >= 2 in scale_features (scalar conversion): patch it locally
    orig = bq_mod.BRISQUE.scale_features if hasattr(bq_mod.BRISQUE, "scale_features") else None

    def scale_features(self, features):
        feats = np.array([np.asarray(f).ravel()[0] for f in features], dtype=np.float64)
        return orig(self, feats) if orig else feats

    if orig is not None:
        bq_mod.BRISQUE.scale_features = scale_features
    b = BRISQUE(url=False)
    out = []
    for s in samples:
        img = np.asarray(cache.get(s.path))
        try:
            out.append(float(b.score(img)))
        except Exception:
            out.append(float("nan"))
    return out


@torch.inference_mode()
def probe_features(samples, cache, backbone):
    feats = []
    for s in samples:
        img = np.asarray(cache.get(s.path))
        h, w = (img.shape[0] // 32) * 32, (img.shape[1] // 32) * 32
        oy, ox = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        x = (
            torch.from_numpy(np.ascontiguousarray(img[oy : oy + h, ox : ox + w]))
            .permute(2, 0, 1)[None]
            .float()
            / 255
        )
        x = (x - 0.5) / 0.5
        with torch.autocast("cpu", dtype=torch.bfloat16):
            f4 = backbone(x)[-1]
        feats.append(f4.float().mean(dim=(2, 3))[0].numpy())
    return np.stack(feats)


def ridge_fit(X, y, alpha):
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Z = (X - mu) / sd
    ym = y.mean()
    A = Z.T @ Z + alpha * np.eye(Z.shape[1])
    w = np.linalg.solve(A, Z.T @ (y - ym))
    return lambda Xn: ((Xn - mu) / sd) @ w + ym


def paired_srcc_difference(a, b, mos, resamples=2000, seed=0):
    """SRCC(a) - SRCC(b) on the same images, with a 95 % paired bootstrap interval.

    Images where either method has no score (NaN, e.g. a BRISQUE failure) are left out of both.
    """
    ok = np.isfinite(a) & np.isfinite(b)
    a, b, mos = a[ok], b[ok], mos[ok]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        idx = rng.integers(0, len(mos), len(mos))
        diffs.append(iqa_metrics(a[idx], mos[idx])["srcc"] - iqa_metrics(b[idx], mos[idx])["srcc"])
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    d = iqa_metrics(a, mos)["srcc"] - iqa_metrics(b, mos)["srcc"]
    return {
        "srcc_diff": float(d),
        "ci95": [float(lo), float(hi)],
        "n": int(ok.sum()),
        "resamples": resamples,
    }


def write_predictions(path, tests, preds):
    """One row per test image: set, file, MOS and the score of each method of this run."""
    methods = sorted(preds)
    lines = ["set,image,mos," + ",".join(methods)]
    for key, (samples, _) in tests.items():
        for i, s in enumerate(samples):
            vals = [preds[m][key][i] if key in preds[m] else float("nan") for m in methods]
            lines.append(
                f"{key},{Path(s.path).name},{s.mos:.4f}," + ",".join(f"{v:.4f}" for v in vals)
            )
    atomic_write_text(path, "\n".join(lines) + "\n")


def graded_order(model, photos, kind):
    """Share of the 10 level pairs (levels 1-5) of every photo ordered right for one kind."""
    good = total = 0
    for p in photos:
        img = load_rgb(p)
        s = [
            score(
                distort(img, kind, lv, seed=1),
                model=model,
                device="cpu",
                maps=False,
                precision=PRECISION,
            ).score
            for lv in range(1, 6)
        ]
        for i in range(5):
            for j in range(i + 1, 5):
                total += 1
                good += s[i] > s[j]
    return good, total


def quadrant_means(res, shape, layer=None):
    """Mean of the quality map (or of ``layer``, a map of the same cells) over each quarter of the
    image (TL, TR, BL, BR) and the share of image pixels under some map cell."""
    g = res.maps.geometry
    q = res.maps.quality if layer is None else layer
    h, w = shape
    ys = np.floor((np.arange(h) + 0.5 - g.translate[0]) / g.scale[0]).astype(int)
    xs = np.floor((np.arange(w) + 0.5 - g.translate[1]) / g.scale[1]).astype(int)
    inside_y = (ys >= 0) & (ys < q.shape[0])
    inside_x = (xs >= 0) & (xs < q.shape[1])
    coverage = float(inside_y.mean() * inside_x.mean())
    full = q[np.clip(ys, 0, q.shape[0] - 1)][:, np.clip(xs, 0, q.shape[1] - 1)]
    hh, ww = h // 2, w // 2
    quads = [full[:hh, :ww], full[:hh, ww:], full[hh:, :ww], full[hh:, ww:]]
    return [float(a.mean()) for a in quads], coverage


def localisation(model, photos, level=3, zoom=1.0):
    """One quarter of each photo degraded (one kind per image): is it the map's worst quarter?

    ``zoom`` > 1 enlarges each photo (bicubic) first: the same content at a higher resolution.
    """
    out = {}
    coverage = []
    for kind in SANITY_KINDS:
        hits, defect_hits = [], []
        for i, p in enumerate(photos):
            img = load_rgb(p)
            if zoom != 1:
                from PIL import Image

                big = Image.fromarray(img).resize(
                    (round(img.shape[1] * zoom), round(img.shape[0] * zoom)), Image.BICUBIC
                )
                img = np.asarray(big)
            h, w = img.shape[:2]
            quad = (i + SANITY_KINDS.index(kind)) % 4
            y0, x0 = (quad // 2) * (h // 2), (quad % 2) * (w // 2)
            y1, x1 = (y0 + h // 2) if quad < 2 else h, (x0 + w // 2) if quad % 2 == 0 else w
            bad = img.copy()
            bad[y0:y1, x0:x1] = distort(
                np.ascontiguousarray(img[y0:y1, x0:x1]), kind, level, seed=i
            )
            r = score(bad, model=model, device="cpu", maps=True, precision=PRECISION)
            means, cov = quadrant_means(r, (h, w))
            coverage.append(cov)
            hits.append(int(np.argmin(means)) == quad)
            if r.maps.defects is not None:  # the defect maps: the highest worst-family level
                worst = r.maps.defects.max(axis=0)
                defect_hits.append(int(np.argmax(quadrant_means(r, (h, w), worst)[0])) == quad)
        out[kind] = {"hit_rate": float(np.mean(hits)), "images": len(hits)}
        if defect_hits:
            out[kind]["defect_hit_rate"] = float(np.mean(defect_hits))
    out["coverage_min"] = float(np.min(coverage))
    out["photos"] = len(photos)
    out["level"] = level
    out["zoom"] = zoom
    return out


def fmt(m):
    return f"{m['srcc']:.3f} / {m['plcc']:.3f}"


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", default=None, help="checkpoint (needed by every part but brisque and probe)"
    )
    ap.add_argument("--livec", required=True)
    ap.add_argument("--biq", required=True)
    ap.add_argument("--kodak", default=None, help="Kodak24 folder (sanity)")
    ap.add_argument(
        "--local-photos",
        nargs="+",
        default=None,
        help="folders of the localisation photos (Zelex/images kodak/ and wikipedia-photos/)",
    )
    ap.add_argument("--parts", default="livec,biq,brisque,probe,sanity,local,fastcrops,speed")
    ap.add_argument("--out", default=None)
    ap.add_argument("--predictions", default=None, help="CSV of every per-image score of this run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="debug: images per set")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/pmt-iqa-decoded"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    cache = DecodeCache(args.cache)
    model = load_checkpoint(args.model) if args.model else None
    livec, lc_train, lc_val, lc_test, biq, bq_train, bq_val = splits(args.livec, args.biq)
    bq_test = load_biq2021(args.biq, "test")
    lim = args.limit
    tests = {
        "LIVE-C test": (lc_test.samples[:lim], livec.scale),
        "BIQ2021 Test": (bq_test.samples[:lim], bq_test.scale),
    }
    res: dict = {"model": args.model, "n": {k: len(v[0]) for k, v in tests.items()}}
    t00 = time.time()
    preds: dict[str, dict[str, np.ndarray]] = {}  # method -> test set -> per-image scores

    for key, part in (("LIVE-C test", "livec"), ("BIQ2021 Test", "biq")):
        if part in parts:
            samples, _ = tests[key]
            t0 = time.time()
            pred = model_scores(model, samples, cache)
            preds.setdefault("ours", {})[key] = np.asarray(pred, dtype=float)
            res.setdefault("ours", {})[key] = iqa_metrics(pred, [s.mos for s in samples])
            print(f"ours {key}: {fmt(res['ours'][key])} ({time.time() - t0:.0f} s)", flush=True)
    if "brisque" in parts:
        for key, (samples, _) in tests.items():
            b = np.asarray(brisque_scores(samples, cache))
            ok = np.isfinite(b)
            preds.setdefault("brisque", {})[key] = -b
            res.setdefault("brisque", {})[key] = iqa_metrics(
                -b[ok], np.asarray([s.mos for s in samples])[ok]
            )
            print(f"BRISQUE {key}: {fmt(res['brisque'][key])} ({(~ok).sum()} failures)", flush=True)
    if "probe" in parts:
        bb = PMTIQA(backbone="efficientnet_lite0", pretrained=True).backbone.eval()
        train = lc_train.samples[:lim] + bq_train.samples[:lim]
        val = lc_val.samples[:lim] + bq_val.samples[:lim]
        y_tr = np.array(
            [
                livec.scale.to_internal(s.mos)
                if s in set(lc_train.samples)
                else biq.scale.to_internal(s.mos)
                for s in train
            ]
        )
        lc_val_set = set(lc_val.samples)
        y_va = np.array(
            [
                livec.scale.to_internal(s.mos) if s in lc_val_set else biq.scale.to_internal(s.mos)
                for s in val
            ]
        )
        t0 = time.time()
        X_tr, X_va = probe_features(train, cache, bb), probe_features(val, cache, bb)
        best = None
        for alpha in (1, 10, 100, 1000, 10000):
            f = ridge_fit(X_tr, y_tr, alpha)
            m = iqa_metrics(f(X_va), y_va)["srcc"]
            if best is None or m > best[0]:
                best = (m, alpha, f)
        res["probe_alpha"] = best[1]
        for key, (samples, _) in tests.items():
            p = best[2](probe_features(samples, cache, bb))
            preds.setdefault("probe", {})[key] = np.asarray(p, dtype=float)
            res.setdefault("probe", {})[key] = iqa_metrics(p, [s.mos for s in samples])
            print(
                f"probe {key}: {fmt(res['probe'][key])} (alpha {best[1]}, {time.time() - t0:.0f} s)",
                flush=True,
            )
    if "sanity" in parts and args.kodak:
        photos = sorted(Path(args.kodak).glob("*.png"))[:lim]
        per, counts = {}, {}
        for kind in KINDS:
            g, t = graded_order(model, photos, kind)
            per[kind], counts[kind] = g / t, (g, t)
            print(f"sanity {kind}: {g}/{t} = {g / t:.3f}", flush=True)

        def share(kinds):
            g = sum(counts[k][0] for k in kinds)
            return g / sum(counts[k][1] for k in kinds)

        trained = [k for k in KINDS if k not in HELD_OUT_KINDS]
        res["sanity"] = {
            "ordered_pairs": share(SANITY_KINDS),
            "per_kind": {k: per[k] for k in SANITY_KINDS},
            "photos": len(photos),
            "pairs": sum(counts[k][1] for k in SANITY_KINDS),
            "training_bank": share(trained),
            "training_bank_per_kind": {k: per[k] for k in trained},
            "held_out": share(HELD_OUT_KINDS),
            "held_out_per_kind": {k: per[k] for k in HELD_OUT_KINDS},
        }
        print("sanity:", json.dumps(res["sanity"]), flush=True)
    if "local" in parts and args.local_photos:
        photos = sorted(
            p for d in args.local_photos for p in Path(d).glob("*") if p.suffix == ".png"
        )[:lim]
        res["localisation"] = localisation(model, photos)
        print("localisation:", json.dumps(res["localisation"]), flush=True)
    if "fastcrops" in parts:
        samples = lc_test.samples[:lim]
        f = np.array(model_scores(model, samples, cache, "fast", "fp32"))
        c = np.array(model_scores(model, samples, cache, "crops", "fp32"))
        mos = [s.mos for s in samples]
        # paired bootstrap of the SRCC difference (fast - crops) over the test images
        lo, hi = paired_srcc_difference(f, c, np.asarray(mos, dtype=float))["ci95"]
        res["fast_vs_crops"] = {
            "mean_abs_diff": float(np.mean(np.abs(f - c))),
            "max_abs_diff": float(np.max(np.abs(f - c))),
            "mean_diff": float(np.mean(f - c)),
            "corr_fast_crops": float(np.corrcoef(f, c)[0, 1]),
            "fast": iqa_metrics(f, mos),
            "crops": iqa_metrics(c, mos),
            "n": len(samples),
            "srcc_diff_ci95": [float(lo), float(hi)],
        }
        print("fast vs crops:", json.dumps(res["fast_vs_crops"]), flush=True)
    if "speed" in parts:
        img = np.asarray(load_rgb(lc_test.samples[0].path))[:500, :500]
        paper = PMTIQA(backbone="resnet50", pretrained=False).eval()
        rows = {}
        for name, m in (("default (lite0)", model), ("paper ResNet-50", paper)):
            for prec in ("fp32", "bf16"):
                score(img, model=m, device="cpu", precision=prec, maps=False)
                ts = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    score(img, model=m, device="cpu", precision=prec, maps=False)
                    ts.append(time.perf_counter() - t0)
                rows[f"{name} {prec}"] = float(np.median(ts))
        res["speed_s_per_500px"] = rows
        print("speed:", rows, flush=True)
    for base in ("probe", "brisque"):
        for key, (samples, _) in tests.items():
            a, b = preds.get("ours", {}).get(key), preds.get(base, {}).get(key)
            if a is None or b is None:
                continue
            res.setdefault(f"ours_minus_{base}", {})[key] = paired_srcc_difference(
                a, b, np.asarray([s.mos for s in samples], dtype=float)
            )
            print(f"ours - {base} {key}: {json.dumps(res[f'ours_minus_{base}'][key])}", flush=True)
    if args.predictions and preds:
        write_predictions(args.predictions, tests, preds)
    res["seconds"] = time.time() - t00
    if args.out:
        atomic_write_text(args.out, json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
