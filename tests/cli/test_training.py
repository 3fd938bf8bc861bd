"""``pmt-iqa train / eval / protocol`` (called in-process through the parser)."""

from __future__ import annotations

import argparse
import csv

import pytest

from _iqa_data import make_dataset
from napari_pmt_iqa import cli
from napari_pmt_iqa.cli import _common
from napari_pmt_iqa.cli import eval as cli_eval
from napari_pmt_iqa.cli import protocol as cli_protocol
from napari_pmt_iqa.cli import train as cli_train
from napari_pmt_iqa.weights import read_metadata

TINY = [
    "--backbone",
    "tiny",
    "--no-pretrained",
    "--batch-size",
    "4",
    "--device",
    "cpu",
    "--no-progress",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("cli"), n=20, size=80).parent


def test_subcommands_plug_into_the_main_parser():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    for verb in (cli_train, cli_eval, cli_protocol):
        verb.add_subcommands(sub)
    args = p.parse_args(["train", "--data", "d", "--out", "o", "--constant-weights"])
    assert args.func is cli_train.cmd_train
    cfg = _common.config_from_args(args)
    assert cfg.progressive is False and cfg.loss_weights == (1.0, 1.0) and cfg.lr == 1e-4
    assert (
        p.parse_args(["eval", "--data", "d", "--model", "m"]).func is cli_eval.cmd_eval
        and cli.build_parser().parse_args(["protocol", "--data", "d", "--out", "o"]).func
        is cli_protocol.cmd_protocol
    )


def test_kind_margin_and_zoom_flags_reach_the_config(capsys):
    p = cli.build_parser()
    base = ["train", "--data", "d", "--out", "o", "--synthetic", "photos"]
    cfg = _common.config_from_args(p.parse_args(base))
    assert cfg.synthetic_kind_margin is None and cfg.synthetic_zoom == 1.0
    args = p.parse_args(
        base + ["--synthetic-kind-margin", "jpeg=15", "webp=12.5", "--synthetic-zoom", "1.5"]
    )
    cfg = _common.config_from_args(args)
    assert cfg.synthetic_kind_margin == {"jpeg": 15.0, "webp": 12.5}
    assert cfg.synthetic_zoom == 1.5
    for bad in ("jpeg", "jpeg=", "jpeg=-3", "=4", "jpeg=x"):
        with pytest.raises(SystemExit):
            p.parse_args(base + ["--synthetic-kind-margin", bad])
        assert "is not KIND=POINTS" in capsys.readouterr().err


def test_train_then_eval(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(
        [
            "train",
            "--data",
            str(data_dir),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--score-range",
            "0",
            "100",
            *TINY,
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "val SRCC" in text and text.count("*") >= 1  # the per-epoch table
    assert read_metadata(out / "best.safetensors")["training"]["recipe"]["epochs"] == 2
    rc = cli.main(
        [
            "eval",
            "--model",
            str(out / "best.safetensors"),
            "--data",
            str(data_dir),
            "--device",
            "cpu",
            "--predictions",
            str(tmp_path / "pred.csv"),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "SRCC" in text and "PLCC" in text and "KRCC" in text and "n=20" in text
    with open(tmp_path / "pred.csv") as f:
        assert len(list(csv.DictReader(f))) == 20


def test_train_bad_data_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "x.csv").write_text("img,quality\na.png,1\n")
    rc = cli.main(["train", "--data", str(tmp_path / "x.csv"), "--out", str(tmp_path / "o"), *TINY])
    err = capsys.readouterr().err
    assert rc == _common.EXIT_ERROR and "error:" in err and "'image' and 'mos'" in err
    rc = cli.main(
        ["eval", "--model", str(tmp_path / "none.safetensors"), "--data", str(tmp_path / "x.csv")]
    )
    assert rc == _common.EXIT_ERROR


def test_protocol_writes_every_split_and_medians(data_dir, tmp_path, capsys):
    out = tmp_path / "proto"
    rc = cli.main(
        [
            "protocol",
            "--data",
            str(data_dir),
            "--out",
            str(out),
            "--splits",
            "2",
            "--epochs",
            "1",
            "--limit",
            "16",
            *TINY,
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "median SRCC" in text
    with open(out / "protocol.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["split"] for r in rows] == ["0", "1", "median"]
    assert all(int(r["n_test"]) == 3 for r in rows[:2])  # 20% of the 16-image subset (limit)
    assert float(rows[2]["test_srcc"]) == pytest.approx(
        sorted(float(r["test_srcc"]) for r in rows[:2])[0] / 2
        + sorted(float(r["test_srcc"]) for r in rows[:2])[1] / 2
    )
    assert (out / "split_00" / "best.safetensors").exists() and (
        out / "split_01" / "best.safetensors"
    ).exists()


def test_eval_leaves_out_unreadable_images_and_checks_outputs_first(
    tmp_path, tiny_checkpoint, capsys
):
    csv_path = make_dataset(tmp_path / "d", n=9, size=64)
    (tmp_path / "d" / "img_004.png").write_bytes(b"not an image at all")
    # a predictions path that is a folder is refused before any scoring
    rc = cli.main(
        [
            "eval",
            "--model",
            str(tiny_checkpoint),
            "--data",
            str(csv_path),
            "--device",
            "cpu",
            "--predictions",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert rc == _common.EXIT_ERROR and "is an existing folder" in err
    rc = cli.main(
        [
            "eval",
            "--model",
            str(tiny_checkpoint),
            "--data",
            str(csv_path),
            "--device",
            "cpu",
            "--predictions",
            str(tmp_path / "p.csv"),
        ]
    )
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "left out" in cap.err and "img_004.png" in cap.err
    assert "n=8" in cap.out
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and [r["prediction"] for r in rows if "img_004" in r["path"]] == [
        ""
    ]  # NaN: an empty cell


def test_training_input_mistakes_get_the_right_hint(tmp_path, capsys):
    csv_path = make_dataset(tmp_path / "d", n=8, size=64)
    text = csv_path.read_text().splitlines()
    all_test = tmp_path / "d" / "all_test.csv"
    all_test.write_text("\n".join([text[0] + ",split"] + [r + ",test" for r in text[1:]]) + "\n")
    rc = cli.main(["train", "--data", str(all_test), "--out", str(tmp_path / "o"), *TINY])
    err = capsys.readouterr().err
    assert rc == _common.EXIT_ERROR and "marked split=test" in err and "Lower batch_size" not in err
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = cli.main(["train", "--data", str(csv_path), "--out", str(blocker), *TINY])
    err = capsys.readouterr().err
    assert rc == _common.EXIT_ERROR and "is an existing file" in err
    rc = cli.main(
        ["train", "--data", str(csv_path), "--out", str(tmp_path / "o2"), "--limit", "0", *TINY]
    )
    err = capsys.readouterr().err
    assert rc == _common.EXIT_ERROR and "limit must be at least 1" in err


def test_the_backbone_choices_are_the_models_backbones():
    from napari_pmt_iqa.cli._common import BACKBONE_CHOICES
    from napari_pmt_iqa.model import available_backbones

    assert set(BACKBONE_CHOICES) == set(available_backbones())
