"""Demo: napari with the PMT-IQA plugin docked, a sample image scored and its quality maps shown.

Usage::

    python scripts/demo.py                           # interactive (needs a display)
    python scripts/demo.py --screenshot demo.png     # score, save a screenshot of the window, exit

Without a display it re-runs itself under Xvfb (``xvfb-run``), saves a screenshot (default
``pmt-iqa-demo.png``) and prints the scores. It uses the default model when the package ships it,
otherwise a tiny random model (with a warning: the scores then mean nothing).
"""

# ruff: noqa: I001, E402
from __future__ import annotations

# torch and torchvision first: importing torchvision after napari created its OpenGL context
# segfaults on machines with triton and no GPU (see docs/environment.md)
import torch  # noqa: F401
import torchvision  # noqa: F401

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLES = {
    "local": "local_defects",
    "blur": "graded_blur",
    "noise": "graded_noise",
    "jpeg": "graded_jpeg",
    "pair": "photo_pair",
}


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in (
        "darwin",
        "win32",
    )


def _model_choice(model_arg: str | None) -> str:
    from napari_pmt_iqa.model import PMTIQA
    from napari_pmt_iqa.weights import DEFAULT_MODEL, REGISTRY, save_checkpoint

    if model_arg:
        return model_arg
    if DEFAULT_MODEL in REGISTRY:
        return DEFAULT_MODEL
    print(
        f"WARNING: the default model {DEFAULT_MODEL!r} is not shipped with this version yet; the demo "
        "uses a tiny RANDOM model, so its scores and maps mean nothing.",
        file=sys.stderr,
    )
    torch.manual_seed(0)
    path = Path(tempfile.mkdtemp(prefix="pmt-iqa-demo-")) / "tiny-random.safetensors"
    save_checkpoint(
        path,
        PMTIQA(backbone="tiny", pretrained=False).eval(),
        description="tiny random model (demo fallback)",
    )
    return str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--screenshot", metavar="PATH", help="save a screenshot of the window and exit")
    ap.add_argument(
        "--sample",
        choices=sorted(SAMPLES),
        default="local",
        help="sample to score (default: local, a photo with local defects)",
    )
    ap.add_argument(
        "--model", help="registered model name or checkpoint path (default: the default model)"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--maps-figure",
        metavar="PATH",
        help="also save a figure of the image and each of its maps (docs/images/maps.png)",
    )
    ap.add_argument(
        "--map",
        default="quality",
        choices=[
            "quality",
            "class",
            "confidence",
            "scale0",
            "scale1",
            "scale2",
            "scale3",
            "defect_blur",
            "defect_noise",
            "defect_compression",
        ],
        help="overlay shown in the screenshot",
    )
    args = ap.parse_args(argv)

    if not _has_display():
        if os.environ.get("PMT_IQA_DEMO_XVFB"):
            print("No display even under xvfb-run.", file=sys.stderr)
            return 2
        if not shutil.which("xvfb-run"):
            print(
                "No display and no xvfb-run: install xvfb (apt-get install xvfb) or run with a display.",
                file=sys.stderr,
            )
            return 2
        shot = args.screenshot or "pmt-iqa-demo.png"
        cmd = [
            "xvfb-run",
            "-a",
            "-s",
            "-screen 0 1600x1100x24",
            sys.executable,
            os.path.abspath(__file__),
            *(argv if argv is not None else sys.argv[1:]),
        ]
        if not args.screenshot:
            cmd += ["--screenshot", shot]
        return subprocess.call(cmd, env={**os.environ, "PMT_IQA_DEMO_XVFB": "1"})

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_pmt_iqa import _sample_data

    model = _model_choice(args.model)
    viewer = napari.Viewer(title="napari-pmt-iqa demo")
    for data, kwargs in getattr(_sample_data, SAMPLES[args.sample])():
        viewer.add_image(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-pmt-iqa", "Score image quality")
    if Path(model).suffix:
        widget.chooser.add_model(model)
    else:
        widget.chooser.model_combo.setCurrentIndex(widget.chooser.model_combo.findData(model))
    if widget.chooser.device_combo.findText(args.device) >= 0:
        widget.chooser.device_combo.setCurrentText(args.device)
    image = viewer.layers[0]

    def report() -> None:
        meta = image.metadata.get("pmt_iqa")
        if not meta:
            print(f"Scoring failed: {widget.last_error}", file=sys.stderr)
            return
        print(f"model: {model}")
        print(f"image {widget.score_label.text().replace('<b>', '').replace('</b>', '')}")
        labels = image.metadata.get("pmt_iqa_sample", {}).get("labels")
        for k, s in enumerate(meta.get("scores", [meta["score"]])):
            print(f"  plane {k}: {s:.3f} {meta['units']}" + (f"  ({labels[k]})" if labels else ""))
        if meta.get("defect_worst"):
            print(
                "  defect levels (0-5), worst crop / mean: "
                + ", ".join(
                    f"{k} {v:.1f} / {meta['defect_levels'][k]:.1f}"
                    for k, v in meta["defect_worst"].items()
                )
            )
        for lay in viewer.layers:
            if "pmt_iqa_overlay" in lay.metadata:
                lay.visible = lay.metadata["pmt_iqa_overlay"]["key"] == args.map
                print(
                    f"  layer: {lay.name}  scale={tuple(round(float(v), 2) for v in lay.scale)} "
                    f"translate={tuple(round(float(v), 2) for v in lay.translate)}"
                )

    widget.score(image)
    if args.screenshot:
        viewer.window.resize(1500, 1000)
        viewer.window.show()
        t0 = time.perf_counter()
        while widget.is_running() and time.perf_counter() - t0 < 600:
            QApplication.processEvents()
            time.sleep(0.01)
        report()
        viewer.layers.selection.active = image
        for _ in range(20):
            QApplication.processEvents()
            time.sleep(0.02)
        viewer.screenshot(args.screenshot, canvas_only=False)
        if args.maps_figure:
            maps_figure(viewer, image, args.maps_figure)
        print(f"screenshot: {os.path.abspath(args.screenshot)}")
        ok = "pmt_iqa" in image.metadata
        viewer.close()
        return 0 if ok else 1
    widget.worker.finished.connect(report) if widget.worker is not None else report()
    napari.run()
    return 0


def maps_figure(viewer, image, path: str) -> None:
    """Save a grid of canvas screenshots: the image alone, then the image under each map."""
    import numpy as np
    from PIL import Image, ImageDraw
    from qtpy.QtWidgets import QApplication

    overlays = [lay for lay in viewer.layers if "pmt_iqa_overlay" in lay.metadata]
    titles = {
        "quality": "regression head: local quality",
        "class": "classification head: local class",
        "confidence": "class confidence",
        "scale0": "scale 1: stride 4 (fine)",
        "scale1": "scale 2: stride 8",
        "scale2": "scale 3: stride 16",
        "scale3": "scale 4: stride 32 (coarse)",
        "defect_blur": "defect head: blur level",
        "defect_noise": "defect head: noise level",
        "defect_compression": "defect head: compression level",
    }
    panels = []
    for shown in [None, *overlays]:
        for lay in overlays:
            lay.visible = lay is shown
            lay.opacity = 0.75
        viewer.reset_view()
        for _ in range(10):
            QApplication.processEvents()
            time.sleep(0.02)
        shot = viewer.screenshot(canvas_only=True, flash=False)
        title = (
            "image"
            if shown is None
            else titles.get(shown.metadata["pmt_iqa_overlay"]["key"], shown.name)
        )
        panels.append((np.asarray(shot)[..., :3], title))
    h = min(p.shape[0] for p, _ in panels)
    w = min(p.shape[1] for p, _ in panels)
    cols = 4
    rows = (len(panels) + cols - 1) // cols
    scale = min(1.0, 360 / w)
    pw, ph = int(w * scale), int(h * scale)
    fig = Image.new("RGB", (cols * pw, rows * (ph + 22)), (30, 30, 30))
    draw = ImageDraw.Draw(fig)
    for k, (arr, title) in enumerate(panels):
        im = Image.fromarray(np.ascontiguousarray(arr[:h, :w])).resize((pw, ph))
        x, y = (k % cols) * pw, (k // cols) * (ph + 22)
        fig.paste(im, (x, y + 22))
        draw.text((x + 6, y + 5), title, fill=(235, 235, 235))
    fig.save(path)
    print(f"maps figure: {os.path.abspath(path)}")


if __name__ == "__main__":
    sys.exit(main())
