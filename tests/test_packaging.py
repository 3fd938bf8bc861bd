"""The wheel is what the napari hub installs: check it holds the manifest, the weights and the entry points."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    try:
        import build  # noqa: F401
    except ImportError:  # pragma: no cover
        pytest.skip("the 'build' package is not installed")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels = list(out.glob("napari_pmt_iqa-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_contains_manifest_content_not_a_link(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "napari_pmt_iqa/napari.yaml" in names
        text = z.read("napari_pmt_iqa/napari.yaml").decode()
    assert text == (ROOT / "napari.yaml").read_text()
    assert "name: napari-pmt-iqa" in text


def test_wheel_entry_points_and_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        dist_info = next(n.split("/")[0] for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = z.read(f"{dist_info}/METADATA").decode()
        eps = z.read(f"{dist_info}/entry_points.txt").decode()
    assert "Classifier: Framework :: napari" in meta
    assert "Requires-Dist: qtpy" in meta
    assert "PyQt" not in meta.split("Provides-Extra")[0] or "extra ==" in meta
    cp = configparser.ConfigParser()
    cp.read_string(eps)
    assert cp["napari.manifest"]["napari-pmt-iqa"] == "napari_pmt_iqa:napari.yaml"
    assert cp["console_scripts"]["pmt-iqa"] == "napari_pmt_iqa.cli:main"


def test_wheel_ships_the_registered_weights(wheel):
    import json

    reg = json.loads((ROOT / "src/napari_pmt_iqa/weights/registry.json").read_text())
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    for entry in reg:
        if entry.get("file"):
            assert f"napari_pmt_iqa/weights/{entry['file']}" in names


def test_readme_links_are_absolute_and_point_at_files_of_this_repo():
    """The napari hub and PyPI render the README with absolute URLs only: every image and link
    is absolute, and those into this repository name files that exist."""
    import re

    # (no tomllib: the oldest supported Python is 3.10)
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    repo = re.search(r'^"Source Code" = "([^"]+)"', pyproject, re.M).group(1).rstrip("/")
    owner_name = repo.removeprefix("https://github.com/")
    ours = {
        f"{repo}/blob/main/": "link",
        f"https://raw.githubusercontent.com/{owner_name}/main/": "image",
    }
    targets = re.findall(r"(!?)\[[^\]]*\]\(([^)\s]+)\)", (ROOT / "README.md").read_text("utf-8"))
    assert len(targets) > 10
    relative = [t for _, t in targets if not t.startswith(("https://", "http://", "#"))]
    assert not relative, f"relative targets in README.md: {relative}"
    into_repo = 0
    for bang, target in targets:
        for prefix, kind in ours.items():
            if target.startswith(prefix):
                path = ROOT / target.removeprefix(prefix).split("#")[0]
                assert path.is_file(), f"README.md points at {target}, but {path} is missing"
                assert (kind == "image") == bool(bang), f"{target}: use the {kind} form"
                into_repo += 1
    assert into_repo >= 10
