"""Device selection and mixed precision.

``"auto"`` picks CUDA, then Apple's MPS, then the CPU. ``"cuda:N"`` names a GPU explicitly.
Mixed precision (``precision="bf16"`` or ``"fp16"``) runs the network under ``torch.autocast``;
on a CPU only bf16 is offered (fast on CPUs with AVX-512 BF16 or AMX).
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16")


class DeviceError(ValueError):
    """A device that does not exist here."""


def available_devices() -> list[str]:
    """``["auto", "cpu", "cuda:0", ..., "mps"]`` as far as this machine has them."""
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` into a usable device.

    Raises
    ------
    DeviceError
        The device is unknown or not present on this machine.
    """
    if isinstance(device, torch.device):
        device = str(device)
    device = (device or "auto").strip().lower()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise DeviceError(
            f"Unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps."
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{device!r} was asked for, but this machine has no usable CUDA GPU.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"{device!r} was asked for, but only {torch.cuda.device_count()} GPU(s) exist."
            )
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError(
                "'mps' was asked for, but Apple's Metal backend is not available here."
            )
    elif dev.type != "cpu":
        raise DeviceError(f"Unsupported device type {dev.type!r}.")
    return dev


def check_precision(precision: str, device_type: str | None = None) -> None:
    """Refuse an unknown precision, or fp16 on a CPU (``device_type`` None: not checked)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}.")
    if precision == "fp16" and device_type == "cpu":
        raise ValueError(
            "precision='fp16' needs a GPU; use precision='bf16' on a CPU (fast) or 'fp32'."
        )


def autocast(device: torch.device, precision: str = "fp32"):
    """A context manager running the network in ``precision`` on ``device``."""
    check_precision(precision, device.type)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
