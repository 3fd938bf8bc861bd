"""Screenshot of the four PMT-IQA widgets docked together in a 1600 x 1000 napari window.

Usage (needs a display; ``xvfb-run`` gives one)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_widgets.py \
        --out docs/images/four_widgets.png

Opens three photos as a user would (File > Open: ``_open_or_raise_error``, no reader dialog), docks
the score, data-set, fine-tune and rating widgets, scores the selected photo with the default model
(maps on; the other photos hidden), rates it 4 of 5, and saves a picture of the whole window. It prints the window's size,
which must stay within the screen.
"""

# torch and torchvision before napari (docs/environment.md: the torchvision segfault)
# ruff: noqa: I001, E402
import torch  # noqa: F401
import torchvision  # noqa: F401

import argparse
import tempfile
import time
from pathlib import Path

WIDGETS = (
    "Score image quality",
    "Score an IQA data set",
    "Fine-tune a quality model",
    "Rate image quality",
)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="four_widgets.png")
    args = ap.parse_args(argv)

    import napari
    from PIL import Image
    from qtpy.QtWidgets import QApplication
    from skimage import data

    folder = Path(tempfile.mkdtemp(prefix="pmt-iqa-shot-"))
    paths = []
    for name in ("coffee", "chelsea", "astronaut"):
        paths.append(folder / f"{name}.png")
        Image.fromarray(getattr(data, name)()).save(paths[-1])

    viewer = napari.Viewer()
    app = QApplication.instance()
    viewer.window.resize(1600, 1000)
    for path in paths:
        viewer._open_or_raise_error([str(path)])  # the path File > Open and drag and drop take
    widgets = {
        name: viewer.window.add_plugin_dock_widget("napari-pmt-iqa", name)[1] for name in WIDGETS
    }

    def wait(seconds: float, until=lambda: False) -> None:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds and not until():
            app.processEvents()
            time.sleep(0.01)

    chelsea = viewer.layers["chelsea"]
    for layer in viewer.layers:
        layer.visible = layer is chelsea
    viewer.layers.selection.active = chelsea
    viewer.reset_view()
    scorer = widgets["Score image quality"]
    scorer.chooser.device_combo.setCurrentText("cpu")
    scorer.layer_combo.setCurrentText("chelsea")
    scorer.score()
    wait(300, lambda: not scorer.is_running() and not scorer.overlays_pending())
    widgets["Rate image quality"].star_buttons[3].click()
    wait(1.5)
    window = viewer.window._qt_window
    screen = app.primaryScreen().availableGeometry()
    print(
        f"window {window.width()} x {window.height()}, screen {screen.width()} x {screen.height()}"
    )
    print(scorer.score_label.text())
    viewer.screenshot(args.out, canvas_only=False)
    print(f"wrote {args.out}")
    viewer.close()


if __name__ == "__main__":
    main()
