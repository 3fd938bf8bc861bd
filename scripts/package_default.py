"""Ship a trained checkpoint as the package's default model.

Re-saves the checkpoint in float16 (about 7 MB) with its measured test metrics added to the metadata,
checks that float16 storage changes scores by less than a stated tolerance, and registers it (name,
file, SHA-256, summary) in ``src/napari_pmt_iqa/weights/registry.json``.

Usage::

    python scripts/package_default.py runs/default/best.safetensors --eval docs/eval_default.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from napari_pmt_iqa.atomic import atomic_write_text
from napari_pmt_iqa.weights import (
    DEFAULT_MODEL,
    PACKAGE_WEIGHTS,
    load_checkpoint,
    save_checkpoint,
    sha256_of,
)

#: Largest change of an image score (0-100 scale) that float16 storage may cause.
HALF_TOLERANCE = 0.5


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoint")
    ap.add_argument("--eval", default=None, help="JSON written by scripts/evaluate_default.py")
    ap.add_argument("--name", default=DEFAULT_MODEL)
    ap.add_argument(
        "--replace",
        default=None,
        help="registry name of the model this one replaces: its entry and file leave the package",
    )
    ap.add_argument("--version", type=int, default=None, help="model version in the metadata")
    ap.add_argument(
        "--stage1",
        default=None,
        help="the stage-1 checkpoint a stage-2 run started from (its recipe goes into the metadata)",
    )
    ap.add_argument("--description", default=None, help="replace the model's description")
    args = ap.parse_args(argv)

    from skimage import data

    from napari_pmt_iqa.data.degradations import distort
    from napari_pmt_iqa.scoring import score

    model = load_checkpoint(args.checkpoint)
    meta = dict(model.meta)
    # a network whose weights are already float16 values (stored so once): the check below is then
    # zero by construction
    already_half = all(
        bool((v == v.half().float()).all())
        for k, v in model.state_dict().items()
        if v.is_floating_point() and not k.startswith("defect_head.")
    )
    if args.eval:
        ev = json.loads(Path(args.eval).read_text())
        meta["metrics"] = {
            **meta.get("metrics", {}),
            "test": {
                k: ev[k]
                for k in (
                    "ours",
                    "brisque",
                    "probe",
                    "sanity",
                    "localisation",
                    "fast_vs_crops",
                    "ours_minus_probe",
                    "ours_minus_brisque",
                    "speed_s_per_500px",
                    "commands",
                )
                if k in ev
            },
        }
    if args.stage1:
        from napari_pmt_iqa.weights import read_metadata

        first = read_metadata(args.stage1)
        meta["training"] = {
            **meta.get("training", {}),
            "stage1": first.get("training", {}),
            "stage1_val": first.get("metrics", {}),
        }
    meta["name"] = args.name
    if args.description:
        meta["description"] = args.description
    if args.version is not None:
        meta["version"] = args.version
    out = PACKAGE_WEIGHTS / f"{args.name}.safetensors"
    save_checkpoint(out, model, meta, half=True)

    # float16 storage must not change scores beyond the tolerance
    half = load_checkpoint(out)
    imgs = [data.astronaut(), data.chelsea(), distort(data.coffee(), "blur", 3)]
    diffs = [
        abs(
            score(i, model=model, device="cpu", maps=False).score
            - score(i, model=half, device="cpu", maps=False).score
        )
        for i in imgs
    ]
    print(f"float16 storage: max score change {max(diffs):.4f} (tolerance {HALF_TOLERANCE})")
    assert max(diffs) < HALF_TOLERANCE

    reg_path = PACKAGE_WEIGHTS / "registry.json"
    drop = {args.name, args.replace}
    old = [e for e in json.loads(reg_path.read_text()) if e["name"] in drop - {args.name}]
    reg = [e for e in json.loads(reg_path.read_text()) if e["name"] not in drop]
    for e in old:  # the replaced model leaves the package (it stays in the git history)
        (PACKAGE_WEIGHTS / e["file"]).unlink(missing_ok=True)
    m = meta.get("metrics", {})
    reg.insert(
        0,
        {
            "name": args.name,
            "file": out.name,
            "sha256": sha256_of(out),
            "meta": {
                "description": meta.get("description", ""),
                "backbone": meta["config"]["backbone"],
                "score_scale": meta["score_scale"],
                "training": meta.get("training", {}).get("data", {}),
                **(
                    {"synthetic": meta["training"]["synthetic"]}
                    if "synthetic" in meta.get("training", {})
                    else {}
                ),
                **({"version": meta["version"]} if "version" in meta else {}),
                **(
                    {"defects": {k: v for k, v in meta["defects"].items() if k != "selection"}}
                    if "defects" in meta
                    else {}
                ),
                **(
                    {"fusion": {k: meta["fusion"][k] for k in ("weights", "thresholds", "form")}}
                    if "fusion" in meta
                    else {}
                ),
                "metrics": {k: v for k, v in m.items() if k != "test"},
                "test": {k: v for k, v in m.get("test", {}).get("ours", {}).items()},
                "storage_dtype": "float16",
                "float16_max_score_change": float(np.max(diffs)),
                **(
                    {
                        "float16_note": "the checkpoint packaged was already stored in float16, so "
                        "this change is zero by construction; the change from the float32 network "
                        "is that of the model it came from"
                    }
                    if already_half
                    else {}
                ),
            },
        },
    )
    atomic_write_text(reg_path, json.dumps(reg, indent=2) + "\n")
    print(f"registered {args.name}: {out} ({out.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
