"""napari reader for IQA data sets: a LIVE-C or BIQ2021 folder, or a CSV of ``image,mos``.

:func:`get_reader` decides from file names and a CSV header only (no torch, cheap), and declines
anything that is not a data set, so other readers get plain folders and CSV files. The reader opens at
most ``reader_max_images`` images (plugin setting, default 24), one Image layer each, with the MOS,
path and data set name in the layer's metadata.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from ._settings import get_settings

DATASET_KEY = "pmt_iqa_dataset"
_IMAGE_COLS = {"image", "image name", "file", "filename", "path"}
_SCORE_COLS = {"mos", "score", "dmos", "rating"}


def _is_iqa_csv(path: Path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    cols = {c.strip().lower() for c in header}
    return bool(cols & _IMAGE_COLS) and bool(cols & _SCORE_COLS)


def detect(path: str | Path) -> str | None:
    """``"livec"``, ``"biq2021"``, ``"csv"`` or None (not a data set), from names and headers only."""
    p = Path(path)
    if p.is_file():
        return "csv" if p.suffix.lower() == ".csv" and _is_iqa_csv(p) else None
    if not p.is_dir():
        return None
    if (p / "Data" / "AllMOS_release.mat").exists() or (
        p / "ChallengeDB_release" / "Data"
    ).is_dir():
        return "livec"
    if (p / "Train (Images and MOS).csv").exists():
        return "biq2021"
    csvs = list(p.glob("*.csv"))
    if len(csvs) == 1 and _is_iqa_csv(csvs[0]):
        return "csv"
    return None


def get_reader(path: str | list[str]) -> Callable | None:
    """npe2 reader hook: a reader function for an IQA data set, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    layout = detect(path)
    if layout is None:
        return None

    def reader(p) -> list[tuple]:
        return read_dataset(p[0] if isinstance(p, list) else p, layout)

    return reader


def read_dataset(path: str | Path, layout: str = "auto", limit: int | None = None) -> list[tuple]:
    """Layer data of the first ``limit`` images of a data set (default: the plugin setting).

    Images that cannot be read are skipped with a warning.
    """
    from ._torch_guard import guard_triton

    guard_triton()
    from .data.datasets import DatasetError, detect_layout, load_dataset
    from .imaging import ImageError, read_image
    from .score_scale import ScoreScale

    limit = get_settings().reader_max_images if limit is None else limit
    kwargs = {"part": "all"} if layout == "biq2021" else {}
    try:
        ds = load_dataset(path, layout=layout, **kwargs)
    except DatasetError as exc:
        # viewing needs no training scale: a CSV of one row or of equal scores still opens
        if (layout if layout != "auto" else detect_layout(path)) != "csv" or "are equal" not in str(
            exc
        ):
            raise
        ds = load_dataset(path, layout="csv", scale=ScoreScale(0.0, 1.0, True, "score (as given)"))
    out, bad = [], []
    for k, s in enumerate(ds.samples[: max(1, int(limit))]):
        try:
            arr = read_image(s.path)
        except ImageError as exc:
            bad.append(str(exc))
            continue
        meta = {
            DATASET_KEY: {
                "mos": float(s.mos),
                "path": str(s.path),
                "dataset": ds.name,
                "units": ds.scale.name,
                "index": k,
            }
        }
        out.append((arr, {"name": s.path.name, "metadata": meta, "visible": k == 0}, "image"))
    if len(ds) > limit:
        _warn(
            f"{ds.name}: opened the first {limit} of {len(ds)} images (plugin setting "
            "'reader_max_images'; the data-set widget has its own limit)."
        )
    if bad:
        _warn(f"{len(bad)} images could not be read, e.g. {bad[0]}")
    return out


def _warn(msg: str) -> None:
    try:
        from napari.utils.notifications import show_warning

        show_warning(msg)
    except ImportError:  # pragma: no cover
        import warnings

        warnings.warn(msg, stacklevel=2)
