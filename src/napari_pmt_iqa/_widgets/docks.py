"""The widgets as napari docks them (the manifest's widget commands): each in a scroll area.

:func:`~napari_pmt_iqa._widgets._common.dock_class` makes, for each widget class, a subclass whose
contents scroll (so that all the widgets docked at once fit a 1600 x 1000 screen) and whose
minimum size is the contents' width and a few rows' height. The classes keep their names and
everything else of the widget they extend; tests and scripts may use either.
"""

from __future__ import annotations

from ._common import dock_class
from .dataset_widget import DatasetWidget as _DatasetWidget
from .finetune_widget import FinetuneWidget as _FinetuneWidget
from .rating_widget import RatingWidget as _RatingWidget
from .score_widget import ScoreWidget as _ScoreWidget
from .triage_widget import TriageWidget as _TriageWidget

ScoreWidget = dock_class(_ScoreWidget)
DatasetWidget = dock_class(_DatasetWidget)
FinetuneWidget = dock_class(_FinetuneWidget)
RatingWidget = dock_class(_RatingWidget)
TriageWidget = dock_class(_TriageWidget)

__all__ = ["DatasetWidget", "FinetuneWidget", "RatingWidget", "ScoreWidget", "TriageWidget"]
