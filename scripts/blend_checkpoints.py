"""Blend two checkpoints of one lineage in weight space (WiSE-FT style interpolation).

``out = (1 - alpha) * A + alpha * B`` for every floating-point tensor of two checkpoints of the
same architecture, where B was trained from A (for the default models: A = v1, trained on human
scores only; B = v2, the same network trained further with synthetic ranking pairs). Networks
fine-tuned from one starting point are usually connected by a low-loss straight line, and points
on it often keep most of what each end is good at (Wortsman et al., "Robust fine-tuning of
zero-shot models", CVPR 2022). Batch-norm running statistics are blended like the weights.

The blend changes the backbone's first stages, so a defect head of either end no longer fits:
it is dropped, and the result needs a new fit (``scripts/fit_defects.py``). ``alpha`` is chosen
on validation parts only (``--report`` prints their SRCC for a list of alphas).

Usage::

    python scripts/blend_checkpoints.py v1.safetensors v3.safetensors --alpha 0.5 \\
        --out runs/blend50.safetensors
    python scripts/blend_checkpoints.py v1.safetensors v3.safetensors --report 0 0.25 0.5 0.75 1 \\
        --livec ~/iqa-data/ChallengeDB_release --biq ~/iqa-data/biq
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from napari_pmt_iqa.training.defects import drop_defect_head  # noqa: E402
from napari_pmt_iqa.training.weight_blend import blend_state  # noqa: E402
from napari_pmt_iqa.weights import build_metadata, load_checkpoint, save_checkpoint  # noqa: E402


def blend(path_a, path_b, alpha: float):
    """The model ``(1 - alpha) * A + alpha * B`` (float32, eval mode, no defect head)."""
    a, b = load_checkpoint(path_a), load_checkpoint(path_b)
    drop_defect_head(a)
    drop_defect_head(b)
    ca, cb = a.config.to_dict(), b.config.to_dict()
    if ca != cb:
        raise SystemExit(f"the two checkpoints differ in their configuration: {ca} against {cb}")
    sa, sb = (
        {k: v.float() if v.is_floating_point() else v for k, v in m.state_dict().items()}
        for m in (a, b)
    )
    a.load_state_dict(blend_state(sa, sb, alpha))
    from napari_pmt_iqa.weights import sha256_of

    ends = [
        {"file": Path(p).name, "name": m.meta.get("name"), "sha256": sha256_of(p)}
        for p, m in ((path_a, a), (path_b, b))
    ]
    a.meta = {
        **b.meta,
        "blend": {
            "a": ends[0],
            "b": ends[1],
            "alpha": alpha,
            "form": "(1 - alpha) * a + alpha * b",
        },
    }
    a.meta.pop("defects", None)
    a.meta.pop("fusion", None)
    a.score_scale = b.score_scale
    return a.eval()


def report(path_a, path_b, alphas, livec, biq):
    """Validation SRCC (LIVE-C and BIQ2021 validation parts) of each blend."""
    import evaluate_default as E
    from scipy.stats import spearmanr

    from napari_pmt_iqa.data.crops import load_rgb
    from napari_pmt_iqa.scoring import score

    _, _, lc_val, _, _, _, bq_val = E.splits(livec, biq)
    images = {
        name: [(load_rgb(s.path), s.mos) for s in part.samples]
        for name, part in (("livec", lc_val), ("biq", bq_val))
    }
    for alpha in alphas:
        model = blend(path_a, path_b, alpha)
        row = {"alpha": alpha}
        for name, items in images.items():
            s = [
                score(img, model=model, device="cpu", maps=False, precision=E.PRECISION).score
                for img, _ in items
            ]
            row[f"srcc_{name}"] = round(float(spearmanr(s, [m for _, m in items])[0]), 4)
        row["mean"] = round((row["srcc_livec"] + row["srcc_biq"]) / 2, 4)
        print(json.dumps(row), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("a", help="the starting checkpoint (alpha 0)")
    ap.add_argument("b", help="the checkpoint trained from it (alpha 1)")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--out", help="write the blend here (float32)")
    ap.add_argument("--report", type=float, nargs="+", help="alphas to measure on validation")
    ap.add_argument("--livec")
    ap.add_argument("--biq")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.report:
        if not (args.livec and args.biq):
            ap.error("--report needs --livec and --biq")
        report(args.a, args.b, args.report, args.livec, args.biq)
    if args.out:
        model = blend(args.a, args.b, args.alpha)
        save_checkpoint(
            args.out,
            model,
            metadata=build_metadata(
                model,
                **{k: v for k, v in model.meta.items() if k not in ("format_version", "config")},
            ),
        )
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
