"""Few-shot fine-tuning benchmark: ``pmt-iqa finetune`` on N star ratings of a data set the
starting model never saw, beside a ridge regression on frozen ImageNet features.

The user's kind of images is LIVE-C, but only the recipe's TRAIN part (the seeded 80 % of
:func:`napari_pmt_iqa.data.datasets.livec_recipe_parts`; the 20 % test part stays reserved for the
shipped model's final report). For each N and seed:

1. N images of that part are drawn (seeded) and rated 1-5 stars: their MOS cut into the quintiles
   of the part, stars mapped as the rating widget maps them (1 -> 10, ..., 5 -> 90);
2. ``pmt-iqa finetune --data stars.csv --init MODEL --out RUN --seed SEED`` runs in a subprocess
   with ``--threads`` CPU threads (timed: the whole process, and the recipe's own time);
3. the starting model, the fine-tuned model and the **ridge anchor** (ridge regression, its
   penalty chosen by leave-one-out on the rated images, on the global-average-pooled features of
   the ImageNet EfficientNet-Lite0 backbone, ``pretrained=True``, whole images, of the same rated
   images and stars) score the rest of the train part, against the true MOS (SRCC, PLCC).

Scores of the rest come from backbone features computed once per model and cached in ``--cache``:
a model fine-tuned with a frozen backbone is scored exactly by its heads on the starting model's
features, one whose backbone changed only in its pointwise head (the recipe's head adaptation)
by that head on the starting model's cached head-input maps (both checked against
:func:`napari_pmt_iqa.scoring.score` on a few images); a model whose backbone changed elsewhere is
scored with :func:`napari_pmt_iqa.training.evaluate`.

Usage (prints a table; adds its rows to ``results.json`` in ``--work``, replacing earlier rows
of the same N and seed)::

    python benchmarks/bench_finetune.py --livec ~/iqa-data/ChallengeDB_release \\
        --init ~/runs/cmp-lite0/best.safetensors --n 50 100 300 --seeds 0 1 2 --threads 2
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: Stars to the 0-100 rating scale, as the rating widget maps them.
STARS = {1: 10.0, 2: 30.0, 3: 50.0, 4: 70.0, 5: 90.0}


def star_scores(mos: np.ndarray) -> np.ndarray:
    """1-5 stars from the quintiles of ``mos`` (over the whole part), as 0-100 ratings."""
    edges = np.quantile(mos, [0.2, 0.4, 0.6, 0.8])
    stars = 1 + np.searchsorted(edges, mos, side="right")
    return np.array([STARS[int(s)] for s in stars])


def _key(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(str(p).encode())
    return h.hexdigest()[:16]


def cached_features(cache: Path, model_key: str, samples, compute):
    """``compute(sample) -> array`` for every sample, cached in ``cache`` (npz, fp16 rows)."""
    path = cache / f"{model_key}-{_key(*[s.path for s in samples])}.npz"
    if path.exists():
        with np.load(path) as z:
            rows = z["rows"]  # read once (each access to an npz member reads it again)
            return [rows[a:b] for a, b in zip(z["start"], z["end"])]
    out, t0 = [], time.time()
    for i, s in enumerate(samples):
        out.append(np.asarray(compute(s), dtype=np.float16))
        if (i + 1) % 100 == 0:
            print(
                f"  {model_key}: {i + 1}/{len(samples)} images, {time.time() - t0:.0f} s",
                flush=True,
            )
    ends = np.cumsum([len(f) for f in out])
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, rows=np.concatenate(out), start=ends - np.array([len(f) for f in out]), end=ends)
    os.replace(tmp, path)
    return out


def cached_maps(cache: Path, model_key: str, samples, compute):
    """``compute(sample) -> (C, h, w) array`` for every sample, cached in ``cache`` (npz, fp16)."""
    path = cache / f"{model_key}-maps-{_key(*[s.path for s in samples])}.npz"
    if path.exists():
        with np.load(path) as z:
            flat, shapes, ends = z["flat"], z["shapes"], np.cumsum(z["sizes"])
        return [flat[e - int(np.prod(sh)) : e].reshape(sh) for e, sh in zip(ends, shapes)]
    out = [np.asarray(compute(s), dtype=np.float16) for s in samples]
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        flat=np.concatenate([m.ravel() for m in out]),
        shapes=np.array([m.shape for m in out]),
        sizes=np.array([m.size for m in out]),
    )
    os.replace(tmp, path)
    return out


def save_rows(path: Path, rows: list[dict], args: dict) -> None:
    """Add ``rows`` to ``path`` (results.json), replacing earlier rows of the same N and seed, so
    that calls with other seeds in the same ``--work`` add to the file instead of replacing it."""
    old: list[dict] = []
    if path.exists():
        try:
            old = json.loads(path.read_text()).get("rows", [])
        except (OSError, ValueError):
            old = []
    new_keys = {(r["n"], r["seed"]) for r in rows}
    merged = [r for r in old if (r.get("n"), r.get("seed")) not in new_keys] + rows
    merged.sort(key=lambda r: (r["n"], r["seed"]))
    from napari_pmt_iqa.atomic import atomic_write_text

    atomic_write_text(path, json.dumps({"args": args, "rows": merged}, indent=2))


def ridge_loo(x_train, y_train, x_test, alphas=np.logspace(-2, 5, 30)):
    """Ridge on standardised features, the penalty chosen by exact leave-one-out error."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a = (x_train - mu) / sd
    b = (x_test - mu) / sd
    ym = y_train.mean()
    yc = y_train - ym
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    best = (np.inf, None)
    for lam in alphas:
        shrink = s**2 / (s**2 + lam)
        hat_diag = np.einsum("ij,j,ij->i", u, shrink, u)
        resid = yc - u @ (shrink * (u.T @ yc))
        err = np.mean((resid / (1 - hat_diag)) ** 2)
        if err < best[0]:
            best = (err, lam)
    lam = best[1]
    w = vt.T @ ((s / (s**2 + lam)) * (u.T @ yc))
    return b @ w + ym, lam


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--livec", default="~/iqa-data/ChallengeDB_release")
    ap.add_argument("--init", default="~/runs/cmp-lite0/best.safetensors")
    ap.add_argument("--n", type=int, nargs="+", default=[50, 100, 300])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/bench-finetune", help="CSVs, runs and results.json")
    ap.add_argument("--cache", default="~/.cache/napari-pmt-iqa/bench-finetune")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="take the runs already finished in --work instead of running them again",
    )
    ap.add_argument("--features-only", action="store_true", help="fill the feature cache and stop")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more finetune args")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from napari_pmt_iqa.data.crops import load_sample_rgb
    from napari_pmt_iqa.data.datasets import livec_recipe_parts, load_livec
    from napari_pmt_iqa.metrics import iqa_metrics
    from napari_pmt_iqa.model import PMTIQA
    from napari_pmt_iqa.scoring import _prepare, _tile_to_float, score
    from napari_pmt_iqa.training.features import window_features
    from napari_pmt_iqa.training.head_maps import supports_head_adaptation, window_blocks
    from napari_pmt_iqa.training.heads_fit import FeaturePack, image_scores
    from napari_pmt_iqa.weights import load_checkpoint, read_metadata, sha256_of

    init = Path(args.init).expanduser()
    work = Path(args.work).expanduser()
    cache = Path(args.cache).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    meta = read_metadata(init)
    seen = json.dumps(meta.get("training", {}).get("data", meta.get("training", {})))[:300]
    print(f"starting model: {init}\n  its training data: {seen}")
    if "livec" in seen.lower() or "challengedb" in seen.lower():
        print(
            "  WARNING: its metadata mentions LIVE-C: the gains below would not be few-shot gains"
        )

    part = livec_recipe_parts(load_livec(Path(args.livec).expanduser()))["train"]
    samples = part.samples
    mos = np.array([s.mos for s in samples], dtype=np.float64)
    stars = star_scores(mos)
    print(f"LIVE-C recipe train part: {len(samples)} images (the test part is never used)")

    start_key = "start-" + sha256_of(init)[:12]
    start = load_checkpoint(init).eval()
    if start.fuses_defects:
        # the rest is scored from cached rows without the windows' defect levels
        sys.exit(
            f"{init} has a defect-aware score, which this benchmark does not reproduce from its "
            "cached rows: give a model without one, or use benchmarks/bench_finetune_defects.py."
        )

    def start_rows(s):
        f, _ = window_features(start, load_sample_rgb(s, 224))
        return f.numpy()

    imagenet = None

    def imagenet_gap(s):
        nonlocal imagenet
        if imagenet is None:
            torch.manual_seed(0)
            imagenet = PMTIQA(backbone="efficientnet_lite0", pretrained=True).eval()
            assert imagenet.backbone.pretrained_loaded, "ImageNet Lite0 weights are missing"
        p = _prepare(load_sample_rgb(s, 224), 224)
        x = torch.from_numpy(np.ascontiguousarray(_tile_to_float(p.rgb))).permute(2, 0, 1)[None]
        with torch.inference_mode():
            return imagenet.backbone(imagenet.normalize(x))[3].mean((2, 3)).numpy()

    t0 = time.time()
    gap = np.concatenate(cached_features(cache, "imagenet-lite0-gap", samples, imagenet_gap))
    gap = gap.astype(np.float64)  # cached as fp16; linalg needs float64
    feats = cached_features(cache, start_key, samples, start_rows)

    def start_map(s):
        _, maps, _ = window_blocks(start, load_sample_rgb(s, 224), max_windows=None)
        assert len(maps) == 1, "a LIVE-C image should fit one backbone pass"
        return maps[0].numpy()

    head_maps = (
        cached_maps(cache, start_key, samples, start_map)
        if supports_head_adaptation(start)
        else None
    )
    print(f"features of the part ready ({time.time() - t0:.0f} s)")
    if args.features_only:
        return 0
    # the cached features give score()'s scores (checked on three images)
    for i in (0, 1, 2):
        pack = FeaturePack([torch.from_numpy(feats[i].astype(np.float32))], [0.0])
        cached = float(start.score_scale.from_internal(image_scores(start, pack)[0]))
        ref = score(load_sample_rgb(samples[i], 224), model=start, device="cpu", maps=False).score
        assert abs(cached - ref) < 0.05, (cached, ref)

    def scores_of(model, idx, with_maps=False):
        pack = FeaturePack(
            [torch.from_numpy(feats[i].astype(np.float32)) for i in idx],
            [0.0] * len(idx),
            [[torch.from_numpy(head_maps[i].astype(np.float32))] for i in idx]
            if with_maps
            else None,
        )
        return image_scores(model, pack)

    start_backbone = {k: v for k, v in start.state_dict().items() if k.startswith("backbone.")}

    def changed(model):
        """``None``: same backbone; ``"head"``: only its pointwise head changed; else ``"more"``."""
        sd = model.state_dict()
        diff = {k for k, v in start_backbone.items() if not torch.equal(v, sd[k])}
        if not diff:
            return None
        return "head" if all(k.startswith("backbone.head.") for k in diff) else "more"

    rows = []
    # seeds outside, N inside: an interrupted run has every N for the first seeds
    for seed in args.seeds:
        for n in args.n:
            rng = np.random.default_rng(seed)
            rated = np.sort(rng.choice(len(samples), n, replace=False))
            rest = np.setdiff1d(np.arange(len(samples)), rated)
            tag = f"n{n}-s{seed}"
            csv_path = work / f"{tag}.csv"
            with open(csv_path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["image", "mos"])
                for i in rated:
                    w.writerow([str(Path(samples[i].path).resolve()), f"{stars[i]:g}"])
            run = work / tag
            done_file = run / "bench.json"
            cmd = [
                sys.executable, "-m", "napari_pmt_iqa", "finetune", "--data", str(csv_path),
                "--init", str(init), "--out", str(run), "--seed", str(seed), "--device", "cpu",
                "--threads", str(args.threads), "--no-progress", *args.extra,
            ]  # fmt: skip
            if args.reuse and done_file.exists():
                wall = json.loads(done_file.read_text())["process_s"]
            else:
                env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
                t = time.time()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                wall = time.time() - t
                if proc.returncode != 0:
                    print(proc.stdout, proc.stderr, sep="\n")
                    raise SystemExit(f"pmt-iqa finetune failed for {tag}")
                done_file.write_text(json.dumps({"process_s": wall, "cmd": cmd}))
            report = json.loads((run / "report.json").read_text())
            tuned = load_checkpoint(run / "best.safetensors").eval()
            what = changed(tuned)
            if what is None:
                p_tuned = scores_of(tuned, rest)
            elif what == "head" and head_maps is not None:
                p_tuned = scores_of(tuned, rest, with_maps=True)
                for i in rest[:2]:  # the cached maps give score()'s scores (fp16 cache)
                    got = float(tuned.score_scale.from_internal(scores_of(tuned, [i], True)[0]))
                    ref = score(load_sample_rgb(samples[i], 224), model=tuned, device="cpu").score
                    assert abs(got - ref) < 0.05, (got, ref)
            else:
                from napari_pmt_iqa.training import evaluate

                _, p_tuned = evaluate(
                    tuned, part.subset([samples[i] for i in rest]), "cpu", return_predictions=True
                )
            p_start = scores_of(start, rest)
            p_ridge, lam = ridge_loo(gap[rated], stars[rated], gap[rest])
            m = {
                "start": iqa_metrics(p_start, mos[rest], logistic=False),
                "finetuned": iqa_metrics(p_tuned, mos[rest], logistic=False),
                "ridge": iqa_metrics(p_ridge, mos[rest], logistic=False),
            }
            row = {
                "n": n,
                "seed": seed,
                "n_rest": len(rest),
                **{f"srcc_{k}": v["srcc"] for k, v in m.items()},
                **{f"plcc_{k}": v["plcc"] for k, v in m.items()},
                "ridge_alpha": lam,
                "holdout_before": report["holdout_before"].get("srcc"),
                "holdout_after": report["holdout_after"].get("srcc"),
                "epochs_done": report["epochs_done"],
                "best_epoch": report["best_epoch"],
                "recipe_s": report["seconds"],
                "feature_s": report["feature_seconds"],
                "process_s": wall,
            }
            rows.append(row)
            print(
                f"N={n:>3} seed={seed}: SRCC start {row['srcc_start']:.3f}  fine-tuned "
                f"{row['srcc_finetuned']:.3f}  ridge {row['srcc_ridge']:.3f}  "
                f"(held-out {row['holdout_before']:.3f} -> {row['holdout_after']:.3f}; "
                f"{row['epochs_done']} epochs; recipe {row['recipe_s']:.0f} s, process {wall:.0f} s)",
                flush=True,
            )
    save_rows(work / "results.json", rows, vars(args))

    def ms(vals):
        v = np.asarray(vals, dtype=np.float64)
        return f"{v.mean():.3f} ± {v.std():.3f}"

    print(
        f"\nSRCC on the rest of the LIVE-C train part (mean ± sd over seeds {args.seeds}; "
        f"{args.threads} CPU threads)"
    )
    print(
        "| N | starting model | fine-tuned | ridge (ImageNet) | gain vs start | gain vs ridge "
        "| recipe time | process time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in args.n:
        r = [x for x in rows if x["n"] == n]

        def col(k, r=r):
            return [x[k] for x in r]

        gain_s = np.subtract(col("srcc_finetuned"), col("srcc_start"))
        gain_r = np.subtract(col("srcc_finetuned"), col("srcc_ridge"))
        print(
            f"| {n} | {ms(col('srcc_start'))} | {ms(col('srcc_finetuned'))} | {ms(col('srcc_ridge'))} "
            f"| {gain_s.mean():+.3f} ± {gain_s.std():.3f} | {gain_r.mean():+.3f} ± {gain_r.std():.3f} "
            f"| {np.mean(col('recipe_s')):.0f} s | {np.mean(col('process_s')):.0f} s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
