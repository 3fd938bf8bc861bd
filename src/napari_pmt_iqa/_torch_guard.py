"""Keep ``triton`` from loading inside napari on machines without an NVIDIA GPU.

``import torchvision`` imports ``triton`` when it is installed. If that first happens *after*
napari/vispy created an OpenGL context (Mesa llvmpipe), the process dies with a segmentation fault.
Triton only serves NVIDIA GPUs, so where there is none we mark it as absent
(``sys.modules["triton"] = None``) before the plugin first imports torch: ``import triton`` then
raises ``ImportError``, which torch and torchvision handle (CPU inference, and ``torch.compile`` on a
CPU, keep working). With an NVIDIA GPU nothing is changed.

This module must not import torch itself.
"""

from __future__ import annotations

import os
import shutil
import sys

__all__ = ["guard_triton", "has_nvidia_gpu"]


def has_nvidia_gpu() -> bool:
    """Whether this machine looks like it has an NVIDIA GPU, found without importing torch.

    Returns
    -------
    bool
        True when the NVIDIA driver is loaded (``/proc/driver/nvidia``), a device node exists
        (``/dev/nvidia0``) or ``nvidia-smi`` is on the PATH.
    """
    return (
        os.path.exists("/proc/driver/nvidia")
        or os.path.exists("/dev/nvidia0")
        or shutil.which("nvidia-smi") is not None
    )


def guard_triton() -> bool:
    """Mark ``triton`` as unavailable when no NVIDIA GPU is present (see the module docstring).

    Call it before the plugin first imports torch. It does nothing when triton is already imported
    (then it is too late and also unnecessary), when an NVIDIA GPU is present, or when the
    environment variable ``PMT_IQA_ALLOW_TRITON=1`` is set.

    Returns
    -------
    bool
        True when this call (or an earlier one) left ``sys.modules["triton"]`` set to None.
    """
    if os.environ.get("PMT_IQA_ALLOW_TRITON", "").lower() in ("1", "true", "yes"):
        return False
    if "triton" not in sys.modules and not has_nvidia_gpu():
        sys.modules.setdefault("triton", None)  # type: ignore[arg-type]
    return "triton" in sys.modules and sys.modules["triton"] is None
