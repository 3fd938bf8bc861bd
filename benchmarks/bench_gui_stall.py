"""Longest event-loop stall of the score widget's whole user action: click Score, layers in place.

Usage (needs a display; ``xvfb-run`` gives one)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_gui_stall.py [--runs 3]

For each run a fresh viewer opens the image, docks the score widget (default model, CPU, maps on)
and presses Score twice: the *first score* adds the seven map layers, the *re-score* updates them.
A 5 ms timer on the GUI thread records when the event loop is free; the longest gap between two of
its ticks, from the click until the result is shown and every map layer is in place (plus 0.3 s for
the last repaints), is the stall of that action. Scoring itself runs on a worker thread and is not
a stall (its time is printed as ``worker s``). The table ends with the median over the runs.

On a shared machine the wall-clock stall grows with the other processes' load; the script also
prints the GUI thread's own CPU time in its longest gap (``cpu``: ``time.thread_time``), which
does not (it leaves out the work of OpenGL's own threads and waits for the worker's lock).

Images: ``astronaut`` is scikit-image's 512 x 512 photo; ``local_defects`` is the sample "Astronaut
x4" (768 x 768, clean, blurred, noisy and JPEG quadrants).
"""

# torch (and torchvision) before napari: importing torchvision after an OpenGL context exists
# segfaults (docs/environment.md)
# ruff: noqa: I001, E402
import torch
import torchvision  # noqa: F401

import argparse
import statistics
import time

import numpy as np


def _images(names):
    from skimage import data

    from napari_pmt_iqa._sample_data import local_defects

    out = {}
    for name in names:
        if name == "astronaut":
            out[name] = (data.astronaut(), {"name": "astronaut", "rgb": True})
        else:
            arr, kwargs = local_defects()[0][:2]
            out[name] = (arr, kwargs)
    return out


def _wait(app, until, timeout=120.0):
    t0 = time.perf_counter()
    while not until():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the score widget did not finish in time")
        app.processEvents()
        time.sleep(0.002)


def _tick(ticks: list) -> None:
    ticks.append((time.perf_counter(), time.thread_time()))


def _action(app, widget, ticks) -> tuple[float, float, float]:
    """Press Score; (longest stall in ms, GUI-thread CPU ms in the longest CPU gap, worker s)."""
    ticks.clear()
    _tick(ticks)
    widget.score_button.click()
    _wait(app, lambda: not widget.is_running() and not widget.overlays_pending())
    t_end = time.perf_counter() + 0.3
    _wait(app, lambda: time.perf_counter() > t_end)
    t = np.asarray(ticks)
    stall = float(np.max(np.diff(t[:, 0]))) * 1000.0
    cpu = float(np.max(np.diff(t[:, 1]))) * 1000.0
    return stall, cpu, widget.last_seconds


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--images", nargs="+", default=["astronaut", "local_defects"])
    ap.add_argument("--model", default=None, help="default: the shipped default model")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    images = _images(args.images)
    rows = []
    for name, (arr, kwargs) in images.items():
        for run in range(args.runs):
            viewer = napari.Viewer()
            app = QApplication.instance()
            viewer.window.resize(1600, 1000)
            viewer.add_image(arr, **kwargs)
            _, widget = viewer.window.add_plugin_dock_widget(
                "napari-pmt-iqa", "Score image quality"
            )
            if args.model:
                widget.chooser.add_model(args.model)
            widget.chooser.device_combo.setCurrentText("cpu")
            settle = time.perf_counter() + 1.0
            _wait(app, lambda settle=settle: time.perf_counter() > settle)
            ticks: list[tuple[float, float]] = []
            timer = QTimer()
            timer.setInterval(5)
            timer.timeout.connect(lambda ticks=ticks: _tick(ticks))
            timer.start()
            first, cpu1, w1 = _action(app, widget, ticks)
            again, cpu2, w2 = _action(app, widget, ticks)
            timer.stop()
            n_maps = sum(1 for lay in viewer.layers if "pmt_iqa_overlay" in lay.metadata)
            rows.append((name, run, first, again, cpu1, cpu2))
            print(
                f"{name:14s} run {run}: first score {first:6.0f} ms (cpu {cpu1:4.0f})   "
                f"re-score {again:6.0f} ms (cpu {cpu2:4.0f})   "
                f"(worker {w1:.2f} s / {w2:.2f} s, {n_maps} map layers)",
                flush=True,
            )
            viewer.close()
    print()
    print(
        "| image | first-score stall (ms) | re-score stall (ms) | GUI-thread CPU, first / re-score "
        "(ms) | runs |"
    )
    print("|---|---|---|---|---|")
    for name in images:
        mine = [r for r in rows if r[0] == name]
        med = [statistics.median(r[k] for r in mine) for k in (2, 3, 4, 5)]
        print(
            f"| {name} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} / {med[3]:.0f} | "
            f"{len(mine)} (median) |"
        )


if __name__ == "__main__":
    main()
