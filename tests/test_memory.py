"""Handing freed memory back to the operating system."""

from __future__ import annotations

import sys

import numpy as np

from napari_pmt_iqa.memory import release_free_memory


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_release_free_memory_returns_what_malloc_kept():
    if not sys.platform.startswith("linux"):
        assert release_free_memory() is False
        return
    assert release_free_memory() is True
    # a large block freed raises glibc's mmap threshold (as a freed tile does): the mid-sized
    # blocks after it come from the heap, and once freed but for every 50th, the holes between
    # the survivors stay resident until they are trimmed
    big = np.ones(4_000_000)  # 32 MB
    del big
    blocks = [np.ones(40_000) for _ in range(1500)]  # 320 kB each, ~460 MB in all
    keep = blocks[::50]
    del blocks
    held = _rss_mb()
    release_free_memory()
    assert _rss_mb() < held - 200
    assert all(float(b[0]) == 1.0 for b in keep)  # what is still in use is untouched
