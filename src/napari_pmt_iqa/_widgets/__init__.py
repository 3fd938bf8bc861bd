"""napari widgets of napari-pmt-iqa (Qt). Torch is imported lazily, after :func:`guard_triton`."""

from .._torch_guard import guard_triton

guard_triton()

from .dataset_widget import DatasetWidget  # noqa: E402
from .score_widget import ScoreWidget  # noqa: E402

__all__ = ["DatasetWidget", "ScoreWidget"]
