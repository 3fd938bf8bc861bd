"""Turn scoring results into napari layer data: names, geometry, colormaps, contrast limits.

Qt-free (it imports napari's colormap classes only inside functions), so it is unit-tested without a
display. The widgets call :func:`overlay_specs` and add each :class:`OverlaySpec` with
:meth:`OverlaySpec.add_to`.

Geometry
--------
:class:`~napari_pmt_iqa.scoring.MapGeometry` gives, in the image's pixel units, the size of a map
cell (``scale`` = 32 px) and the position of the *top-left corner* of cell (0, 0)
(``translate``, pixel-corner convention: pixel ``k`` spans ``[k, k + 1)``). napari puts pixel
*centres* at integer data coordinates (pixel ``k`` spans ``[k - 0.5, k + 0.5]``), and draws a map
cell ``i`` over ``translate + scale * (i -/+ 0.5)``. The centre of cell (0, 0) in the image's data
coordinates is therefore ``translate + scale / 2 - 0.5``; :func:`map_transform` adds that and then
applies the image layer's own ``scale`` and ``translate``, so a cell lies exactly over the 32 x 32
pixels it describes, whatever the image layer's scale and offset. The maps are never upsampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .names import shown_name

#: Red (bad) to green (good), a colour-blind-tolerant RdYlGn-like ramp.
QUALITY_COLORS = ("#a50026", "#f46d43", "#fee08b", "#a6d96a", "#1a9850")
OVERLAY_KEY = "pmt_iqa_overlay"
METADATA_KEY = "pmt_iqa"


class LayerError(ValueError):
    """A layer that cannot be scored, with a message that says why and what to do."""


# --------------------------------------------------------------------------- input layers
def check_image_layer(layer: Any) -> None:
    """Raise :class:`LayerError` unless ``layer`` is a napari Image layer with numeric data.

    Parameters
    ----------
    layer
        Whatever the user picked.
    """
    from napari.layers import Image

    if layer is None:
        raise LayerError(
            "No image layer to score: open an image (File > Open, or File > Open Sample) and pick "
            "it in the widget's Image list."
        )
    if not isinstance(layer, Image):
        kind = type(getattr(layer, "__wrapped__", layer)).__name__
        raise LayerError(
            f"'{layer.name}' is a {kind} layer, not an image: quality is scored on Image layers. "
            "Pick an Image layer in the widget's Image list."
        )
    if is_plugin_overlay(layer):
        raise LayerError(overlay_message(layer, "scored"))
    note = misread_rgb_message(layer)
    if note:
        raise LayerError(note)


def is_plugin_overlay(layer: Any) -> bool:
    """Whether ``layer`` is a map layer made by this plugin (quality, class, confidence, scale maps).

    The one test of "is this layer one of our overlays?": the score, rating and fine-tune widgets
    call it to keep maps out of what they score, rate and train on. It reads the layer's metadata
    only, so it works on napari's ``PublicOnlyProxy`` of a layer (what widgets see) and on any
    layer type.
    """
    meta = getattr(layer, "metadata", None)
    try:
        return bool(meta) and OVERLAY_KEY in meta
    except TypeError:  # metadata that is not a mapping
        return False


def overlay_message(layer: Any, verb: str = "rated") -> str:
    """What to tell a user who picked one of this plugin's maps to be ``verb`` (scored, rated)."""
    info = layer.metadata.get(OVERLAY_KEY) or {}
    source = info.get("source") if isinstance(info, dict) else None
    which = f" '{shown_name(str(source))}'" if source else ""
    # what to do first: napari's notification and a narrow dock cut long messages
    return (
        f"A quality map made by PMT-IQA is not an image: it cannot be {verb}. Select its "
        f"image{which} in the layer list (the map: '{shown_name(layer.name)}')."
    )


def layer_image_data(layer: Any) -> np.ndarray:
    """The full-resolution data of an Image layer as a numpy array (level 0 of a pyramid)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return np.asarray(data)


def spatial_ndim(layer: Any) -> int:
    """Number of non-channel axes of an Image layer (2 for a single plane)."""
    return int(layer.ndim)


# --------------------------------------------------------------------------- geometry
def map_transform(
    geometry: Any, layer_scale: Sequence[float], layer_translate: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """World ``scale`` and ``translate`` of a map layer over an image layer.

    Parameters
    ----------
    geometry
        A :class:`~napari_pmt_iqa.scoring.MapGeometry` (cell size and top-left corner of the first
        cell in image pixels, pixel-corner convention; see the module docstring).
    layer_scale, layer_translate
        The image layer's ``scale`` and ``translate`` (all of its non-channel axes). Leading (stack)
        axes are passed through unchanged.

    Returns
    -------
    scale, translate
        Tuples with one entry per image-layer axis, for the map layer.
    """
    ls = [float(v) for v in layer_scale]
    lt = [float(v) for v in layer_translate]
    gs = [float(v) for v in geometry.scale]
    gt = [float(v) for v in geometry.translate]
    scale = ls[:-2] + [gs[k] * ls[-2 + k] for k in range(2)]
    centre = [gt[k] + gs[k] / 2.0 - 0.5 for k in range(2)]
    translate = lt[:-2] + [lt[-2 + k] + ls[-2 + k] * centre[k] for k in range(2)]
    return tuple(scale), tuple(translate)


def cell_extent(geometry: Any, i: int, j: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Image-pixel extent ``((y0, y1), (x0, x1))`` of map cell ``(i, j)`` in napari's data coordinates."""
    (sy, sx), (ty, tx) = map_transform(geometry, (1.0, 1.0), (0.0, 0.0))
    return ((ty + sy * (i - 0.5), ty + sy * (i + 0.5)), (tx + sx * (j - 0.5), tx + sx * (j + 0.5)))


# --------------------------------------------------------------------------- text
def direction_word(higher_is_better: bool) -> str:
    return "higher is better" if higher_is_better else "lower is better"


def score_meaning(result: Any) -> str:
    """One line that says what a score means: value, units, range and direction."""
    lo, hi = result.score_range
    return (
        f"{result.score:.2f} {result.units} (range {lo:g} to {hi:g}, "
        f"{direction_word(result.higher_is_better)})"
    )


def defect_text(result: Any) -> str:
    """A line on the defect head's levels of a single-plane result, starting with a newline (""
    without a head, and for stacks, whose planes each carry their own in the layer metadata)."""
    worst = getattr(result, "defect_worst", None)
    if not worst:
        return ""
    parts = ", ".join(
        f"{kind} {worst[kind]:.1f} (mean {result.defect_levels[kind]:.1f})" for kind in worst
    )
    return f"\nDefect levels (0 none - 5 severe), worst crop: {parts}."


def looks_like_misread_rgb(data_shape: Sequence[int], rgb: bool) -> bool:
    """Whether an image of this shape, shown with ``rgb``, is a colour image napari read as a stack.

    napari shows a ``(H, W, 3)`` or ``(H, W, 4)`` array as colour only when both sides are large
    enough (30 pixels in napari 0.9); a smaller one becomes ``H`` planes of ``W x 3`` pixels. Planes
    3 or 4 pixels wide can never be scored, so such a layer can only mean a small colour image.
    """
    return not rgb and len(data_shape) == 3 and int(data_shape[-1]) in (3, 4)


def misread_rgb_message(layer: Any) -> str:
    """What to tell the user about a small colour image napari shows as a stack ("" otherwise)."""
    shape = (
        tuple(int(v) for v in np.shape(layer.data))
        if not getattr(layer, "multiscale", False)
        else ()
    )
    if not looks_like_misread_rgb(shape, bool(getattr(layer, "rgb", False))):
        return ""
    h, w, c = shape
    kind = "RGB" if c == 3 else "RGBA"
    return (
        f"'{layer.name}' looks like a {h} x {w} {kind} image that napari shows as {h} planes of "
        f"{w} x {c} pixels (napari reads colour images under 30 pixels a side as stacks, and "
        f"planes {c} pixels wide cannot be scored). Score the file with the 'Score a folder of "
        f"images' widget or 'pmt-iqa score FILE', which read it as colour, or open it as colour "
        f"from napari's console: viewer.add_image(viewer.layers['{layer.name}'].data, rgb=True). (A 224-pixel "
        "crop sees so small an image enlarged many times.)"
    )


def class_labels(edges: Sequence[float]) -> list[str]:
    """``"[lo, hi)"`` labels of the quality classes from their edges in score units."""
    return [f"{edges[k]:.3g}-{edges[k + 1]:.3g}" for k in range(len(edges) - 1)]


def result_metadata(result: Any, model_name: str = "", device: str = "") -> dict:
    """A JSON-serialisable summary for ``layer.metadata`` (``result.to_dict()`` and, for stacks, all planes)."""
    if hasattr(result, "planes"):
        d = {
            "score": float(result.score),
            "scores": np.asarray(result.scores, dtype=float).tolist(),
            "stack_shape": list(result.shape),
            "units": result.units,
            "score_range": [float(v) for v in result.score_range],
            "higher_is_better": bool(result.higher_is_better),
            "planes": [p.to_dict() for p in result.planes],
        }
    else:
        d = result.to_dict()
    d["model"] = str(model_name)
    d["device"] = str(device)
    return d


# --------------------------------------------------------------------------- colormaps
def quality_colormap(higher_is_better: bool = True):
    """napari Colormap from red (worse) to green (better), following the score's direction."""
    from napari.utils.colormaps import Colormap

    colors = QUALITY_COLORS if higher_is_better else QUALITY_COLORS[::-1]
    name = "pmt-iqa quality" if higher_is_better else "pmt-iqa quality (lower better)"
    return Colormap(list(colors), name=name)


def class_colors(num_classes: int, higher_is_better: bool = True) -> np.ndarray:
    """RGBA colours (``num_classes`` x 4) of the quality classes, from the lowest score bin (class
    1) to the highest, on the quality colormap (red is worse, green better)."""
    cmap = quality_colormap(higher_is_better)
    t = (np.arange(num_classes) + 0.5) / num_classes
    return np.asarray(cmap.map(t), np.float32)


def class_colormap(num_classes: int, higher_is_better: bool = True):
    """Stepwise napari Colormap of the class map: value ``k`` (class ``k``, 1 to ``num_classes``)
    in its class colour, with contrast limits ``(0.5, num_classes + 0.5)``
    (:func:`class_contrast_limits`)."""
    from napari.utils.colormaps import Colormap

    name = f"pmt-iqa {num_classes} classes" + ("" if higher_is_better else " (lower better)")
    colors = class_colors(num_classes, higher_is_better)
    if num_classes == 1:  # vispy needs two colours: one class is one colour twice
        colors = np.concatenate([colors, colors])
    return Colormap(
        colors,
        controls=np.linspace(0.0, 1.0, len(colors) + 1),
        interpolation="zero",
        name=name,
    )


def class_contrast_limits(num_classes: int) -> tuple[float, float]:
    """Contrast limits that put class ``k`` (1 to ``num_classes``) in the middle of its colour."""
    return (0.5, num_classes + 0.5)


# --------------------------------------------------------------------------- overlays
@dataclass
class OverlaySpec:
    """One overlay layer to add (``kind``: ``"image"``, the kind of every map)."""

    key: str
    kind: str
    data: np.ndarray
    kwargs: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.kwargs["name"]

    def add_to(self, viewer: Any):
        """Add this overlay to ``viewer`` and return the new layer."""
        return viewer.add_image(self.data, **self.kwargs)

    def fits(self, layer: Any) -> bool:
        """Whether :meth:`update` can put this overlay into the existing ``layer``.

        It can when the layer is of the same kind (an Image layer; not a Labels class map of an
        older version of the plugin) with as many dimensions; the shape may differ (the image
        was replaced by one of another size).
        """
        kind = type(getattr(layer, "__wrapped__", layer)).__name__.lower()
        return kind == self.kind and int(layer.ndim) == self.data.ndim

    #: Layer properties :meth:`update` sets (when they differ); ``visible``, ``opacity`` and
    #: ``blending`` stay as the user left them.
    UPDATED = ("scale", "translate", "affine", "contrast_limits", "name", "colormap")

    def update(self, layer: Any) -> Any:
        """Put this overlay's data, geometry, colours and metadata into the existing ``layer``.

        Scoring an image again updates its overlays in place instead of removing and adding
        layers: removing a layer makes napari run a full garbage collection (about 0.2-0.7 s with
        torch loaded), adding one builds its visual and its controls (about 0.1 s each). Only the
        properties that differ are set (each setter makes napari recompute extents or controls).
        """
        layer.data = self.data
        want = dict(self.kwargs)
        want.setdefault("affine", np.eye(self.data.ndim + 1))
        for key in self.UPDATED:
            if key in want and not _same_value(getattr(layer, key), want[key]):
                setattr(layer, key, want[key])
        layer.metadata = {**layer.metadata, **want.get("metadata", {})}
        return layer


def _same_value(current: Any, new: Any) -> bool:
    """Whether a layer property already has the value :meth:`OverlaySpec.update` would set."""
    if isinstance(new, str) or isinstance(current, str):
        return getattr(current, "name", current) == getattr(new, "name", new)
    if hasattr(new, "colors"):  # an image colormap
        old = np.asarray(getattr(current, "colors", []), dtype=float)
        return (
            getattr(current, "name", None) == new.name
            and old.shape == np.shape(new.colors)
            and bool(np.allclose(old, new.colors))
        )
    if hasattr(current, "affine_matrix"):
        current = current.affine_matrix
    if hasattr(new, "affine_matrix"):
        new = new.affine_matrix
    try:
        a, b = np.asarray(current, dtype=float), np.asarray(new, dtype=float)
    except (TypeError, ValueError):
        return False
    return a.shape == b.shape and bool(np.allclose(a, b))


def _stack(result: Any, attr: str) -> np.ndarray:
    """The map ``attr`` of a ScoreResult, or of every plane of a StackResult, stacked."""
    if hasattr(result, "planes"):
        arrs = [getattr(p.maps, attr) for p in result.planes]
        return np.stack(arrs).reshape(tuple(result.shape) + arrs[0].shape)
    return getattr(result.maps, attr)


def overlay_specs(
    result: Any,
    image_name: str,
    layer_scale: Sequence[float],
    layer_translate: Sequence[float],
    affine: Any = None,
    visible: Sequence[str] = ("quality",),
) -> list[OverlaySpec]:
    """Layer data of every map of a scoring result, registered to the image layer.

    Parameters
    ----------
    result
        A ScoreResult or StackResult computed with ``maps=True``.
    image_name
        The image layer's name (used in the overlay names and their metadata).
    layer_scale, layer_translate
        The image layer's ``scale`` and ``translate``.
    affine
        The image layer's extra ``affine`` (passed through so the overlays follow it).
    visible
        Keys of the overlays shown at first (``quality``, ``class``, ``confidence``,
        ``scale0``..``scale3``, ``defect_<family>``).

    Returns
    -------
    list of OverlaySpec
        Per task: ``quality`` (regression head), ``class`` (classification head: the class
        numbered from 1, in steps of colour) and ``confidence`` (its probability); per scale:
        ``scale0`` to ``scale3`` (contribution of each multi-scale tap); for a model with a defect
        head, ``defect_blur``, ``defect_noise``, ... (its estimated level of each defect family).
        All are Image layers: a
        Labels layer would cost napari about 20 ms more to add (its painting tools' visuals), a
        stall of the viewer for tools a map has no use for.
    """
    first = result.planes[0] if hasattr(result, "planes") else result
    if first.maps is None:
        raise ValueError("The result has no maps; score with maps=True.")
    geom = first.maps.geometry
    if hasattr(result, "planes"):
        for p in result.planes[1:]:
            if tuple(p.maps.geometry.scale) != tuple(geom.scale) or tuple(
                p.maps.geometry.translate
            ) != tuple(geom.translate):
                raise ValueError("The planes of the stack have different map geometries.")
    scale, translate = map_transform(geom, layer_scale, layer_translate)
    lo, hi = (float(v) for v in first.score_range)
    hib = bool(first.higher_is_better)
    units = first.units
    n_cls = len(first.class_probs)
    base: dict[str, Any] = {"scale": scale, "translate": translate}
    if affine is not None:
        base["affine"] = affine

    def meta(key: str, what: str, value_units: str) -> dict:
        # what a map writer (``napari_pmt_iqa.export``) needs: the cell geometry in image pixels
        # (pixel-corner convention, as MapGeometry) and the units of the values
        info = {
            "source": image_name,
            "key": key,
            "what": what,
            "units": value_units,
            "cell_size": [float(v) for v in geom.scale],
            "origin": [float(v) for v in geom.translate],
            "padding": [int(v) for v in first.maps.padding],
        }
        if key == "class":
            info["classes"] = class_table(result)
        return {"metadata": {OVERLAY_KEY: info}}

    specs = [
        OverlaySpec(
            "quality",
            "image",
            _stack(result, "quality"),
            {
                **base,
                "name": f"quality map, {units}, {direction_word(hib)} [{image_name}]",
                "colormap": quality_colormap(hib),
                "contrast_limits": (lo, hi),
                "opacity": 0.6,
                "blending": "translucent",
                **meta(
                    "quality",
                    "regression head: score of the 224 px crop centred on each 32 px cell",
                    units,
                ),
            },
        ),
        OverlaySpec(
            "class",
            "image",
            (_stack(result, "class_map") + 1).astype(np.int32),
            {
                **base,
                "name": f"class map, classes 1-{n_cls}, {direction_word(hib)} [{image_name}]",
                "colormap": class_colormap(n_cls, hib),
                "contrast_limits": class_contrast_limits(n_cls),
                "interpolation3d": "nearest",  # classes are not to be blended between cells
                "opacity": 0.6,
                "blending": "translucent",
                **meta(
                    "class",
                    "classification head: most likely quality class of each crop, numbered from 1 "
                    "(lowest scores)",
                    f"quality class 1-{n_cls}",
                ),
            },
        ),
        OverlaySpec(
            "confidence",
            "image",
            _stack(result, "confidence"),
            {
                **base,
                "name": f"class confidence, probability 0-1 [{image_name}]",
                "colormap": "gray",
                "contrast_limits": (0.0, 1.0),
                "opacity": 0.6,
                "blending": "translucent",
                **meta(
                    "confidence", "probability of the most likely class of each crop", "probability"
                ),
            },
        ),
    ]
    scale_maps = _stack(result, "scale_maps")  # (*lead, 4, ny, nx)
    lim = float(np.nanmax(np.abs(scale_maps))) if scale_maps.size else 0.0
    lim = lim if lim > 0 else max(1e-6, (hi - lo) / 100.0)
    names = first.maps.tap_names
    for t in range(scale_maps.shape[-3]):
        specs.append(
            OverlaySpec(
                f"scale{t}",
                "image",
                np.ascontiguousarray(scale_maps[..., t, :, :]),
                {
                    **base,
                    "name": f"scale map {t + 1}/4 {names[t]}, score change in {units} [{image_name}]",
                    "colormap": "PiYG",
                    "contrast_limits": (-lim, lim),
                    "opacity": 0.6,
                    "blending": "translucent",
                    **meta(
                        f"scale{t}",
                        "crop score minus the score with this tap replaced by its image mean",
                        f"score change in {units}",
                    ),
                },
            )
        )
    if first.maps.defects is not None:  # a model with a defect head: one map per defect family
        defects = _stack(result, "defects")  # (*lead, K, ny, nx)
        for k, kind in enumerate(first.maps.defect_kinds):
            specs.append(
                OverlaySpec(
                    f"defect_{kind}",
                    "image",
                    np.ascontiguousarray(defects[..., k, :, :]),
                    {
                        **base,
                        "name": f"defect map: {kind}, level 0-5 [{image_name}]",
                        "colormap": "magma",
                        "contrast_limits": (0.0, 5.0),
                        "opacity": 0.6,
                        "blending": "translucent",
                        **meta(
                            f"defect_{kind}",
                            f"defect head: estimated {kind} level of each crop (0 none, 1 mild .. "
                            "5 severe, the levels of the synthetic degradations), whatever its "
                            "content",
                            "degradation level 0-5",
                        ),
                    },
                )
            )
    for s in specs:
        s.kwargs["visible"] = s.key in visible
    return specs


def class_table(result: Any) -> dict[str, list]:
    """What each value of the class map means, kept in its layer metadata: one entry per class
    (``index`` = class number, from 1) with its score range and its mean probability over the
    image (all planes of a stack)."""
    first = result.planes[0] if hasattr(result, "planes") else result
    probs = (
        np.mean([p.class_probs for p in result.planes], axis=0)
        if hasattr(result, "planes")
        else np.asarray(result.class_probs)
    )
    edges = [float(e) for e in first.class_edges]
    n = len(edges) - 1
    labels = class_labels(edges)
    return {
        "index": list(range(1, n + 1)),
        "class": [f"{k + 1} of {n}" for k in range(n)],
        "score range": [f"{labels[k]} {first.units}" for k in range(n)],
        "score low": edges[:-1],
        "score high": edges[1:],
        "image probability": [float(p) for p in probs],
    }


def add_keeping_selection(viewer: Any, spec: OverlaySpec) -> Any:
    """Add the overlay of ``spec`` without touching the layer selection; the new layer.

    napari makes a new layer the only selected one; putting the user's selection back after
    that would switch napari's layer controls twice and redraw the layer list for every map.
    The selection's events are held while the layer goes in and the selection is restored, so
    nobody hears of a change that is undone at once.
    """
    selection = viewer.layers.selection
    before, active = list(selection), selection.active
    with selection.events.blocker_all():
        layer = spec.add_to(viewer)
        before = [lay for lay in before if lay in viewer.layers]
        selection.clear()
        if active is not None and active in viewer.layers:
            selection.active = active
        selection.update(before)
    return layer


def is_overlay_of(layer: Any, image_name: str) -> bool:
    """Whether ``layer`` is an overlay this plugin made for the image layer ``image_name``."""
    if not is_plugin_overlay(layer):
        return False
    info = layer.metadata[OVERLAY_KEY]
    return isinstance(info, dict) and info.get("source") == image_name


def stack_axis_info(result: Any) -> tuple[int, ...]:
    """The leading shape of a stack result (``()`` for a single image)."""
    return tuple(result.shape) if hasattr(result, "planes") else ()
