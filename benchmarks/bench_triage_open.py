"""Longest event-loop stall when a row of the folder-triage table is opened (image and its maps).

Usage (needs a display; ``xvfb-run`` gives one)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_triage_open.py \
        --folder ~/iqa-data/ffdnet/testsets/Kodak24 [--opens 5]

A viewer docks the *Score a folder of images* widget (default model, CPU), scores the folder, then
clicks ``--opens`` rows one after the other. Each click scores that image again with maps on a
worker thread (not a stall) and puts the image and its maps in the viewer, closing the previous
row's layers. A 5 ms timer on the GUI thread records when the event loop is free; the longest gap
between two of its ticks, from the click until every layer is in place, is the stall of that
click. The table ends with the median and the largest over the clicks.
"""

# torch (and torchvision) before napari: importing torchvision after an OpenGL context exists
# segfaults (docs/environment.md)
# ruff: noqa: I001, E402
import torch
import torchvision  # noqa: F401

import argparse
import statistics
import time
from pathlib import Path


def _wait(app, until, timeout=600.0):
    t0 = time.perf_counter()
    while not until():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the triage widget did not finish in time")
        app.processEvents()
        time.sleep(0.002)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", required=True, help="a folder of images")
    ap.add_argument("--opens", type=int, default=5, help="rows to open, one after the other")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_pmt_iqa._widgets.triage_widget import TriageWidget

    viewer = napari.Viewer(show=True)
    widget = TriageWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.chooser.device_combo.setCurrentText("cpu")
    app = QApplication.instance()
    widget.score_folder(str(Path(args.folder).expanduser()))
    _wait(app, lambda: len(widget.rows) > 0 and not widget.is_running())
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    n = min(args.opens, widget.table.rowCount())
    print("| click | longest stall (ms) | click to every layer (s) | layers |")
    print("|---|---|---|---|")
    stalls = []
    for r in range(n):
        ticks.clear()
        t0 = time.perf_counter()
        ticks.append(t0)
        widget.table.cellClicked.emit(r, 0)
        _wait(app, lambda: not widget.is_opening())
        end = time.perf_counter()
        ticks.append(end)
        longest = max(b - a for a, b in zip(ticks, ticks[1:]))
        stalls.append(longest)
        print(f"| {r + 1} | {longest * 1000:.0f} | {end - t0:.2f} | {len(viewer.layers)} |")
    print(
        f"median longest stall {statistics.median(stalls) * 1000:.0f} ms, "
        f"largest {max(stalls) * 1000:.0f} ms over {n} clicks"
    )
    viewer.close()


if __name__ == "__main__":
    main()
