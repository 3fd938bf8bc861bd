"""Decoding on a thread pool ahead of scoring (``napari_pmt_iqa.batch``)."""

from __future__ import annotations

import threading
import time

from napari_pmt_iqa import batch


def test_prefetch_keeps_order_reports_errors_and_stays_ahead_by_depth():
    started = []
    lock = threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        if i == 3:
            raise ValueError("bad item 3")
        time.sleep(0.01 * (i % 3))  # out-of-order completion
        return i * i

    out = []
    gen = batch.prefetch(range(10), work, threads=3, depth=4)
    for item, value, error in gen:
        # never more than `depth` items submitted beyond the one being consumed
        with lock:
            assert len(started) <= item + 1 + 4
        out.append((item, value, None if error is None else str(error)))
    assert [o[0] for o in out] == list(range(10))
    assert out[3] == (3, None, "bad item 3")
    assert out[4] == (4, 16, None)


def test_closing_early_cancels_the_rest():
    seen = []

    def work(i):
        seen.append(i)
        time.sleep(0.005)
        return i

    gen = batch.prefetch(range(1000), work, threads=2, depth=3)
    assert next(gen)[1] == 0
    gen.close()
    assert len(seen) < 10


def test_auto_precision():
    assert batch.auto_precision("cpu") == ("bf16" if batch.cpu_has_native_bf16() else "fp32")
    assert batch.auto_precision("mps") == "fp32"


def test_image_files_use_the_cli_extensions(tmp_path):
    for name in ("a.png", "b.JPG", "c.tif", "d.txt", "e.csv"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "f.webp").write_bytes(b"x")
    assert [p.name for p in batch.image_files(tmp_path)] == ["a.png", "b.JPG", "c.tif"]
    assert len(batch.image_files(tmp_path, recursive=True)) == 4
