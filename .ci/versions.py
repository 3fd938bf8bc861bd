"""Print the versions an environment resolved (key packages), and keep its full ``pip freeze``.

Usage: ``python .ci/versions.py [FOLDER]``; with a folder, the full freeze goes to FOLDER/freeze.txt.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

KEY = (
    "napari",
    "numpy",
    "torch",
    "torchvision",
    "scikit-image",
    "scipy",
    "npe2",
    "magicgui",
    "superqt",
    "psygnal",
    "qtpy",
    "PyQt6",
    "vispy",
    "pydantic",
    "pillow",
    "tifffile",
    "safetensors",
    "tqdm",
    "opencv-python-headless",
    "pytest",
    "pytest-qt",
    "pytest-xvfb",
)


def main() -> None:
    found = []
    for name in KEY:
        try:
            found.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (absent)")
    print(f"versions: Python {platform.python_version()}: " + " ".join(found), flush=True)
    if len(sys.argv) > 1:
        freeze = subprocess.run(
            [sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True
        ).stdout
        Path(sys.argv[1], "freeze.txt").write_text(freeze)


if __name__ == "__main__":
    main()
