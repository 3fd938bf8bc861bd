"""What the score widget scores of a layer: intensity rule, pyramid level, all planes or one.

:class:`ScoreOptions` is the widget's "what to score" block; :meth:`ScoreOptions.request` turns a
layer and the viewer's position into a :class:`ScoreRequest` that the worker (``score_job``)
carries out. No torch at import.

* **Intensities**: *automatic* (default) is the rule of :mod:`napari_pmt_iqa.imaging` (8-bit data
  / 255, floats in [0, 1] as they are, anything else from its 0.1th to 99.9th percentile), computed
  once for the whole stack; *contrast limits* scores what the viewer shows: the layer's contrast
  limits map to black and white.
* **Level** (pyramid layers): *auto* is the finest level with at most
  :data:`~napari_pmt_iqa.multiscale.AUTO_LEVEL_MEGAPIXELS` megapixels per plane; the maps are laid
  over the full-resolution image whatever the level.
* **Planes** (stacks): all planes (default) or only the one the viewer shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QVBoxLayout, QWidget

from ..multiscale import AUTO_LEVEL_MEGAPIXELS, level_factors, pick_level

AUTOMATIC = "automatic (by data type)"
CONTRAST = "the layer's contrast limits"
ALL_PLANES = "all planes"
CURRENT_PLANE = "current plane only"

RULE_TIP = (
    "How pixel values become brightness for the model. Automatic (default): 8-bit data is divided "
    "by 255, floats in 0-1 are used as they are, anything else (e.g. 16-bit microscopy) is "
    "stretched from its 0.1th to 99.9th percentile, once for the whole stack, so that darker "
    "planes score as darker. Contrast limits: score what you see (the layer's contrast limits "
    "become black and white)."
)


@dataclass
class ScoreRequest:
    """One scoring job: the data (a level of the layer, lazy or not), how to read it, and where
    the result lies (pyramid factors, the plane of a stack or None for all planes)."""

    data: Any
    rgb: bool
    rule: Any = None  # an IntensityRule, or None: the automatic rule of the whole data
    level: int = 0
    factors: tuple[float, float] = (1.0, 1.0)
    plane_index: tuple[int, ...] | None = None
    lead_shape: tuple[int, ...] = ()


class ScoreOptions(QWidget):
    """Intensity rule, pyramid level and planes of the score widget (see the module docstring)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        outer.addLayout(form)
        self.rule_combo = QComboBox()
        self.rule_combo.addItems([AUTOMATIC, CONTRAST])
        self.rule_combo.setToolTip(RULE_TIP)
        self.level_combo = QComboBox()
        self.level_combo.setToolTip(
            "Pyramid level to score. Auto: the finest level with at most "
            f"{AUTO_LEVEL_MEGAPIXELS:g} megapixels per plane (a few seconds on a CPU); the maps "
            "are laid over the full-resolution image."
        )
        self.planes_combo = QComboBox()
        self.planes_combo.addItems([ALL_PLANES, CURRENT_PLANE])
        self.planes_combo.setToolTip("Score every plane of the stack, or only the one shown")
        self.rule_label = QLabel()
        self.rule_label.setWordWrap(True)
        self.rule_label.setToolTip(RULE_TIP)
        form.addRow("Intensities", self.rule_combo)
        form.addRow("Level", self.level_combo)
        form.addRow("Planes", self.planes_combo)
        # below the form, not in a row of it: a wrapped label in a QFormLayout row does not get the
        # height its lines need (three lines were cut at the top and bottom)
        outer.addWidget(self.rule_label)
        self._form = form
        self._levels: list = []
        self.set_layer(None)

    def _show_row(self, field: QWidget, visible: bool) -> None:
        field.setVisible(visible)
        label = self._form.labelForField(field)
        if label is not None:
            label.setVisible(visible)

    def set_layer(self, layer: Any) -> None:
        """Offer the choices that apply to ``layer`` (levels of a pyramid, planes of a stack)."""
        multiscale = bool(getattr(layer, "multiscale", False))
        keep = self.level_combo.currentIndex()
        self.level_combo.clear()
        self._levels = []
        if multiscale:
            shapes = [tuple(int(v) for v in d.shape) for d in layer.data]
            rgb = bool(layer.rgb)
            auto = pick_level(shapes, rgb=rgb)
            self.level_combo.addItem(f"auto: level {auto} (finest <= {AUTO_LEVEL_MEGAPIXELS:g} MP)")
            self._levels.append(None)
            for k, s in enumerate(shapes):
                h, w = (s[-3], s[-2]) if rgb else (s[-2], s[-1])
                self.level_combo.addItem(f"level {k}: {h} x {w}")
                self._levels.append(k)
            self.level_combo.setCurrentIndex(keep if 0 <= keep < len(self._levels) else 0)
        self._show_row(self.level_combo, multiscale)
        self._show_row(self.planes_combo, layer is not None and _lead_ndim(layer) > 0)

    def set_level(self, level: int | None) -> None:
        """Choose a pyramid level (None: auto)."""
        self.level_combo.setCurrentIndex(self._levels.index(level))

    def request(self, layer: Any, viewer: Any) -> ScoreRequest:
        """What to score of ``layer`` with the current choices and the viewer's position."""
        from ..imaging import IntensityRule

        rgb = bool(layer.rgb)
        level, factors = 0, (1.0, 1.0)
        data = layer.data
        if getattr(layer, "multiscale", False):
            shapes = [tuple(int(v) for v in d.shape) for d in layer.data]
            chosen = self._levels[self.level_combo.currentIndex()] if self._levels else None
            level = pick_level(shapes, rgb=rgb) if chosen is None else int(chosen)
            factors = level_factors(shapes, level, rgb=rgb)
            data = layer.data[level]
        rule = None
        if self.rule_combo.currentText() == CONTRAST:
            lo, hi = (float(v) for v in layer.contrast_limits)
            if hi <= lo:
                hi = lo + 1.0
            rule = IntensityRule(lo, hi, "contrast limits")
        lead = tuple(int(v) for v in np.shape(data)[: _lead_ndim(layer)])
        plane = None
        if lead and self.planes_combo.currentText() == CURRENT_PLANE:
            coords = np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)
            plane = tuple(int(np.clip(round(coords[k]), 0, lead[k] - 1)) for k in range(len(lead)))
        return ScoreRequest(data, rgb, rule, level, factors, plane, lead)

    def show_rule(self, rule: Any, level: int | None = None) -> None:
        """Say which intensity rule (and level) the last score used."""
        text = f"Intensities: {rule.describe()}" if rule is not None else ""
        if level:
            text += f"; scored on pyramid level {level}"
        self.rule_label.setText(text)


def _lead_ndim(layer: Any) -> int:
    return int(layer.ndim) - 2


def plane_placement(
    scale: tuple, translate: tuple, plane_index: tuple[int, ...]
) -> tuple[tuple, tuple]:
    """``(scale, translate)`` of overlays that cover only the plane ``plane_index`` of a stack:
    the stack axes of the translate move to that plane."""
    s = [float(v) for v in scale]
    t = [float(v) for v in translate]
    for k, i in enumerate(plane_index):
        t[k] += s[k] * i
    return tuple(s), tuple(t)
