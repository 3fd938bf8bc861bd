"""``pmt-iqa score`` run in-process through ``cli.main``."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
from PIL import Image

from napari_pmt_iqa import cli
from napari_pmt_iqa.model import PMTIQA
from napari_pmt_iqa.score_scale import ScoreScale
from napari_pmt_iqa.weights import save_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = PMTIQA(backbone="tiny", pretrained=False).eval()
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_checkpoint(path, model, score_scale=ScoreScale(0, 100, name="MOS (test)"))


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "sub/c.png"):
        Image.fromarray((rng.random((240, 260, 3)) * 255).astype(np.uint8)).save(d / name)
    (d / "broken.png").write_text("not an image")
    (d / "readme.txt").write_text("ignored: not an image suffix")
    return d


def _read(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_score_folder_to_csv(ckpt, images, tmp_path, capsys):
    out = tmp_path / "res" / "scores.csv"
    rc = cli.main(
        ["score", str(images), "--csv", str(out), "--model", str(ckpt), "--device", "cpu"]
    )
    assert rc == 0
    rows = _read(out)
    by_name = {r["path"].split("/")[-1]: r for r in rows}
    assert set(by_name) == {"a.png", "b.jpg", "broken.png"}  # sub/ only with --recursive
    for name in ("a.png", "b.jpg"):
        r = by_name[name]
        assert r["error"] == "" and 0 <= float(r["score"]) <= 100
        assert r["units"] == "MOS (test)" and r["n_crops"] == "2"
        assert r["score_low"] == "0.0" and r["higher_is_better"] == "True"
        assert 1 <= int(r["quality_class"]) <= 10  # 1 = worst, as napari shows it
    assert "not a readable image" in by_name["broken.png"]["error"]
    assert by_name["broken.png"]["score"] == ""
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.png" in err and "warning: 1 of 3" in err
    assert [p.name for p in out.parent.iterdir()] == ["scores.csv"]  # no temporary files


def test_recursive_and_stdout(ckpt, images, capsys):
    rc = cli.main(
        ["score", str(images), "-r", "--model", str(ckpt), "--device", "cpu", "--no-progress"]
    )
    assert rc == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted(r["path"].split("/")[-1] for r in rows) == [
        "a.png",
        "b.jpg",
        "broken.png",
        "c.png",
    ]


def test_scores_match_the_python_api(ckpt, images, tmp_path):
    from napari_pmt_iqa.imaging import read_image
    from napari_pmt_iqa.scoring import score

    out = tmp_path / "s.csv"
    assert (
        cli.main(
            [
                "score",
                str(images / "a.png"),
                "--csv",
                str(out),
                "--model",
                str(ckpt),
                "--device",
                "cpu",
                "--precision",
                "fp32",
                "--method",
                "crops",
            ]
        )
        == 0
    )
    (row,) = _read(out)
    ref = score(read_image(images / "a.png"), str(ckpt), "cpu", method="crops", maps=False)
    assert float(row["score"]) == pytest.approx(ref.score, abs=1e-3)


def test_nothing_scorable_exits_1(ckpt, images, tmp_path, capsys):
    out = tmp_path / "bad.csv"
    rc = cli.main(
        [
            "score",
            str(images / "broken.png"),
            str(tmp_path / "missing.png"),
            "--csv",
            str(out),
            "--model",
            str(ckpt),
        ]
    )
    assert rc == 1
    rows = _read(out)
    assert [r["error"] != "" for r in rows] == [True, True]
    assert "file not found" in rows[0]["error"] + rows[1]["error"]
    assert "no image could be scored" in capsys.readouterr().err


def test_empty_folder_and_bad_model(ckpt, tmp_path, images, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["score", str(tmp_path / "empty"), "--model", str(ckpt)]) == 1
    assert "no image files" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_text("nope")
    assert cli.main(["score", str(images / "a.png"), "--model", str(bad)]) == 1
    assert "to be a safetensors checkpoint" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert (
            cli.main(["score", str(images / "a.png"), "--model", str(ckpt), "--device", "cuda:0"])
            == 1
        )
        assert "no usable CUDA GPU" in capsys.readouterr().err


def test_maps_dir_and_stacks(ckpt, tmp_path):
    import tifffile

    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(1)
    # 5 planes: a leading axis of 3 or 4 would be read as colour (channel-first RGB)
    tifffile.imwrite(
        d / "stack.tif",
        (rng.random((5, 230, 250)) * 4000).astype(np.uint16),
        photometric="minisblack",
    )
    Image.fromarray((rng.random((230, 250)) * 255).astype(np.uint8)).save(d / "one.png")
    out, maps = tmp_path / "s.csv", tmp_path / "maps"
    assert (
        cli.main(
            [
                "score",
                str(d),
                "--csv",
                str(out),
                "--model",
                str(ckpt),
                "--maps-dir",
                str(maps),
                "--no-progress",
            ]
        )
        == 0
    )
    rows = _read(out)
    stack_rows = [r for r in rows if r["path"].endswith("stack.tif")]
    assert [r["plane"] for r in stack_rows] == ["0", "1", "2", "3", "4"]
    assert [r["plane"] for r in rows if r["path"].endswith("one.png")] == [""]
    z = np.load(maps / "stack.npz")
    # one crop per 224 x 224 plane, its cell repeated 4 times outwards to cover the plane
    assert z["quality"].shape == (5, 9, 9) and z["scale_maps"].shape == (5, 4, 9, 9)
    assert z["score"] == pytest.approx([float(r["score"]) for r in stack_rows], abs=1e-3)
    assert np.load(maps / "one.npz")["quality"].shape == (1, 9, 9)


def test_torchrun_uses_the_distributed_helper(ckpt, images, tmp_path, monkeypatch):
    import napari_pmt_iqa.training.distributed as dist_mod

    seen = {}

    def fake(paths, model=None, **kw):
        seen["paths"], seen["model"], seen["kw"] = list(paths), model, kw
        return [{"path": str(p), "score": 42.0, "units": "u", "error": ""} for p in paths]

    monkeypatch.setattr(dist_mod, "distributed_score_files", fake)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "d.csv"
    assert (
        cli.main(
            [
                "score",
                str(images / "a.png"),
                "--csv",
                str(out),
                "--model",
                str(ckpt),
                "--precision",
                "bf16",
            ]
        )
        == 0
    )
    assert seen["model"] == str(ckpt) and seen["kw"]["precision"] == "bf16"
    (row,) = _read(out)
    assert row["score"] == "42.0" and row["plane"] == ""
    # other ranks get None from the helper and write nothing
    monkeypatch.setattr(dist_mod, "distributed_score_files", lambda *a, **k: None)
    monkeypatch.setenv("RANK", "1")
    other = tmp_path / "rank1.csv"
    assert (
        cli.main(["score", str(images / "a.png"), "--csv", str(other), "--model", str(ckpt)]) == 0
    )
    assert not other.exists()


def test_torchrun_without_the_helper_falls_back(ckpt, images, tmp_path, monkeypatch, capsys):
    import napari_pmt_iqa.training.distributed as dist_mod

    monkeypatch.delattr(dist_mod, "distributed_score_files")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "f.csv"
    assert (
        cli.main(
            [
                "score",
                str(images / "a.png"),
                "--csv",
                str(out),
                "--model",
                str(ckpt),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "single process" in capsys.readouterr().err
    assert _read(out)[0]["error"] == ""


def test_help_mentions_exit_status(capsys):
    with pytest.raises(SystemExit):
        cli.main(["score", "--help"])
    assert "Exit status" in capsys.readouterr().out


def test_no_rgb_reads_a_three_plane_tiff_as_a_stack(ckpt, tmp_path):
    import tifffile

    path = tmp_path / "three.tif"
    rng = np.random.default_rng(2)
    tifffile.imwrite(
        path, (rng.random((3, 230, 250)) * 4000).astype(np.uint16), photometric="minisblack"
    )
    auto, forced = tmp_path / "auto.csv", tmp_path / "forced.csv"
    assert (
        cli.main(["score", str(path), "--csv", str(auto), "--model", str(ckpt), "--no-progress"])
        == 0
    )
    assert (
        cli.main(
            [
                "score",
                str(path),
                "--csv",
                str(forced),
                "--model",
                str(ckpt),
                "--no-progress",
                "--no-rgb",
            ]
        )
        == 0
    )
    assert [r["plane"] for r in _read(auto)] == [""]  # detected as channel-first colour
    assert [r["plane"] for r in _read(forced)] == ["0", "1", "2"]  # three grey planes


def test_unwritable_csv_is_a_clear_error_before_scoring(ckpt, images, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    rc = cli.main(
        [
            "score",
            str(images),
            "--csv",
            str(blocker / "out.csv"),
            "--model",
            str(ckpt),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert "cannot write the CSV" in err and "Traceback" not in err
    # a CSV path that is an existing folder, and a maps folder that is a file: refused up front
    rc = cli.main(
        ["score", str(images), "--csv", str(tmp_path), "--model", str(ckpt), "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "is an existing folder; give a file name" in err
    rc = cli.main(
        ["score", str(images), "--maps-dir", str(blocker), "--model", str(ckpt), "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "is an existing file, not a folder" in err


@pytest.mark.parametrize(
    "opts, match",
    [
        (["--precision", "fp16"], "needs a GPU"),
        (["--memory-mb", "nan"], "memory_mb must be a positive"),
    ],
)
def test_bad_settings_fail_once_before_reading_files(ckpt, images, tmp_path, capsys, opts, match):
    rc = cli.main(
        [
            "score",
            str(images),
            "--model",
            str(ckpt),
            "--device",
            "cpu",
            "--no-progress",
            "--csv",
            str(tmp_path / "s.csv"),
            *opts,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and err.count(match) == 1 and not (tmp_path / "s.csv").exists()
