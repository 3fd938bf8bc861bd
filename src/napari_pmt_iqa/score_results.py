"""What :func:`napari_pmt_iqa.scoring.score` returns: :class:`ScoreResult` for a plane (with its
:class:`QualityMaps` and their :class:`MapGeometry`), :class:`StackResult` for a stack, and the
two errors scoring raises besides bad input. No torch: plain numpy data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TAP_NAMES = ("stride 4 (fine)", "stride 8", "stride 16", "stride 32 (coarse)")


class ModelOutputError(ValueError):
    """The model produced NaN or infinite scores (corrupt weights, a diverged run, fp16 overflow)."""


class ScoringCancelled(RuntimeError):
    """Raised inside :func:`score` when its ``cancel`` callback returns True."""


@dataclass
class MapGeometry:
    """Where a map's cells lie on the original image.

    ``scale`` is the size of a cell in original pixels; ``translate`` the top-left corner of cell
    (0, 0) in original pixel coordinates where pixel ``p`` spans ``[p, p + 1)`` (pixel-corner
    convention). For napari layers use ``_widgets.overlays.map_transform``.
    """

    scale: tuple[float, float]
    translate: tuple[float, float]


@dataclass
class QualityMaps:
    """Per-task and per-scale maps of one plane (see the module docstring).

    All arrays are ``(my, mx)`` cells, ``scale_maps`` is ``(4, my, mx)``: the ``(ny, nx)`` crop
    grid extended by ``padding = (top, bottom, left, right)`` cells (copies of the edge cells) so
    that the cells cover the whole image.
    """

    quality: np.ndarray
    class_map: np.ndarray
    confidence: np.ndarray
    scale_maps: np.ndarray
    geometry: MapGeometry
    tap_names: tuple[str, ...] = TAP_NAMES
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    #: ``(K, my, mx)`` defect levels (0 none .. 5 severe) of each family of ``defect_kinds``, or
    #: None for a model without a defect head.
    defects: np.ndarray | None = None
    defect_kinds: tuple[str, ...] = ()

    def crop_grid(self, arr: np.ndarray) -> np.ndarray:
        """The part of a map (or of a stack of maps) that lies on the crop grid, ``(..., ny, nx)``."""
        t, b, left, r = self.padding
        h, w = arr.shape[-2:]
        return arr[..., t : h - b, left : w - r]


@dataclass
class ScoreResult:
    """The result of scoring one 2D plane.

    Attributes
    ----------
    score
        Mean crop score in the checkpoint's units (``units``, ``score_range``; higher is better
        unless ``higher_is_better`` is False).
    class_probs
        Mean class probabilities over the crops, ``(num_classes,)``.
    class_edges
        Bin edges of the classes in score units (``num_classes + 1``).
    crop_scores
        ``(ny, nx)`` scores of every crop, in score units.
    crop_positions
        ``(ny, nx, 2)`` top-left corner ``(y, x)`` of every crop in original pixel coordinates.
    crop_size
        Side of a crop in original pixels (224, or less where the plane was enlarged).
    maps
        :class:`QualityMaps`, when asked for.
    defect_levels, defect_worst
        For a model with a defect head: the mean over the crops, and the highest crop value, of
        its estimated level (0 none .. 5 severe) of each defect family; empty otherwise.
    """

    score: float
    class_probs: np.ndarray
    class_edges: list[float]
    crop_scores: np.ndarray
    crop_positions: np.ndarray
    crop_size: float
    units: str
    score_range: tuple[float, float]
    higher_is_better: bool
    maps: QualityMaps | None = None
    method: str = "fast"
    defect_levels: dict[str, float] = field(default_factory=dict)
    defect_worst: dict[str, float] = field(default_factory=dict)

    @property
    def n_crops(self) -> int:
        return int(self.crop_scores.size)

    @property
    def predicted_class(self) -> int:
        return int(np.argmax(self.class_probs))

    def to_dict(self) -> dict:
        """Plain-data summary (JSON-serialisable), e.g. for a layer's metadata."""
        return {
            "score": float(self.score),
            "units": self.units,
            "score_range": [float(v) for v in self.score_range],
            "higher_is_better": bool(self.higher_is_better),
            "class_probs": [float(p) for p in self.class_probs],
            "class_edges": [float(e) for e in self.class_edges],
            "predicted_class": self.predicted_class,
            "n_crops": self.n_crops,
            "crop_size": float(self.crop_size),
            "method": self.method,
            **(
                {"defect_levels": dict(self.defect_levels), "defect_worst": dict(self.defect_worst)}
                if self.defect_levels
                else {}
            ),
        }


@dataclass
class StackResult:
    """The result of scoring a stack: one :class:`ScoreResult` per 2D plane.

    ``scores`` has the shape of the stack's leading axes.
    """

    planes: list[ScoreResult]
    shape: tuple[int, ...]
    units: str = ""
    score_range: tuple[float, float] = (0.0, 100.0)
    higher_is_better: bool = True

    @property
    def scores(self) -> np.ndarray:
        return np.array([p.score for p in self.planes], dtype=np.float64).reshape(self.shape)

    @property
    def score(self) -> float:
        """Mean of the plane scores."""
        return float(np.mean([p.score for p in self.planes]))
