"""What pyproject.toml claims is what CI tests (tox.ini, .ci/oldest-constraints.txt).

* every lower bound (``>=``) of a dependency or of the testing/baselines/backbones/napari extras is
  pinned, at exactly that version, in the constraints file of the ``oldest`` environment;
* the Python classifiers list exactly the Pythons of the tox environments, and ``requires-python``
  starts at the lowest of them;
* in the ``oldest`` environment (``PMT_IQA_EXPECT_FLOORS`` set by tox.ini), every pinned package is
  installed at its pin; in every environment, every installed dependency satisfies its claim.
"""

from __future__ import annotations

import configparser
import os
import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / ".ci" / "oldest-constraints.txt"
#: extras whose lower bounds the oldest environment installs (tox.ini installs testing, baselines
#: and backbones; napari's bound is the same as in testing)
TESTED_EXTRAS = ("testing", "baselines", "backbones", "napari")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements() -> list[Requirement]:
    project = _project()
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in TESTED_EXTRAS:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def _pins(path: Path) -> dict[str, Version]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, ver = line.partition("==")
            assert ver, f"{path.name}: {line!r} is not a 'name==version' pin"
            pins[canonicalize_name(name)] = Version(ver.strip())
    return pins


def _lower_bound(req: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
    return max(bounds) if bounds else None


def test_every_lower_bound_is_pinned_in_the_oldest_constraints():
    pins = _pins(CONSTRAINTS)
    for req in _requirements():
        low = _lower_bound(req)
        assert low is not None, f"{req} has no lower bound: claim one, and test it"
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (>= {low}) is not pinned in {CONSTRAINTS.name}"
        assert pins[name] == low, f"pyproject claims {req}, {CONSTRAINTS.name} tests {pins[name]}"


def _tox_pythons() -> set[str]:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    pythons = set()
    for env in tox.get("tox", "envlist").replace(",", " ").split():
        base = tox.get(f"testenv:{env}", "base_python", fallback="")
        m = re.search(r"python(3\.\d+)\}?$", base) or re.fullmatch(r"py3(\d+)", env)
        assert m, f"tox env {env}: cannot tell its Python"
        pythons.add(m.group(1) if "." in m.group(1) else f"3.{m.group(1)}")
    return pythons


def test_python_classifiers_are_the_tested_pythons():
    project = _project()
    classified = {
        c.rsplit("::", 1)[1].strip()
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    tested = _tox_pythons()
    assert classified == tested
    lowest = min(tested, key=Version)
    assert project["requires-python"] == f">={lowest}"


def test_this_python_is_claimed():
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert here in _tox_pythons()


def test_installed_versions_satisfy_the_claims():
    floors = os.environ.get("PMT_IQA_EXPECT_FLOORS")
    pins = _pins(Path(floors)) if floors else {}
    checked = 0
    for req in _requirements():
        try:
            have = Version(version(req.name))
        except PackageNotFoundError:
            continue  # an extra this environment did not install
        checked += 1
        assert have in req.specifier, f"{req.name} {have} installed, pyproject claims {req}"
        name = canonicalize_name(req.name)
        if name in pins:
            assert have == pins[name], (
                f"{req.name} {have} installed, the oldest env pins {pins[name]}"
            )
    assert checked >= 10
