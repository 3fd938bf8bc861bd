"""Results out of the viewer: CSV tables of scores and quality-map files (Qt-free, no torch).

* :func:`score_rows` / :func:`write_scores_csv`: one scoring result as one CSV in long form, a
  row per image (``kind = image``), per plane of a stack (``plane``) and per crop (``crop``, with
  its position, size, score and most likely class); :func:`read_scores_csv` reads it back.
* :func:`write_table_csv`: any table of rows (the data-set widget's predictions and MOS, the
  folder triage's table, ``pmt-iqa score``'s and ``pmt-iqa eval``'s CSVs, the rating widget's
  ratings): the one CSV writer of the package (:func:`table_csv_text` gives the text).
* :func:`write_map`: a quality-map layer (its data and the ``pmt_iqa_overlay`` metadata the score
  widget gives it) as a CSV of cells or a float32 TIFF whose description holds the geometry and
  units as JSON; :func:`write_maps_csv` writes several maps of one grid as one CSV, a column each.
  These are what the plugin's npe2 writer (``_writer.py``) calls for File > Save Selected Layers.

Every file is written atomically (:mod:`napari_pmt_iqa.atomic`): a reader finds the old file or the
complete new one, and a full disk raises :class:`~napari_pmt_iqa.atomic.DiskFullError` with the
previous file intact.

Conventions: quality classes are numbered from 1, the worst, as napari shows them (the score
widget's "class 6 of 10", the class map's values, the folder triage's table and every CSV's
``quality_class``; the Python API's ``ScoreResult.predicted_class`` counts from 0), with their
range in score units beside them (``class_low``, ``class_high``); positions are image pixels of the
top-left corner (``y``, ``x``; pixel ``p`` spans ``[p, p + 1)``), crop ``size`` in the same pixels.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_bytes, atomic_write_text

#: Columns of :func:`write_scores_csv`.
#: Defect-level columns (the families of ``training.defects.DEFECT_FAMILIES``; empty for a model
#: without a defect head). A crop row holds the crop's level, an image or plane row the level of
#: its worst crop (the mean over the crops is in the layer metadata).
DEFECT_COLUMNS = ("defect_blur", "defect_noise", "defect_compression")

SCORE_FIELDS = (
    "source",
    "kind",
    "plane",
    "plane_index",
    "row",
    "col",
    "y",
    "x",
    "size",
    "score",
    "units",
    "score_low",
    "score_high",
    "higher_is_better",
    "quality_class",
    "class_low",
    "class_high",
    "probability",
    *DEFECT_COLUMNS,
    "model",
)

#: Columns of a map CSV (:func:`write_map`); the value column is named by the map's key.
MAP_FIELDS = ("plane", "plane_index", "row", "col", "y0", "x0", "y1", "x1", "on_crop_grid")

#: Metadata key of the map layers the score widget adds (``_widgets.overlays.OVERLAY_KEY``).
OVERLAY_KEY = "pmt_iqa_overlay"


class ExportError(ValueError):
    """Something that cannot be exported, with a message that says why and what to do."""


# --------------------------------------------------------------------------- tables
def table_csv_text(fields: Sequence[str], rows: Iterable[dict]) -> str:
    """``rows`` (dicts; missing keys are empty cells) as CSV text with columns ``fields``."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(r.get(k)) for k in fields})
    return buf.getvalue()


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else repr(float(v))
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def write_table_csv(path: str | os.PathLike, fields: Sequence[str], rows: Iterable[dict]) -> Path:
    """Write ``rows`` (dicts; missing keys are empty cells) as CSV with columns ``fields``.

    Floats keep their full precision (``repr``), NaN is an empty cell. Atomic.
    """
    path = Path(path)
    atomic_write_text(path, table_csv_text(fields, rows))
    return path


def _planes(result: Any) -> tuple[list, list[tuple[int, ...]]]:
    if hasattr(result, "planes"):
        shape = tuple(result.shape)
        return list(result.planes), [tuple(int(i) for i in ix) for ix in np.ndindex(*shape)]
    return [result], [()]


def _class_of(edges: Sequence[float], k: int) -> tuple[float, float]:
    return float(edges[k]), float(edges[k + 1])


def score_rows(result: Any, source: str = "", model: str = "") -> list[dict]:
    """The rows of :func:`write_scores_csv` for a ScoreResult or StackResult.

    One ``image`` row (for a stack: the mean of its planes, its class from the mean class
    probabilities), one ``plane`` row per plane of a stack, one ``crop`` row per crop of every
    plane. A crop's class and probability come from the maps (empty when scored without maps).
    """
    planes, indices = _planes(result)
    first = planes[0]
    common = {
        "source": source,
        "units": first.units,
        "score_low": float(first.score_range[0]),
        "score_high": float(first.score_range[1]),
        "higher_is_better": bool(first.higher_is_better),
        "model": model,
    }
    edges = first.class_edges
    probs = np.mean([p.class_probs for p in planes], axis=0)
    top = int(np.argmax(probs))
    lo, hi = _class_of(edges, top)
    rows = [
        {
            **common,
            "kind": "image",
            "score": float(result.score),
            "quality_class": top + 1,
            "class_low": lo,
            "class_high": hi,
            "probability": float(probs[top]),
            **_worst_defects(planes),
        }
    ]
    stack = hasattr(result, "planes")
    for k, (p, ix) in enumerate(zip(planes, indices)):
        where = {"plane": k, "plane_index": ",".join(map(str, ix))} if stack else {}
        if stack:
            c = p.predicted_class
            lo, hi = _class_of(edges, c)
            rows.append(
                {
                    **common,
                    **where,
                    "kind": "plane",
                    "score": float(p.score),
                    "quality_class": c + 1,
                    "class_low": lo,
                    "class_high": hi,
                    "probability": float(p.class_probs[c]),
                    **_worst_defects([p]),
                }
            )
        cls = conf = None
        crop_defects: dict[str, np.ndarray] = {}
        if p.maps is not None:
            cls = p.maps.crop_grid(p.maps.class_map)
            conf = p.maps.crop_grid(p.maps.confidence)
            if p.maps.defects is not None:
                grid = p.maps.crop_grid(p.maps.defects)
                for k, kind in enumerate(p.maps.defect_kinds):
                    if f"defect_{kind}" in DEFECT_COLUMNS:
                        crop_defects[f"defect_{kind}"] = grid[k]
        ny, nx = p.crop_scores.shape
        for i in range(ny):
            for j in range(nx):
                row = {
                    **common,
                    **where,
                    "kind": "crop",
                    "row": i,
                    "col": j,
                    "y": float(p.crop_positions[i, j, 0]),
                    "x": float(p.crop_positions[i, j, 1]),
                    "size": float(p.crop_size),
                    "score": float(p.crop_scores[i, j]),
                }
                if cls is not None:
                    c = int(cls[i, j])
                    lo, hi = _class_of(edges, c)
                    row.update(
                        quality_class=c + 1,
                        class_low=lo,
                        class_high=hi,
                        probability=float(conf[i, j]),
                    )
                for col, grid in crop_defects.items():
                    row[col] = float(grid[i, j])
                rows.append(row)
    return rows


def _worst_defects(planes) -> dict[str, float]:
    """The :data:`DEFECT_COLUMNS` of an image or plane row: the worst crop's level over ``planes``."""
    out: dict[str, float] = {}
    for p in planes:
        for kind, v in (getattr(p, "defect_worst", None) or {}).items():
            col = f"defect_{kind}"
            if col in DEFECT_COLUMNS:
                out[col] = max(out.get(col, 0.0), float(v))
    return out


def write_scores_csv(
    path: str | os.PathLike, result: Any, source: str = "", model: str = ""
) -> Path:
    """Write a scoring result (image, every plane, every crop) as one CSV; see :func:`score_rows`.

    Raises
    ------
    DiskFullError
        The disk is full; the previous file at ``path`` is unchanged.
    """
    return write_table_csv(path, SCORE_FIELDS, score_rows(result, source, model))


_INT_FIELDS = {"plane", "row", "col", "quality_class"}
_FLOAT_FIELDS = {"y", "x", "size", "score", "score_low", "score_high", "class_low", "class_high"}
_FLOAT_FIELDS |= {"probability", *DEFECT_COLUMNS}


def read_scores_csv(path: str | os.PathLike) -> list[dict]:
    """Read a file of :func:`write_scores_csv` back (numbers as numbers, empty cells as None)."""
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in r.items():
                if v == "":
                    row[k] = None
                elif k in _INT_FIELDS:
                    row[k] = int(v)
                elif k in _FLOAT_FIELDS:
                    row[k] = float(v)
                elif k == "higher_is_better":
                    row[k] = v == "True"
                else:
                    row[k] = v
            out.append(row)
    return out


# --------------------------------------------------------------------------- maps
def map_info(meta: dict) -> dict:
    """The ``pmt_iqa_overlay`` metadata of a map layer (from a layer's ``metadata`` or from the
    ``meta`` dict napari gives a writer).

    Raises
    ------
    ExportError
        The layer is not a quality map made by this plugin.
    """
    md = meta.get("metadata", meta) or {}
    info = md.get(OVERLAY_KEY)
    if not info:
        name = meta.get("name", "this layer")
        raise ExportError(
            f"'{name}' is not a quality map made by napari-pmt-iqa: its writer saves the map layers "
            "of the score widget. Save images with napari's own writers (e.g. as .tif)."
        )
    if "cell_size" not in info or "origin" not in info:
        raise ExportError(
            f"The map '{meta.get('name', '')}' has no geometry in its metadata (it was made by an "
            "older version of the plugin): score the image again and save the new map."
        )
    return info


def _crop_grid_mask(shape: tuple[int, int], padding: Sequence[int]) -> np.ndarray:
    t, b, left, r = (int(v) for v in padding)
    mask = np.zeros(shape, bool)
    mask[t : shape[0] - b, left : shape[1] - r] = True
    return mask


def _cell_rows(data: np.ndarray, info: dict) -> tuple[list[dict], list[tuple]]:
    """Geometry columns of every cell of ``data`` (``(..., my, mx)``) and their array indices."""
    sy, sx = (float(v) for v in info["cell_size"])
    ty, tx = (float(v) for v in info["origin"])
    my, mx = data.shape[-2:]
    grid = _crop_grid_mask((my, mx), info.get("padding", (0, 0, 0, 0)))
    lead = data.shape[:-2]
    rows, where = [], []
    for k, ix in enumerate(np.ndindex(*lead) if lead else [()]):
        for i in range(my):
            for j in range(mx):
                row = {
                    "row": i,
                    "col": j,
                    "y0": ty + sy * i,
                    "x0": tx + sx * j,
                    "y1": ty + sy * (i + 1),
                    "x1": tx + sx * (j + 1),
                    "on_crop_grid": bool(grid[i, j]),
                }
                if lead:
                    row.update(plane=k, plane_index=",".join(str(int(v)) for v in ix))
                rows.append(row)
                where.append((*ix, i, j))
    return rows, where


def _value_name(info: dict) -> str:
    return str(info.get("key", "value"))


def map_csv_text(data: np.ndarray, info: dict) -> str:
    """CSV text of one map: a row per cell with its extent in image pixels and its value."""
    return maps_csv_text([(np.asarray(data), info)])


def maps_csv_text(maps: Sequence[tuple[np.ndarray, dict]]) -> str:
    """CSV text of several maps of one grid: a row per cell, a value column per map (by key)."""
    data0, info0 = maps[0]
    data0 = np.asarray(data0)
    for data, info in maps[1:]:
        if np.shape(data) != data0.shape or [info.get(k) for k in ("cell_size", "origin")] != [
            info0.get(k) for k in ("cell_size", "origin")
        ]:
            raise ExportError(
                "The selected maps do not share one grid (they belong to different images or "
                "scorings): save them one by one."
            )
    rows, where = _cell_rows(data0, info0)
    names = []
    for data, info in maps:
        name = _value_name(info)
        while name in names:
            name += "_"
        names.append(name)
        arr = np.asarray(data)
        for row, ix in zip(rows, where):
            v = arr[ix]
            row[name] = int(v) if np.issubdtype(arr.dtype, np.integer) else float(v)
    lead = data0.ndim > 2
    fields = [f for f in MAP_FIELDS if lead or f not in ("plane", "plane_index")] + names
    units = "; ".join(f"{n}: {info.get('units', '')}" for n, (_, info) in zip(names, maps))
    header = (
        f"# napari-pmt-iqa quality map of '{info0.get('source', '')}'; cells in image pixels "
        f"(corner convention: pixel p spans [p, p+1)); values: {units}\n"
    )
    return header + table_csv_text(fields, rows)


def read_map_csv(path: str | os.PathLike) -> list[dict]:
    """Rows of a map CSV (the comment line skipped; numbers as numbers)."""
    with open(path, newline="", encoding="utf-8") as f:
        lines = [ln for ln in f if not ln.startswith("#")]
    out = []
    for r in csv.DictReader(lines):
        row: dict[str, Any] = {}
        for k, v in r.items():
            if k == "on_crop_grid":
                row[k] = v == "True"
            elif k == "plane_index":
                row[k] = v
            elif k in ("plane", "row", "col"):
                row[k] = int(v)
            elif k == "class" and v.lstrip("-").isdigit():  # the class map: whole classes
                row[k] = int(v)
            else:  # cell corners and the map values
                row[k] = float(v)
        out.append(row)
    return out


def map_tiff_bytes(data: np.ndarray, info: dict) -> bytes:
    """A map as a TIFF (float32, or int32 for the class map) whose ImageDescription holds the
    geometry, units and provenance as JSON (``{"pmt_iqa_map": {...}}``)."""
    import tifffile

    arr = np.asarray(data)
    arr = arr.astype(np.int32 if np.issubdtype(arr.dtype, np.integer) else np.float32)
    desc = {
        "pmt_iqa_map": {
            "key": info.get("key"),
            "source": info.get("source"),
            "what": info.get("what"),
            "units": info.get("units"),
            "cell_size": [float(v) for v in info["cell_size"]],
            "origin": [float(v) for v in info["origin"]],
            "padding": [int(v) for v in info.get("padding", (0, 0, 0, 0))],
            "convention": "image pixels, pixel p spans [p, p+1); cell (i, j) spans "
            "origin + cell_size * (i, j) to origin + cell_size * (i + 1, j + 1)",
        }
    }
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, description=json.dumps(desc), metadata=None)
    return buf.getvalue()


def read_map_tiff(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """A map TIFF of :func:`map_tiff_bytes` back: ``(data, info)``."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        data = tf.asarray()
        info = json.loads(tf.pages[0].description)["pmt_iqa_map"]
    return data, info


MAP_SUFFIXES = (".csv", ".tif", ".tiff")


def write_map(path: str | os.PathLike, data: np.ndarray, meta: dict) -> Path:
    """Write one map layer (``data`` and its layer ``meta``) as ``.csv`` or ``.tif``; atomic.

    Raises
    ------
    ExportError
        Not a map of this plugin, or an extension other than .csv, .tif, .tiff.
    DiskFullError
        The disk is full; the previous file is unchanged.
    """
    path = Path(path)
    info = map_info(meta)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        atomic_write_text(path, map_csv_text(np.asarray(data), info))
    elif suffix in (".tif", ".tiff"):
        atomic_write_bytes(path, map_tiff_bytes(np.asarray(data), info))
    else:
        raise ExportError(
            f"Quality maps are saved as .csv (one row per cell) or .tif (the map with its geometry); "
            f"got '{path.name}'."
        )
    return path


def write_maps_csv(path: str | os.PathLike, layers: Sequence[tuple[np.ndarray, dict]]) -> Path:
    """Write several map layers (``(data, meta)`` pairs) of one grid as one CSV; atomic."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise ExportError(
            f"Several maps are saved together as one .csv (a column per map); got '{path.name}'. "
            "Save a single map to save it as .tif."
        )
    maps = [(np.asarray(d), map_info(m)) for d, m in layers]
    atomic_write_text(path, maps_csv_text(maps))
    return path
