"""``pmt-iqa score``: score image files and folders from the command line.

Usage::

    pmt-iqa score photo.jpg more/*.png folder/ [--recursive] [--csv scores.csv]
                  [--model NAME_OR_FILE] [--device auto] [--precision auto|fp32|bf16|fp16]
                  [--method fast|crops] [--maps-dir MAPS] [--memory-mb 1024] [--no-progress]

Every file gets one CSV row (``path, plane, score, units, score_low, score_high, higher_is_better,
quality_class, n_crops, error``; ``quality_class`` counts from 1, the worst, as napari shows the
classes); the planes of a stack (a multi-page TIFF) get one row each. Files that cannot be read or
scored are reported on stderr, get a row with an ``error`` and are skipped: the run goes on.

Exit status
-----------
``0``
    At least one image was scored. When some files failed, a warning on stderr says how many.
``1``
    Nothing could be scored (no image files found, every file failed, or the model could not be
    loaded).

Without ``--csv`` the table is printed to stdout (the progress bar goes to stderr). With
``--csv`` it is written atomically: a partial file never exists.

Files are decoded on a small thread pool while the model scores (``napari_pmt_iqa.batch``), and
``--precision auto`` (default) runs bf16 autocast where the hardware computes bf16 natively (a CPU
with AVX-512 BF16 or AMX, a CUDA GPU with bf16), fp32 elsewhere: bf16 image scores differ from fp32
ones by at most 2.5 points on the 0-100 scale (measured on the 1,162 LIVE-C photos with the default
model: mean 0.23, 99 % within 1.3, largest 2.4; ``docs/results.md``). ``--precision fp32`` for exact
scores.

With ``torchrun`` (``WORLD_SIZE`` > 1) the files are shared between the processes by
``napari_pmt_iqa.training.distributed.distributed_score_files`` when that helper exists; otherwise
the command warns and scores everything in this one process.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

from ..export import DEFECT_COLUMNS
from ._common import output_problem

#: CSV columns. ``plane`` is empty for a 2D image and the plane index for the planes of a stack;
#: ``score_low``/``score_high``/``higher_is_better`` say what the score means; ``defect_*`` hold
#: the defect head's level (0-5) in the worst crop (empty for a model without a defect head).
CSV_FIELDS = (
    "path",
    "plane",
    "score",
    "units",
    "score_low",
    "score_high",
    "higher_is_better",
    "quality_class",
    "n_crops",
    *DEFECT_COLUMNS,
    "error",
)


def add_subcommands(subparsers) -> None:
    """Add the ``score`` subcommand to the ``pmt-iqa`` parser's subparsers."""
    p = subparsers.add_parser(
        "score",
        help="score image files or folders",
        description="Score image files or folders with a PMT-IQA model.",
        epilog="Exit status: 0 when at least one image was scored (a warning lists failures), "
        "1 when nothing could be scored.",
    )
    p.add_argument("paths", nargs="+", help="image files and/or folders")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--csv", type=Path, default=None, help="write the results to this CSV file")
    p.add_argument(
        "--model",
        default=None,
        help="registered model name or checkpoint file (default: the model shipped with the package)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="auto (default): bf16 where the CPU/GPU computes it natively, else fp32",
    )
    p.add_argument(
        "--decode-threads",
        type=int,
        default=2,
        help="threads decoding the next images while one is scored (default 2)",
    )
    p.add_argument("--method", choices=("fast", "crops"), default="fast")
    p.add_argument(
        "--maps-dir",
        type=Path,
        default=None,
        help="also write each image's quality maps to this folder (one .npz per image)",
    )
    p.add_argument("--memory-mb", type=float, default=1024.0, help="memory budget of one pass")
    colour = p.add_mutually_exclusive_group()
    colour.add_argument(
        "--rgb",
        dest="rgb",
        action="store_const",
        const=True,
        default=None,
        help="treat an axis of 3 or 4 (last, or first) as colour channels",
    )
    colour.add_argument(
        "--no-rgb",
        dest="rgb",
        action="store_const",
        const=False,
        help="never treat an axis as colour: a (3, H, W) TIFF is a stack of 3 grey planes "
        "(default: detected from the shape)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_score)


# --------------------------------------------------------------------------- helpers
def expand_paths(
    paths: list[str | os.PathLike], recursive: bool = False
) -> tuple[list[Path], list[dict]]:
    """Files to score (folders expanded) and error rows for paths that do not exist.

    Returns
    -------
    files, errors
        The image files in the order given (each folder's files sorted), without duplicates, and a
        result row for each path that is neither a file nor a folder.
    """
    from ..data.datasets import load_image_folder

    files: list[Path] = []
    errors: list[dict] = []
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = load_image_folder(p, recursive=recursive)
            if not found:
                errors.append(
                    _row(
                        p,
                        error="folder holds no image files"
                        + ("" if recursive else " (try --recursive)"),
                    )
                )
            cand = found
        elif p.is_file():
            cand = [p]
        else:
            errors.append(_row(p, error="file not found"))
            continue
        for f in cand:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                files.append(f)
    return files, errors


def _row(path, error: str = "", **values) -> dict:
    row = dict.fromkeys(CSV_FIELDS, "")
    row.update(values, path=str(path), error=error)
    return row


def _result_rows(path: Path, result) -> list[dict]:
    from ..scoring import StackResult

    planes = result.planes if isinstance(result, StackResult) else [result]
    rows = []
    for k, r in enumerate(planes):
        rows.append(
            _row(
                path,
                plane=k if isinstance(result, StackResult) else "",
                score=f"{r.score:.4f}",
                units=r.units,
                score_low=r.score_range[0],
                score_high=r.score_range[1],
                higher_is_better=r.higher_is_better,
                quality_class=r.predicted_class + 1,
                n_crops=r.n_crops,
                **{
                    f"defect_{kind}": f"{v:.2f}"
                    for kind, v in r.defect_worst.items()
                    if f"defect_{kind}" in DEFECT_COLUMNS
                },
            )
        )
    return rows


def _save_maps(maps_dir: Path, path: Path, result, used: set[str]) -> None:
    """Write the maps of one result as ``<stem>.npz`` (atomically).

    Arrays have a leading plane axis (length 1 for a 2D image); ``map_scale``/``map_translate``
    lay the maps over the image (napari ``scale``/``translate``).
    """
    import numpy as np

    from ..atomic import atomic_write_bytes
    from ..scoring import StackResult

    planes = result.planes if isinstance(result, StackResult) else [result]
    if any(r.maps is None for r in planes):
        return
    stem = path.stem
    name, k = stem, 1
    while name in used:
        name, k = f"{stem}-{k}", k + 1
    used.add(name)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        score=np.array([r.score for r in planes]),
        quality=np.stack([r.maps.quality for r in planes]),
        class_map=np.stack([r.maps.class_map for r in planes]),
        confidence=np.stack([r.maps.confidence for r in planes]),
        scale_maps=np.stack([r.maps.scale_maps for r in planes]),
        **(
            {
                "defects": np.stack([r.maps.defects for r in planes]),
                "defect_kinds": np.array(planes[0].maps.defect_kinds),
            }
            if planes[0].maps.defects is not None
            else {}
        ),
        map_scale=np.array(planes[0].maps.geometry.scale),
        map_translate=np.array(planes[0].maps.geometry.translate),
        source=np.array(str(path)),
    )
    atomic_write_bytes(maps_dir / f"{name}.npz", buf.getvalue())


def write_csv(rows: list[dict], out: Path | None) -> None:
    """Write the result rows as CSV to ``out`` (atomically) or to stdout."""
    from ..export import table_csv_text, write_table_csv

    if out is None:
        sys.stdout.write(table_csv_text(CSV_FIELDS, rows))
    else:
        write_table_csv(out, CSV_FIELDS, rows)


def score_files(
    files: list[Path],
    model,
    *,
    device: str = "auto",
    precision: str = "fp32",
    method: str = "fast",
    memory_mb: float = 1024.0,
    maps_dir: Path | None = None,
    show_progress: bool = True,
    rgb: bool | None = None,
    decode_threads: int = 2,
) -> list[dict]:
    """Score ``files`` in this process; unreadable files become error rows.

    ``model`` is a loaded :class:`~napari_pmt_iqa.model.PMTIQA`. The next files are decoded on
    ``decode_threads`` threads while one is scored (:func:`napari_pmt_iqa.batch.prefetch`).
    """
    from tqdm import tqdm

    from ..batch import prefetch
    from ..imaging import ImageError, read_image
    from ..scoring import score

    rows: list[dict] = []
    used: set[str] = set()
    bar = tqdm(
        total=len(files), desc="scoring", unit="img", disable=not show_progress, file=sys.stderr
    )
    for path, image, error in prefetch(files, read_image, threads=decode_threads):
        bar.update(1)
        try:
            if error is not None:
                raise error
            result = score(
                image,
                model,
                device,
                maps=maps_dir is not None,
                method=method,
                precision=precision,
                memory_mb=memory_mb,
                rgb=rgb,
            )
        except (ImageError, ValueError, OSError, RuntimeError) as exc:
            msg = str(exc).replace("\n", " ")
            bar.write(f"skipped {path}: {msg}", file=sys.stderr)
            rows.append(_row(path, error=msg))
            continue
        rows.extend(_result_rows(path, result))
        if maps_dir is not None:
            _save_maps(maps_dir, path, result, used)
        del image, result  # keep memory flat: the next image is already decoded
    bar.close()
    return rows


def _distributed(files: list[Path], args) -> tuple[bool, list[dict] | None]:
    """Score with the ``torchrun`` helper: ``(available, rows)``.

    ``rows`` is what the helper returns: the result rows on rank 0, ``None`` on the other ranks.
    """
    try:
        from ..training.distributed import distributed_score_files
    except (ImportError, AttributeError):
        print(
            f"warning: WORLD_SIZE={os.environ.get('WORLD_SIZE')} but distributed scoring is not "
            "available in this installation; rank 0 scores every file in a single process.",
            file=sys.stderr,
        )
        return False, None
    if args.maps_dir is not None:
        print(
            "warning: --maps-dir is not supported with torchrun; no maps are written.",
            file=sys.stderr,
        )
    if args.precision == "auto":
        from ..batch import auto_precision
        from ..devices import resolve_device

        args.precision = auto_precision(resolve_device(args.device).type)
    rows = distributed_score_files(
        files,
        model=args.model,
        device=args.device,
        precision=args.precision,
        method=args.method,
        memory_mb=args.memory_mb,
        rgb=getattr(args, "rgb", None),
    )
    return True, rows


# --------------------------------------------------------------------------- entry point
def _unwritable_outputs(args: argparse.Namespace) -> str:
    """Check, before any scoring, that the CSV and the maps folder can be written ("" if fine)."""
    if args.csv is not None:
        problem = output_problem(args.csv, "the CSV")
        if problem:
            return problem
    if getattr(args, "maps_dir", None) is not None:
        return output_problem(args.maps_dir, "the maps folder", folder=True)
    return ""


def run_score(args: argparse.Namespace) -> int:
    """Run ``pmt-iqa score`` with parsed ``args``; returns the exit status (see module doc)."""
    problem = _unwritable_outputs(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    files, rows = expand_paths(args.paths, recursive=args.recursive)
    for r in rows:
        print(f"skipped {r['path']}: {r['error']}", file=sys.stderr)
    if not files:
        print("error: no image files to score.", file=sys.stderr)
        if args.csv is not None:
            write_csv(rows, args.csv)
        return 1

    result_rows: list[dict] | None = None
    try:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        world = 1
    if world > 1:
        available, result_rows = _distributed(files, args)
        rank = int(os.environ.get("RANK", "0") or 0)
        if (available and result_rows is None) or (not available and rank != 0):
            return 0  # a non-zero rank of a distributed run: rank 0 writes the table
    if result_rows is None:
        from ..devices import DeviceError
        from ..scoring import check_options, get_model
        from ..weights import CheckpointError

        try:
            model = get_model(args.model, args.device)
            if args.precision == "auto":
                from ..batch import auto_precision

                args.precision = auto_precision(next(model.parameters()).device.type)
            check_options(model, memory_mb=args.memory_mb, precision=args.precision)
        except (CheckpointError, DeviceError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        result_rows = score_files(
            files,
            model,
            device=args.device,
            precision=args.precision,
            method=args.method,
            memory_mb=args.memory_mb,
            maps_dir=args.maps_dir,
            show_progress=not args.no_progress,
            rgb=getattr(args, "rgb", None),
            decode_threads=getattr(args, "decode_threads", 2),
        )
    rows.extend(result_rows)
    try:
        write_csv(rows, args.csv)
    except OSError as exc:  # a full disk (DiskFullError says so) or a vanished folder
        print(f"error: could not write {args.csv}: {exc}", file=sys.stderr)
        return 1
    n_bad = sum(1 for r in rows if r.get("error"))
    n_ok = len(rows) - n_bad
    if n_ok == 0:
        print("error: no image could be scored.", file=sys.stderr)
        return 1
    if n_bad:
        n_paths = len({str(r["path"]) for r in rows})
        print(
            f"warning: {n_bad} of {n_paths} paths could not be scored (see the 'error' column).",
            file=sys.stderr,
        )
    if args.csv is not None:
        print(f"wrote {n_ok} scores to {args.csv}", file=sys.stderr)
    return 0
