"""``pmt-iqa defects``: fit a model's defect head (its blur / noise / compression maps) on photos."""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import _error, _setup, count_bar, output_problem


def add_subcommands(sub) -> None:
    """Add ``defects`` to an argparse sub-parser collection."""
    p = sub.add_parser(
        "defects",
        help="fit the defect head of a model (defect maps) on clean photos",
        description=(
            "Fit the defect head of a model: the read-out behind its blur, noise and compression "
            "maps (training/defects.py). The photos should be clean (pristine): each is also "
            "degraded synthetically, and the head learns the degradation levels. The backbone and "
            "the score are not changed. Needed after a full training run, which drops the head."
        ),
    )
    p.add_argument("--model", required=True, help="checkpoint file or registered model name")
    p.add_argument(
        "--photos", required=True, nargs="+", help="folders (or files) of clean photos, >= 224 px"
    )
    p.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    p.add_argument(
        "--ridge", type=float, default=0.03, help="ridge penalty per row (default: %(default)s)"
    )
    p.add_argument("--versions", type=int, default=2, help="degraded versions per family and photo")
    p.add_argument("--windows", type=int, default=12, help="crop windows per version")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_defects)


def _photo_files(items) -> list[Path]:
    from ..data.datasets import IMAGE_SUFFIXES

    files: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            files += sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{path} does not exist.")
    if not files:
        raise ValueError("No image files among --photos (png, jpg, tif, bmp, ...).")
    return files


def cmd_defects(args) -> int:
    from ..training.defects import (
        attach_defect_head,
        defect_rows,
        fit_defects,
        save_with_defect_head,
    )
    from ..training.errors import TrainingError
    from ..weights import CheckpointError, load_model

    _setup(args)
    if not str(args.out).endswith(".safetensors"):
        print("error: --out must be a .safetensors file.", file=sys.stderr)
        return 2
    problem = output_problem(args.out, "the checkpoint")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        if args.versions < 1 or args.windows < 1:
            raise ValueError("--versions and --windows must be at least 1.")
        files = _photo_files(args.photos)
        model = load_model(args.model, device="cpu")
        bar, progress = count_bar(len(files), "photos", "photo")
        rows = defect_rows(
            model,
            files,
            versions_per_family=args.versions,
            windows_per_image=args.windows,
            seed=args.seed,
            progress=progress,
        )
        bar.close()
        fit = fit_defects(rows, ridge=args.ridge)
        attach_defect_head(model, fit)
        save_with_defect_head(args.out, model, fit, photos_given=len(files))
    except (TrainingError, CheckpointError, ValueError, OSError) as exc:
        return _error(exc)
    print(
        f"defect head ({', '.join(fit.kinds)}) fitted on {rows.photos} photos, "
        f"{fit.windows} windows: {args.out}"
    )
    return 0
