"""npe2 writers for the quality-map layers (File > Save Selected Layers).

* one map (an Image layer made by the score widget: quality, class, confidence or scale map):
  ``.csv`` (one row per cell, with its extent in image pixels and its value) or ``.map.tif``
  (the map as float32/int32 with its geometry and units as JSON in the TIFF description);
* several maps of one image: one ``.csv`` with a value column per map.

Plain ``.tif`` stays with napari's own writer (an image saved as ``photo.tif`` is the image), hence
the compound ``.map.tif``. The work is :mod:`napari_pmt_iqa.export` (no torch, atomic writes);
layers that are not maps of this plugin are refused with a message that says what to do.
"""

from __future__ import annotations

from typing import Any

from .export import write_map, write_maps_csv


def write_map_layer(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: one quality map to ``path`` (.csv, .map.tif, .map.tiff)."""
    return [str(write_map(path, data, meta))]


def write_map_layers(path: str, layer_data: list[tuple]) -> list[str]:
    """npe2 multi-layer writer: several maps of one grid to one ``.csv`` (one alone: as
    :func:`write_map_layer`)."""
    if len(layer_data) == 1:
        data, meta, _ = layer_data[0]
        return write_map_layer(path, data, meta)
    return [str(write_maps_csv(path, [(d, m) for d, m, _ in layer_data]))]
