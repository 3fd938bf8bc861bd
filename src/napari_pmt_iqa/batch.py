"""Scoring many files: decoding on a thread pool overlaps scoring (CLI and folder triage).

Decoding (Pillow, tifffile) releases the GIL for most of its work, so while the model scores image
``k`` a few threads already decode images ``k + 1 ... k + depth``. At most ``depth`` decoded images
wait at any time: memory stays flat however many files there are. No torch import.

Precision
---------
:func:`auto_precision` is what ``precision="auto"`` means here: bf16 autocast where the hardware
runs it natively (a CUDA GPU with bf16, a CPU with AVX-512 BF16 or AMX), fp32 elsewhere. bf16 scores
stay within the tolerance measured on LIVE-C (``docs/results.md``).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

#: Decoding threads and decoded images kept ahead of the model, by default.
DECODE_THREADS = 2
PREFETCH = 4


def prefetch(
    items: Iterable[Any],
    fn: Callable[[Any], Any],
    threads: int = DECODE_THREADS,
    depth: int = PREFETCH,
) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """``(item, fn(item), None)`` for each item in order, or ``(item, None, error)`` where ``fn``
    raised; ``fn`` runs on ``threads`` threads, at most ``depth`` items ahead of the consumer.

    Closing the generator early (``break``, an exception in the consumer) cancels what has not
    started and waits for the running calls.
    """
    items = iter(items)
    pending: deque = deque()
    pool = ThreadPoolExecutor(max_workers=max(1, int(threads)), thread_name_prefix="pmt-decode")

    def fill() -> None:
        while len(pending) < max(1, int(depth)):
            try:
                it = next(items)
            except StopIteration:
                return
            pending.append((it, pool.submit(fn, it)))

    try:
        fill()
        while pending:
            it, fut = pending.popleft()
            fill()
            try:
                value = fut.result()
            except Exception as exc:  # reported to the consumer, never fatal
                yield it, None, exc
            else:
                yield it, value, None
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX; Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def auto_precision(device_type: str) -> str:
    """``"bf16"`` where ``device_type`` runs it natively (see the module docstring), else ``"fp32"``."""
    if device_type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if device_type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"


def image_files(root: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The image files of a folder (sorted; extensions as ``pmt-iqa score``:
    :data:`~napari_pmt_iqa.data.datasets.IMAGE_SUFFIXES`)."""
    from .data.datasets import load_image_folder

    return load_image_folder(root, recursive=recursive)
