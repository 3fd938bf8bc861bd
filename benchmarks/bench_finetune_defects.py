"""Fine-tuning a defect-aware model: keep its defect-aware score, or drop it?

The default model lowers crops where its defect head sees strong blur, noise or compression
(``PMTIQA.fuse``). A fine-tune can keep that score and train the heads through it
(``FinetuneConfig.defect_score=True``) or drop it and let the heads learn the ratings as they are
(``False``). For each seed this benchmark:

1. draws N images of the BIQ2021 validation part of the default recipe (500 photos held out of
   BIQ2021 Train; BIQ2021 Test is not used) and rates them 1-5 stars (the MOS cut into the
   part's quintiles, stars mapped as the rating widget maps them: 1 -> 10, ..., 5 -> 90). The
   default model never trained on these photos, but they are not clean for it: its network's
   epoch and its defect-aware score's six numbers were chosen on them (``scripts/fit_fusion.py``),
   which favours the starting model and a fine-tune that keeps that score over one that drops it
   on the SRCC of the rest. No part of the data is clean for the default model except the
   reserved test parts; the graded order on Kodak24 is;
2. fine-tunes ``--init`` on them both ways (the recipe's defaults otherwise);
3. scores the rest of the part with :func:`napari_pmt_iqa.scoring.score` (what a user gets) and
   reports its SRCC against the true MOS, the held-out figures of the recipe, and the graded order
   of blur, noise and JPEG (levels 1-5) on Kodak24 (the sanity set, never trained on).

Usage (prints a table; writes ``results.json`` in ``--work``)::

    python benchmarks/bench_finetune_defects.py --livec ~/iqa-data/ChallengeDB_release \\
        --biq ~/iqa-data/biq --kodak ~/iqa-data/ffdnet/testsets/Kodak24 --n 100 --seeds 0 1 2 \\
        [--modes keep] [--blend 1]

``--blend`` sets ``FinetuneConfig.blend`` (default: the recipe's, half the step); the figures
of ``docs/results.md`` measured before the blend existed are ``--blend 1``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scripts"))

from bench_finetune import star_scores  # noqa: E402


def rest_srcc(model, samples, precision) -> float:
    """SRCC of ``model``'s scores (the scorer's, fast path) against the MOS of ``samples``."""
    from napari_pmt_iqa.data.crops import load_rgb
    from napari_pmt_iqa.scoring import score

    s = [
        score(load_rgb(x.path), model=model, device="cpu", maps=False, precision=precision).score
        for x in samples
    ]
    return float(spearmanr(s, [x.mos for x in samples])[0])


def graded(model, photos, kinds=None) -> dict:
    """Share of level pairs ordered right per kind (``evaluate_default.graded_order``; default
    the sanity kinds), and their mean (``all``)."""
    import evaluate_default as E

    from napari_pmt_iqa.data.degradations import SANITY_KINDS

    kinds = tuple(kinds or SANITY_KINDS)
    out = {}
    for kind in kinds:
        good, total = E.graded_order(model, photos, kind)
        out[kind] = good / total
    out["all"] = float(np.mean([out[k] for k in kinds]))
    return out


def fine_tune_parser(doc: str, work: str) -> argparse.ArgumentParser:
    """The arguments the fine-tune benchmarks share (data, Kodak24, starting model, draws)."""
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--livec", required=True, help="LIVE-C folder (the recipe's splits need it)")
    ap.add_argument("--biq", required=True)
    ap.add_argument("--kodak", required=True, help="Kodak24 folder (the graded order)")
    ap.add_argument("--init", default=None, help="starting model (default: the default model)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(work))
    ap.add_argument(
        "--blend",
        type=float,
        default=None,
        help="FinetuneConfig.blend (the share of the fine-tuned step kept; default: the recipe's)",
    )
    return ap


def main(argv=None) -> None:
    ap = fine_tune_parser(__doc__, "/tmp/bench_ft_defects")
    ap.add_argument(
        "--modes",
        nargs="+",
        choices=["keep", "drop"],
        default=["keep", "drop"],
        help="fine-tune keeping the defect-aware score, dropping it, or both (default)",
    )
    args = ap.parse_args(argv)

    import evaluate_default as E
    import torch

    from napari_pmt_iqa.training import FinetuneConfig, finetune
    from napari_pmt_iqa.training.finetune_config import ratings_scale
    from napari_pmt_iqa.weights import DEFAULT_MODEL, load_checkpoint, load_model

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    *_, bq_val = E.splits(args.livec, args.biq)
    samples = list(bq_val.samples)
    mos = np.array([s.mos for s in samples])
    stars = star_scores(mos)
    kodak = sorted(p for p in Path(args.kodak).iterdir() if p.suffix.lower() in (".png", ".bmp"))
    prec = E.PRECISION
    start = load_model(args.init or DEFAULT_MODEL, device="cpu")
    print(f"start {args.init or DEFAULT_MODEL}: defect-aware score {start.fuses_defects}")
    blend = {} if args.blend is None else {"blend": args.blend}
    blend_tag = "" if args.blend is None else f"-blend{args.blend:g}"
    rows = []
    for seed in args.seeds:
        rng = np.random.default_rng((seed, 2027))
        pick = np.sort(rng.choice(len(samples), args.n, replace=False))
        rest = [samples[i] for i in range(len(samples)) if i not in set(pick.tolist())]
        data = args.work / f"n{args.n}-s{seed}.csv"
        with open(data, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "mos"])
            for i in pick:
                w.writerow([str(Path(samples[i].path).resolve()), float(stars[i])])
        row = {"seed": seed, "n": args.n, "n_rest": len(rest)}
        t0 = time.time()
        row["start_rest_srcc"] = rest_srcc(start, rest, prec)
        if seed == args.seeds[0]:
            row["start_graded"] = graded(start, kodak)
        print(f"seed {seed}: start {row['start_rest_srcc']:.3f} ({time.time() - t0:.0f} s)")
        for tag in args.modes:
            keep = tag == "keep"
            t0 = time.time()
            res = finetune(
                FinetuneConfig(
                    data=str(data),
                    score_scale=ratings_scale(),
                    init=args.init,
                    out_dir=str(args.work / f"run-n{args.n}-s{seed}-{tag}{blend_tag}"),
                    seed=seed,
                    defect_score=keep,
                    **blend,
                )
            )
            took = time.time() - t0
            tuned = load_checkpoint(res.best_path)
            row[tag] = {
                "seconds": round(took, 1),
                "holdout_before": res.start_val.get("srcc"),
                "holdout_after": res.best_val.get("srcc"),
                "rest_srcc": rest_srcc(tuned, rest, prec),
                "graded": graded(tuned, kodak),
                "fuses": bool(tuned.fuses_defects),
            }
            r = row[tag]
            print(
                f"  {tag}: held-out {r['holdout_before']:.3f} -> {r['holdout_after']:.3f}, "
                f"rest {r['rest_srcc']:.3f}, graded {r['graded']['all']:.3f} "
                f"(blur {r['graded']['blur']:.3f} noise {r['graded']['noise']:.3f} "
                f"jpeg {r['graded']['jpeg']:.3f}), {took:.0f} s",
                flush=True,
            )
        rows.append(row)
        from napari_pmt_iqa.atomic import atomic_write_text

        atomic_write_text(
            args.work / f"results{blend_tag}.json",
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2
            ),
        )

    print()
    cols = " | ".join(f"{m}: held-out / rest / graded" for m in args.modes)
    print(f"| seed | start (rest) | {cols} |")
    print("|---|---|" + "---|" * len(args.modes))
    for r in rows:
        cells = [
            f"{r[m]['holdout_before']:.3f} -> {r[m]['holdout_after']:.3f} / "
            f"{r[m]['rest_srcc']:.3f} / {r[m]['graded']['all']:.3f}"
            for m in args.modes
        ]
        print(f"| {r['seed']} | {r['start_rest_srcc']:.3f} | {' | '.join(cells)} |")
    if rows and "start_graded" in rows[0]:
        print(f"start graded order: {json.dumps(rows[0]['start_graded'])}")


if __name__ == "__main__":
    main()
