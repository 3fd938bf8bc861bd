"""Screenshots of the fine-tune widget during and after a run (for the docs).

Rates 24 planes (three photos, each clean and with growing blur or noise: rating = how clean),
fine-tunes the default model on them with the few-shot recipe (the widget's defaults) and writes
``docs/images/finetune_training.png`` (mid-run) and ``docs/images/finetune_done.png``::

    xvfb-run -a -s "-screen 0 1400x1000x24" .venv/bin/python scripts/screenshot_finetune.py

Everything it writes besides the two images goes to a temporary folder (run, cache, user models).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"


def rated_planes():
    """24 RGB planes (256 x 256) and their ratings (0-100): photos with graded blur and noise."""
    import numpy as np
    from skimage import data, filters, transform, util

    rng = np.random.default_rng(0)
    planes, scores = [], []
    for img in (data.chelsea(), data.astronaut(), data.coffee()):
        img = util.img_as_float(transform.resize(img, (256, 256), anti_aliasing=True))
        for level in range(4):
            blurred = filters.gaussian(img, sigma=0.01 + 1.6 * level, channel_axis=-1)
            noisy = np.clip(img + rng.normal(0, 0.01 + 0.08 * level, img.shape), 0, 1)
            for arr in (blurred, noisy):
                planes.append(util.img_as_ubyte(np.clip(arr, 0, 1)))
                scores.append(88.0 - 22.0 * level + rng.normal(0, 2))
    return np.stack(planes), [float(np.clip(s, 0, 100)) for s in scores]


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="pmt-iqa-shots-"))
    os.environ["PMT_IQA_CACHE"] = str(tmp / "cache")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    from napari_pmt_iqa._torch_guard import guard_triton

    guard_triton()
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_pmt_iqa._widgets.finetune_widget import FinetuneWidget
    from napari_pmt_iqa._widgets.rating_widget import RatingWidget, set_rating
    from napari_pmt_iqa._widgets.training_worker import State

    planes, scores = rated_planes()
    viewer = napari.Viewer(title="napari-pmt-iqa: fine-tuning", show=True)
    viewer.window.resize(1400, 1000)
    layer = viewer.add_image(planes, name="rated photos", rgb=True)
    for i, s in enumerate(scores):
        set_rating(layer, (i,), round(s, 1))
    viewer.dims.set_current_step(0, 5)
    rating = RatingWidget(viewer)
    viewer.window.add_dock_widget(rating, name="Rate image quality", area="right")
    ft = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(ft, name="Fine-tune a quality model", area="right")
    ft.device_combo.setCurrentText("cpu")
    ft.ask_use_anyway = lambda text: True  # no modal question in a script
    ft.out_edit.setText(str(tmp / "run"))
    ft.name_edit.setText("my-photo-ratings")
    app = QApplication.instance()

    def wait(cond, timeout):
        t0 = time.time()
        while not cond() and time.time() - t0 < timeout:
            app.processEvents()
            time.sleep(0.02)
        return cond()

    def epochs_done():
        return sum(type(e).__name__ == "EpochEnd" for e in ft.events)

    if not ft.start():
        print("could not start:", ft.last_error)
        return 1
    if not wait(lambda: epochs_done() >= 15 or not ft.state.busy, 900):
        print("training did not progress")
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        app.processEvents()
    viewer.screenshot(str(OUT / "finetune_training.png"), canvas_only=False)
    print("wrote", OUT / "finetune_training.png", "state", ft.state.value)
    if not wait(lambda: ft.state in (State.DONE, State.STOPPED, State.ERROR), 1800):
        print("training did not end")
        return 1
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    viewer.screenshot(str(OUT / "finetune_done.png"), canvas_only=False)
    print("wrote", OUT / "finetune_done.png", "state", ft.state.value, ft.result_label.text())
    print(f"RSS before {ft.rss_before:.0f} MB, after {ft.rss_after:.0f} MB")
    ok = ft.state == State.DONE
    viewer.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
