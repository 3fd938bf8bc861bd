"""Longest event-loop stall while the data-set widget loads a data set as one layer per image.

Usage (needs a display; ``xvfb-run`` gives one)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_dataset_load.py \
        --data RATINGS.csv [--runs 3]

A viewer docks *Score an IQA data set*; each run removes every layer and loads ``--data`` (a folder
or CSV of the generic layout, or LIVE-C / BIQ2021; at most the widget's *Max. images*). A 5 ms
timer on the GUI thread records when the event loop is free; the longest gap between two of its
ticks, from the click until every image is a layer, is the stall of that load.
"""

# torch (and torchvision) before napari: importing torchvision after an OpenGL context exists
# segfaults (docs/environment.md)
# ruff: noqa: I001, E402
import torch  # noqa: F401
import torchvision  # noqa: F401

import argparse
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a data set folder or CSV")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_pmt_iqa._widgets.dataset_widget import DatasetWidget

    viewer = napari.Viewer(show=True)
    widget = DatasetWidget(viewer)
    viewer.window.add_dock_widget(widget)
    app = QApplication.instance()
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    print("| run | longest stall (ms) | click to every layer (s) | layers |")
    print("|---|---|---|---|")
    for run in range(args.runs):
        for layer in list(viewer.layers):
            viewer.layers.remove(layer)
        for _ in range(20):
            app.processEvents()
            time.sleep(0.01)
        ticks.clear()
        t0 = time.perf_counter()
        ticks.append(t0)
        widget.load(args.data)
        while widget.is_running() and time.perf_counter() - t0 < 600:
            app.processEvents()
            time.sleep(0.002)
        end = time.perf_counter()
        ticks.append(end)
        longest = max(b - a for a, b in zip(ticks, ticks[1:]))
        print(f"| {run + 1} | {longest * 1000:.0f} | {end - t0:.2f} | {len(viewer.layers)} |")
    viewer.close()


if __name__ == "__main__":
    main()
