"""``pmt-iqa finetune`` (called in-process through the parser)."""

from __future__ import annotations

import json

import pytest

from _iqa_data import make_dataset
from napari_pmt_iqa import cli
from napari_pmt_iqa.cli import finetune as cli_finetune
from napari_pmt_iqa.training import FinetuneConfig
from napari_pmt_iqa.weights import read_metadata


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("cli-ft"), n=26, size=80)


def _args(data, init, out, *more):
    return [
        "finetune",
        "--data",
        str(data),
        "--init",
        str(init),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        *more,
    ]


def test_defaults_are_the_recipe_s(data_csv, tmp_path):
    args = cli.build_parser().parse_args(["finetune", "--data", "d", "--out", "o"])
    assert args.func is cli_finetune.cmd_finetune
    cfg = cli_finetune.config_from_args(args)
    d = FinetuneConfig()
    assert cfg.init is None and cfg.backbone is None and cfg.epochs is None
    for name in (
        "holdout_fraction", "seed", "device", "refit", "batch_size", "lr", "adapt_head", "head_lr",
        "defect_score", "blend",
    ):  # fmt: skip
        assert getattr(cfg, name) == getattr(d, name), name
    args = cli.build_parser().parse_args(["finetune", "--data", "d", "--out", "o", "--heads-only"])
    assert cli_finetune.config_from_args(args).adapt_head is False
    args = cli.build_parser().parse_args(
        ["finetune", "--data", "d", "--out", "o", "--no-defect-score"]
    )
    assert cli_finetune.config_from_args(args).defect_score is False
    args = cli.build_parser().parse_args(["finetune", "--data", "d", "--out", "o", "--blend", "1"])
    assert cli_finetune.config_from_args(args).blend == 1.0


def test_finetune_prints_the_held_out_srcc_before_and_after(
    data_csv, tiny_checkpoint, tmp_path, capsys
):
    out = tmp_path / "run"
    rc = cli.main(_args(data_csv, tiny_checkpoint, out, "--epochs", "3", "--json"))
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "held-out part: 5 ratings; starting model SRCC" in text  # the printer's first line
    assert "held-out SRCC (5 ratings): starting model" in text and "-> fine-tuned" in text
    assert "refitted on all 26 ratings" in text
    report = json.loads((out / "report.json").read_text())
    assert f"{report['holdout_before']['srcc']:.4f}" in text
    assert f"{report['holdout_after']['srcc']:.4f}" in text
    assert '"holdout_after"' in text  # --json
    assert (out / "best.safetensors").exists()


def test_the_rating_widget_csv_keeps_the_rating_scale(tmp_path, tiny_checkpoint, capsys):
    import numpy as np
    from PIL import Image

    from _iqa_data import make_image

    rng = np.random.default_rng(0)
    (tmp_path / "r_images").mkdir()
    rows = ["image,mos,layer,plane"]
    for i in range(22):
        Image.fromarray(make_image(rng, 64, (i + 0.5) / 22)).save(
            tmp_path / "r_images" / f"p{i}.png"
        )
        rows.append(f"r_images/p{i}.png,{10 + 20 * (i % 5)},photos,{i}")
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    rc = cli.main(_args(tmp_path / "r.csv", tiny_checkpoint, tmp_path / "run", "--epochs", "2"))
    assert rc == 0, capsys.readouterr()
    meta = read_metadata(tmp_path / "run" / "best.safetensors")
    assert meta["score_scale"]["name"] == "quality (0-100, rated in napari)"


def test_too_few_ratings_exit_with_a_message(tmp_path, tiny_checkpoint, capsys):
    few = make_dataset(tmp_path / "few", n=8, size=64)
    rc = cli.main(_args(few, tiny_checkpoint, tmp_path / "run"))
    err = capsys.readouterr().err
    assert rc == 2 and "8 usable rated images" in err and "Rate at least 20" in err


def test_a_file_as_run_folder_is_refused(data_csv, tiny_checkpoint, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert cli.main(_args(data_csv, tiny_checkpoint, f)) == 2
    assert "is an existing file" in capsys.readouterr().err
