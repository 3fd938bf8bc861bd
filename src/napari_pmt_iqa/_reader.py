"""napari reader for IQA data sets, recognised by their annotation files.

napari picks readers by file name alone (``fnmatch`` against the manifest's ``filename_patterns``,
and every reader that accepts folders for every folder), so a reader that claimed ``*`` or folders
would be offered beside napari's own for every image, folder and CSV, and napari would ask which one
to use each time. The manifest therefore claims only names that are a data set's annotation file:

* LIVE-C's ``Data/AllMOS_release.mat`` (and its other ``*_release.mat`` files): this plugin is
  the only reader for them, so opening one opens the data set at once;
* BIQ2021's ``Train (Images and MOS).csv`` and ``Test (Images and MOS).csv`` (the pattern
  ``*(?mages and ???).csv`` matches them whatever the case of the name): napari's own reader claims
  every ``*.csv`` too, so napari asks which reader to use for these two files.

Ordinary images, folders and other CSV files go to napari's own reader without a question. Data-set
folders and generic ``image,mos`` CSVs open in the data-set widget ("Score an IQA data set").

:func:`get_reader` decides from file names and a CSV header only (no torch, cheap) and declines
anything that is not a data set. The reader opens at most ``reader_max_images`` images (plugin
setting, default 24), one Image layer each, with the MOS, path and data set name in the layer's
metadata.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path

from ._settings import get_settings

DATASET_KEY = "pmt_iqa_dataset"
_IMAGE_COLS = {"image", "image name", "file", "filename", "path"}
_SCORE_COLS = {"mos", "score", "dmos", "rating"}
_BIQ_CSV = re.compile(r"(train|test) \(images and mos\)\.csv", re.IGNORECASE)
_LIVEC_MATS = ("AllMOS_release.mat", "AllImages_release.mat")


def _is_iqa_csv(path: Path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    cols = {c.strip().lower() for c in header}
    return bool(cols & _IMAGE_COLS) and bool(cols & _SCORE_COLS)


def dataset_target(path: str | Path) -> tuple[Path, str, str | None] | None:
    """``(root, layout, part)`` of the data set ``path`` names, or None when it names none.

    Parameters
    ----------
    path
        A LIVE-C annotation file (``.../Data/AllMOS_release.mat``), a BIQ2021 CSV
        (``Train (Images and MOS).csv``), a CSV of ``image,mos``, or a data-set folder.

    Returns
    -------
    tuple or None
        The folder (or CSV) to load, the layout (``"livec"``, ``"biq2021"``, ``"csv"``) and the part
        to load (``"train"``, ``"test"``, ``"all"``; None for the generic layout).
    """
    p = Path(path)
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".mat":
            data = p.parent
            ok = data.name == "Data" and all((data / m).is_file() for m in _LIVEC_MATS)
            return (
                (data.parent, "livec", "all") if ok and (data.parent / "Images").is_dir() else None
            )
        if suffix != ".csv":
            return None
        m = _BIQ_CSV.fullmatch(p.name)
        if m and (p.parent / "Images").is_dir():
            return p.parent, "biq2021", m.group(1).lower()
        return (p, "csv", None) if _is_iqa_csv(p) else None
    if not p.is_dir():
        return None
    if (p / "Data" / "AllMOS_release.mat").exists() or (
        p / "ChallengeDB_release" / "Data"
    ).is_dir():
        return p, "livec", "all"
    if (p / "Train (Images and MOS).csv").exists():
        return p, "biq2021", "all"
    csvs = list(p.glob("*.csv"))
    if len(csvs) == 1 and _is_iqa_csv(csvs[0]):
        return p, "csv", None
    return None


def detect(path: str | Path) -> str | None:
    """``"livec"``, ``"biq2021"``, ``"csv"`` or None (not a data set), from names and headers only."""
    target = dataset_target(path)
    return None if target is None else target[1]


def get_reader(path: str | list[str]) -> Callable | None:
    """npe2 reader hook: a reader function for an IQA data set, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    target = dataset_target(path)
    if target is None:
        return None
    root, layout, part = target

    def reader(p) -> list[tuple]:
        return read_dataset(root, layout, part=part)

    return reader


def read_dataset(
    path: str | Path, layout: str = "auto", limit: int | None = None, part: str | None = None
) -> list[tuple]:
    """Layer data of the first ``limit`` images of a data set (default: the plugin setting).

    ``part`` selects BIQ2021's ``"train"``/``"test"`` part (default: all of it). Images that cannot
    be read are skipped with a warning.
    """
    from ._torch_guard import guard_triton

    guard_triton()
    from .data.datasets import DatasetError, detect_layout, load_dataset
    from .imaging import ImageError, read_image
    from .score_scale import ScoreScale

    limit = get_settings().reader_max_images if limit is None else limit
    kwargs = {"part": part or "all"} if layout == "biq2021" else {}
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
