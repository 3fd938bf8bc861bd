"""Atomic file writes (``napari_pmt_iqa.atomic``)."""

from __future__ import annotations

import pytest

from napari_pmt_iqa.atomic import atomic_write_bytes, atomic_write_text


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    import os

    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")

    def boom(*a):
        raise OSError("disk full (test)")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_to_a_folder_is_refused_and_writes_nothing(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="a folder, not a file") as err:
        atomic_write_text(folder, "x")
    assert err.value.filename == str(folder)
    assert list(tmp_path.rglob("*")) == [folder]  # no temporary file left
