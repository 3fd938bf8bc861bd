"""torchrun / DDP on 2 CPU processes (gloo): same result as one process; distributed scoring."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from _iqa_data import make_dataset
from napari_pmt_iqa.training import TrainConfig, train
from napari_pmt_iqa.training.distributed import SCORE_COLUMNS, distributed_score_files
from napari_pmt_iqa.weights import load_checkpoint, read_metadata

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which(
    "torchrun"
)
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or TORCHRUN is None,
    reason="torch.distributed / torchrun not available",
)

#: Tolerance of the 2-process vs 1-process comparison (frozen backbone; only the reduction
#: order of the gradient all-reduce and of the CPU kernels differs). Adam turns a rounding
#: difference in a near-zero gradient into up to a few 1e-5 of weight: largest difference measured
#: 6.6e-6 with torch 2.14.1, 2.1e-5 with torch 2.2.0, while one step at lr 1e-3 moves weights ~1e-3.
ATOL = 5e-5


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _torchrun(args, timeout=240, attempts=2):
    """Run torchrun with 2 processes; a run that hangs is stopped (torchrun stops its workers on
    SIGTERM) and tried once more: torchrun's rendezvous hung once in CI (a run that normally takes
    7 s); a hang of our own code would hang both attempts and fail the test."""
    import signal
    import tempfile

    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", "2", *args]
    for attempt in range(attempts):
        # output to files, not pipes: a worker left behind would keep a pipe open
        with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
            proc = subprocess.Popen(
                cmd, stdout=fo, stderr=fe, text=True, env=_env(), start_new_session=True
            )
            try:
                proc.wait(timeout=timeout)
                hung = False
            except subprocess.TimeoutExpired:
                hung = True
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            fo.seek(0)
            fe.seek(0)
            out, err = fo.read(), fe.read()
        if hung:
            if attempt + 1 < attempts:
                continue
            raise AssertionError(
                f"torchrun hung {attempts} times ({timeout} s each): {out[-2000:]}{err[-2000:]}"
            )
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_ddp_two_processes_match_one_process(tmp_path):
    data = make_dataset(tmp_path / "data", n=24, size=96)
    common = dict(
        backbone="tiny",
        pretrained=False,
        epochs=2,
        batch_size=4,
        freeze_backbone=True,
        lr=1e-3,
        device="cpu",
    )
    single = train(TrainConfig(data=data, out_dir=tmp_path / "one", **common))
    _torchrun(
        [
            "-m",
            "napari_pmt_iqa",
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "two"),
            "--backbone",
            "tiny",
            "--no-pretrained",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--freeze-backbone",
            "--lr",
            "1e-3",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    meta = read_metadata(tmp_path / "two" / "last.safetensors")
    assert meta["training"]["world_size"] == 2
    assert meta["training"]["data"]["n_train"] == single.n_train
    a = load_checkpoint(single.last_path).state_dict()
    b = load_checkpoint(tmp_path / "two" / "last.safetensors").state_dict()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=ATOL), k
    v1 = read_metadata(single.last_path)["metrics"]["val"]
    v2 = meta["metrics"]["val"]
    assert v1["n"] == v2["n"] == single.n_val
    for m in ("srcc", "plcc", "krcc"):
        assert v2[m] == pytest.approx(v1[m], abs=1e-3)
    # only rank 0 wrote files: exactly one set, no stray temporaries
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert names == ["best.safetensors", "last.safetensors", "state.pt"]


def test_ddp_without_the_multiscale_taps_and_with_synthetic_pairs(tmp_path):
    """The ablation (no MS taps) and the distortion-aware objective under torchrun: every
    parameter takes part in the loss (DDP raises otherwise), and the pairs are shared out."""
    from PIL import Image

    from _iqa_data import make_image

    data = make_dataset(tmp_path / "data", n=16, size=96)
    photos = tmp_path / "pristine"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(make_image(rng, 256, 1.0)).save(photos / f"p{i}.png")
    _torchrun(
        [
            "-m",
            "napari_pmt_iqa",
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "two"),
            "--backbone",
            "tiny",
            "--no-pretrained",
            "--no-multiscale",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--no-progress",
            "--synthetic",
            str(photos),
            "--synthetic-pairs",
            "2",
            "--synthetic-kinds",
            "blur",
            "noise",
        ]
    )
    meta = read_metadata(tmp_path / "two" / "last.safetensors")
    assert meta["training"]["world_size"] == 2 and meta["config"]["multiscale"] is False
    assert meta["training"]["synthetic"]["kinds"] == ["blur", "noise"]
    model = load_checkpoint(tmp_path / "two" / "last.safetensors")
    assert len(model.reduce) == 0  # no tap convolutions that would feed nothing


def test_distributed_scoring_merges_in_input_order(tmp_path, tiny_checkpoint):
    data = make_dataset(tmp_path / "imgs", n=5, size=64)
    files = sorted(str(p) for p in data.parent.glob("*.png"))
    (tmp_path / "imgs" / "broken.png").write_bytes(b"nope")
    files.insert(2, str(tmp_path / "imgs" / "broken.png"))
    script = tmp_path / "score.py"
    script.write_text(
        textwrap.dedent(f"""
        from napari_pmt_iqa.training.distributed import distributed_score_files
        rows = distributed_score_files({files!r}, model={str(tiny_checkpoint)!r}, device="cpu",
                                       out_csv={str(tmp_path / "two.csv")!r})
        import torch.distributed as dist, os
        assert (rows is None) == (os.environ["RANK"] != "0")
    """)
    )
    _torchrun([str(script)])
    one = distributed_score_files(files, model=tiny_checkpoint, device="cpu")
    with open(tmp_path / "two.csv", newline="") as f:
        two = list(csv.DictReader(f))
    assert list(two[0]) == list(SCORE_COLUMNS)
    assert [r["path"] for r in two] == files
    assert [r["score"] for r in two] == [str(r["score"]) for r in one]
    assert two[2]["score"] == "" and "broken.png" in two[2]["error"]
    assert all(r["error"] == "" for k, r in enumerate(two) if k != 2)


def test_sync_batchnorm_only_for_multi_gpu_runs_with_a_trainable_backbone():
    from napari_pmt_iqa.training.distributed import use_sync_batchnorm

    cfg = TrainConfig()
    assert use_sync_batchnorm(cfg, 2, "cuda")
    assert not use_sync_batchnorm(cfg, 1, "cuda")  # one process: nothing to synchronise
    assert not use_sync_batchnorm(cfg, 2, "cpu")  # PyTorch's SyncBatchNorm needs a GPU
    assert not use_sync_batchnorm(TrainConfig(freeze_backbone=True), 2, "cuda")
    assert not use_sync_batchnorm(TrainConfig(sync_batchnorm=False), 2, "cuda")


def test_sync_batchnorm_conversion_keeps_parameters_and_checkpoint_keys():
    from napari_pmt_iqa.model import PMTIQA

    model = PMTIQA(backbone="efficientnet_lite0", pretrained=False)
    params = {n: p for n, p in model.named_parameters()}
    keys = set(model.state_dict())
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert n_bn > 0
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted is model  # converted in place: the trainer saves and evaluates `model`
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()) == n_bn
    assert set(model.state_dict()) == keys  # checkpoints load into a plain PMTIQA
    # the optimiser, built before the conversion, still holds the live parameters
    for n, p in model.named_parameters():
        assert p is params[n]
