"""``pmt-iqa defects`` (called in-process through the parser)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_pmt_iqa import cli
from napari_pmt_iqa.scoring import score
from napari_pmt_iqa.weights import load_checkpoint, read_metadata


def _photos(folder, n=3, size=(256, 288)):
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    for i in range(n):
        base = 127 + 90 * np.sin(xx / (4.0 + i)) * np.cos(yy / (7.0 + i))
        img = np.clip(base[..., None] + rng.normal(0, 3, (*size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"p{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_defects_fits_and_writes_a_checkpoint_with_the_head(tiny_checkpoint, tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "with-defects.safetensors"
    rc = cli.main(
        ["defects", "--model", str(tiny_checkpoint), "--photos", str(photos), "--out", str(out)]
        + ["--windows", "4", "--threads", "1"]
    )
    assert rc == 0, capsys.readouterr().err
    assert "fitted on 3 photos" in capsys.readouterr().out
    meta = read_metadata(out)
    assert meta["config"]["defect_kinds"] == ["blur", "noise", "compression"]
    assert (
        meta["defects"]["specific"]
        and meta["defects"]["photos_given"] == 3
        and meta["defects"]["ridge"] == 0.03
    )
    m = load_checkpoint(out)
    img = np.asarray(Image.open(photos / "p0.png"))
    r = score(img, m, device="cpu")
    assert r.maps.defects.shape[0] == 3
    # the score is the starting model's
    assert r.score == score(img, load_checkpoint(tiny_checkpoint), device="cpu").score
    # pmt-iqa score writes the worst crop's levels; the score CSV of the widgets has each crop's
    import csv

    from napari_pmt_iqa.export import score_rows

    table = tmp_path / "scores.csv"
    assert (
        cli.main(
            ["score", str(photos / "p0.png"), "--model", str(out), "--csv", str(table)]
            + ["--precision", "fp32"]  # as score() above (auto is bf16 on CPUs that have it)
        )
        == 0
    )
    (row,) = list(csv.DictReader(table.open()))
    for kind, v in r.defect_worst.items():
        assert float(row[f"defect_{kind}"]) == pytest.approx(v, abs=0.01)
    rows = score_rows(r)
    crop = next(x for x in rows if x["kind"] == "crop" and x["row"] == 0 and x["col"] == 1)
    assert crop["defect_noise"] == pytest.approx(float(r.maps.crop_grid(r.maps.defects)[1, 0, 1]))
    assert rows[0]["defect_blur"] == pytest.approx(r.defect_worst["blur"])


def test_defects_bad_input_is_a_clear_error(tiny_checkpoint, tmp_path, capsys):
    base = ["defects", "--model", str(tiny_checkpoint)]
    assert (
        cli.main(
            base + ["--photos", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o.safetensors")]
        )
        != 0
    )
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(base + ["--photos", str(empty), "--out", str(tmp_path / "o.safetensors")]) != 0
    assert "No image files" in capsys.readouterr().err
    small = _photos(tmp_path / "small", n=1, size=(100, 120))
    assert cli.main(base + ["--photos", str(small), "--out", str(tmp_path / "o.safetensors")]) != 0
    assert "224 pixels" in capsys.readouterr().err
    assert cli.main(base + ["--photos", str(small), "--out", str(tmp_path / "o.pt")]) == 2
    assert ".safetensors" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()
