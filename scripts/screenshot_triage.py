"""Screenshot of the folder triage widget (docs/images/triage.png), driven as a person would.

Usage (a display, or Xvfb)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_triage.py \\
        [--folder ~/iqa-data/ffdnet/testsets/Kodak24] [--out docs/images/triage.png]

The photos of ``--folder`` are copied to a temporary folder, some of them blurred, noised or
JPEG-compressed (so that the table has something to sort), plus one broken file; the widget scores
the folder with the default model, the table is sorted by score, the worst image is opened with its
maps, and the window is saved.
"""

from __future__ import annotations

# ruff: noqa: E402, I001  (torch first: see docs/environment.md on the torchvision segfault)
import torch  # noqa: F401
import torchvision  # noqa: F401

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def prepare(src: Path, dst: Path, n: int) -> None:
    from PIL import Image

    from napari_pmt_iqa._sample_data import distort

    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".png", ".jpg", ".bmp"))[:n]
    kinds = [None, "blur", "noise", "jpeg"]
    for k, p in enumerate(files):
        img = np.asarray(Image.open(p).convert("RGB"))
        kind = kinds[k % 4]
        if kind:
            img = distort(img, kind, {"blur": 3.0, "noise": 0.12, "jpeg": 8}[kind])
        Image.fromarray(img).save(dst / f"{p.stem}{'_' + kind if kind else ''}.png")
    (dst / "scan_0042.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated transfer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=Path("~/iqa-data/ffdnet/testsets/Kodak24"))
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("docs/images/triage.png"))
    args = ap.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    tmp = Path(tempfile.mkdtemp(prefix="triage-"))
    prepare(args.folder.expanduser(), tmp, args.n)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    _, widget = viewer.window.add_plugin_dock_widget("napari-pmt-iqa", "Score a folder of images")

    def wait(cond, timeout=600):
        t0 = time.perf_counter()
        while not cond() and time.perf_counter() - t0 < timeout:
            QApplication.processEvents()
            time.sleep(0.02)

    widget.path_edit.setText(str(tmp))
    widget.score_button.click()
    wait(lambda: not widget.is_running())
    widget.table.sortItems(1)
    widget.table.selectRow(0)
    widget.table.cellClicked.emit(0, 0)
    wait(lambda: not widget.is_opening())
    for lay in viewer.layers:
        if (
            "pmt_iqa_overlay" in lay.metadata
            and lay.metadata["pmt_iqa_overlay"]["key"] == "quality"
        ):
            lay.visible = True
            lay.opacity = 0.45
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False)
    print(f"wrote {args.out} ({len(widget.rows)} rows; folder {tmp})")
    viewer.close()
    os._exit(0)


if __name__ == "__main__":
    main()
