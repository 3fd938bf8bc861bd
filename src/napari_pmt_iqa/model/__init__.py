"""The PMT-IQA network, its backbones and its losses."""

from ..score_scale import ScoreScale
from .backbones import BACKBONES, available_backbones, build_backbone
from .losses import (
    PMTLoss,
    class_edges,
    constant_weights,
    progressive_weights,
    score_to_class,
)
from .network import PMTIQA, TAP_GRIDS, ModelConfig, PMTOutput, count_parameters

__all__ = [
    "BACKBONES",
    "TAP_GRIDS",
    "PMTIQA",
    "ModelConfig",
    "PMTLoss",
    "PMTOutput",
    "ScoreScale",
    "available_backbones",
    "build_backbone",
    "class_edges",
    "constant_weights",
    "count_parameters",
    "progressive_weights",
    "score_to_class",
]
