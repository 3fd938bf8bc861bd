"""GUI responsiveness during a real fine-tune in the widget: the longest event-loop stall.

Opens a napari viewer with the fine-tune widget, fine-tunes ``--init`` on ``--data`` (for example
one of the star-rating CSVs ``benchmarks/bench_finetune.py`` writes into its ``--work`` folder)
with the widget's defaults, and measures, with a 5 ms ``QTimer``, the longest gap between ticks
from the start to the end (decoding, the backbone pass, the heads' training, the refit, the
publishing). Goal: 100 ms. Needs a display (``xvfb-run -a``)::

    xvfb-run -a python benchmarks/bench_finetune_gui.py --data /tmp/bench-finetune/n100-s0.csv \\
        --init ~/runs/cmp-lite0/best.safetensors
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True, help="ratings CSV or data-set folder")
    ap.add_argument("--init", required=True, help="model to fine-tune")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--tick-ms", type=int, default=5, help="stall timer interval (0: no timer, time only)"
    )
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="pmt-iqa-gui-bench-"))
    os.environ["PMT_IQA_CACHE"] = str(tmp / "cache")
    from napari_pmt_iqa._torch_guard import guard_triton

    guard_triton()
    import napari
    import torch
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    torch.set_num_threads(args.threads)
    from napari_pmt_iqa._widgets.finetune_widget import FinetuneWidget
    from napari_pmt_iqa._widgets.training_worker import State

    viewer = napari.Viewer(show=True)
    w = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(w, name="fine-tune")
    w.ask_use_anyway = lambda text: True
    w.set_init("model", str(Path(args.init).expanduser()))
    w.device_combo.setCurrentText("cpu")
    w.folder_radio.setChecked(True)
    w.data_edit.setText(str(Path(args.data).expanduser()))
    w.out_edit.setText(str(tmp / "run"))
    app = QApplication.instance()
    longest, last, ticks = [0.0], [time.perf_counter()], [0]
    phase_longest: dict[str, float] = {}

    order = ("start", "Preparing", "Baseline", "Started", "EpochEnd", "Refitting")
    seen = [0, "start"]  # events looked at, latest phase (incremental: the timer stays cheap)

    def phase() -> str:
        events = w.events
        for e in events[seen[0] :]:
            name = type(e).__name__
            if name in order and order.index(name) > order.index(seen[1]):
                seen[1] = name
        seen[0] = len(events)
        return seen[1]

    def tick():
        now = time.perf_counter()
        gap = now - last[0]
        longest[0] = max(longest[0], gap)
        p = phase()
        phase_longest[p] = max(phase_longest.get(p, 0.0), gap)
        last[0] = now
        ticks[0] += 1

    timer = QTimer()
    timer.setInterval(max(1, args.tick_ms))
    timer.timeout.connect(tick)
    for _ in range(20):
        app.processEvents()
    t0 = time.perf_counter()
    gui_cpu0 = time.thread_time()
    last[0] = t0
    if args.tick_ms > 0:
        timer.start()
    if not w.start():
        print("could not start:", w.last_error)
        return 1
    # wait in a Qt event loop, as napari does (a polling loop would take a core from training)
    from qtpy.QtCore import QEventLoop

    loop = QEventLoop()
    done = QTimer()
    done.setInterval(50)
    done.timeout.connect(lambda: None if (w.state.busy or w.worker is not None) else loop.quit())
    done.start()
    loop.exec_()
    done.stop()
    timer.stop()
    total = time.perf_counter() - t0
    gui_cpu = time.thread_time() - gui_cpu0
    res = w.outcome.result if w.outcome else None
    print(f"state {w.state.value}; {total:.1f} s from Start to the end; {ticks[0]} ticks")
    print(f"longest event-loop stall: {longest[0] * 1000:.0f} ms (goal 100 ms)")
    print(
        "by phase: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in sorted(phase_longest.items()))
    )
    print(f"GUI-thread CPU time: {gui_cpu:.1f} s")
    if res is not None:
        print(
            f"the recipe's own time (FinetuneResult.seconds): {res.seconds:.1f} s, of which the "
            f"backbone pass {res.feature_seconds:.1f} s"
        )
        print(w.result_label.text())
    viewer.close()
    return 0 if w.state == State.DONE else 1


if __name__ == "__main__":
    sys.exit(main())
