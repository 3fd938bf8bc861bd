"""The trainer: recipe knobs, checkpoints, events, stop/pause/resume, crash safety, bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from _iqa_data import make_dataset, make_pairs
from napari_pmt_iqa.training import TrainConfig, TrainingError, train
from napari_pmt_iqa.training import events as E
from napari_pmt_iqa.training.evaluation import evaluate
from napari_pmt_iqa.weights import load_checkpoint, read_metadata

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("iqa"), n=20, size=96)


def tiny(data, out, **kw) -> TrainConfig:
    base = dict(
        data=data,
        out_dir=out,
        backbone="tiny",
        pretrained=False,
        epochs=2,
        batch_size=4,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def _states_equal(a: dict, b: dict, atol: float = 0.0) -> bool:
    if a.keys() != b.keys():
        return False
    if atol == 0:
        return all(torch.equal(a[k], b[k]) for k in a)
    return all(torch.allclose(a[k].double(), b[k].double(), rtol=1e-5, atol=atol) for k in a)


def test_train_writes_checkpoints_history_and_events(data_csv, tmp_path):
    log = E.EventLog()
    r = train(tiny(data_csv, tmp_path / "run", epochs=3), listeners=[log])
    assert not r.stopped and r.epochs_done == 3 and len(r.history) == 3
    assert r.n_train == 16 and r.n_val == 4
    for name in ("best.safetensors", "last.safetensors", "state.pt"):
        assert (tmp_path / "run" / name).exists()
    assert not list((tmp_path / "run").glob("*.tmp"))
    # progressive schedule: classification first, regression last
    assert [h["w_reg"] for h in r.history] == [0.0, 0.5, 1.0]
    assert all(math.isfinite(h["val_srcc"]) for h in r.history)
    # the best checkpoint is the epoch with the best validation SRCC
    best = max(range(3), key=lambda e: (r.history[e]["val_srcc"], -e))
    assert r.best_epoch == best
    meta = read_metadata(r.best_path)
    assert meta["score_scale"]["high"] == 100.0
    assert meta["metrics"]["val"]["srcc"] == pytest.approx(r.history[best]["val_srcc"])
    assert (
        meta["training"]["recipe"]["lr"] == 1e-4 and meta["training"]["recipe"]["head_lr"] == 1e-3
    )
    assert meta["training"]["data"]["n_train"] == 16
    model = load_checkpoint(r.best_path)
    assert model.config.backbone == "tiny"
    # events: one interface, typed, in order
    kinds = [type(e).__name__ for e in log.events if not isinstance(e, E.Preparing)]
    assert kinds[0] == "Started" and kinds[-1] == "Finished"
    assert len(log.of(E.BatchEnd)) == 3 * 4 and len(log.of(E.EpochEnd)) == 3
    assert {c.kind for c in log.of(E.CheckpointSaved)} == {"best", "last", "state"}
    b = log.of(E.BatchEnd)[0]
    assert b.images_per_s > 0 and b.data_s >= 0 and b.step_s > 0
    json.dumps([e.to_dict() for e in log.events])  # plain data
    st = torch.load(r.state_path, weights_only=True)
    assert st["epoch"] == 3 and st["batch"] == 0


def test_knobs_constant_weights_lr_step_freeze_crops(data_csv, tmp_path):
    torch.manual_seed(0)
    cfg = tiny(
        data_csv,
        tmp_path,
        progressive=False,
        loss_weights=(1.0, 0.5),
        lr_step=1,
        freeze_backbone=True,
        crops_per_image=2,
        lr=1e-3,
        head_lr=5e-3,
        max_batches=2,
        epochs=3,
    )
    from napari_pmt_iqa.model import PMTIQA

    torch.manual_seed(cfg.seed)
    before = PMTIQA(backbone="tiny", pretrained=False).backbone.state_dict()
    log = E.EventLog()
    r = train(cfg, listeners=[log])
    ep = log.of(E.EpochEnd)
    assert [(e.w_reg, e.w_cls) for e in ep] == [(1.0, 0.5)] * 3
    # the authors' step decay: the rate set at the end of epoch t is lr / 10 ** (t // lr_step),
    # so with lr_step 1 epochs 0 and 1 run at lr and epoch 2 at lr / 10
    assert [e.lr for e in ep] == pytest.approx([1e-3, 1e-3, 1e-4])
    assert len(log.of(E.BatchEnd)) == 6  # max_batches per epoch
    after = load_checkpoint(r.last_path).backbone.state_dict()
    assert _states_equal(before, after)  # frozen backbone, batch-norm statistics included
    heads = load_checkpoint(r.last_path).reg_head.weight
    torch.manual_seed(cfg.seed)
    assert not torch.equal(heads, PMTIQA(backbone="tiny", pretrained=False).reg_head.weight)


def test_in_memory_pairs_and_checkpoint_scale(tmp_path):
    pairs = make_pairs(12, size=64, scale=5.0)
    r = train(tiny(pairs, tmp_path / "a", epochs=1))
    assert read_metadata(r.best_path)["score_scale"]["high"] == 5.0
    # fine-tuning that checkpoint on scores within its range keeps its scale
    pairs2 = [(a, m * 0.8) for a, m in pairs]
    r2 = train(tiny(pairs2, tmp_path / "b", epochs=1, init=r.best_path))
    meta = read_metadata(r2.best_path)
    assert meta["score_scale"]["high"] == 5.0 and meta["config"]["backbone"] == "tiny"


def test_evaluate_uses_the_deterministic_grid(data_csv, tmp_path):
    r = train(tiny(data_csv, tmp_path, epochs=1))
    m1 = evaluate(r.best_path, data_csv, device="cpu")
    m2 = evaluate(r.best_path, data_csv, device="cpu")
    assert m1 == m2 and m1["n"] == 20 and math.isfinite(m1["srcc"])


def _stop_at(control, epoch, batch):
    def listener(ev):
        if isinstance(ev, E.BatchEnd) and (ev.epoch, ev.batch) == (epoch, batch):
            control.request_stop()

    return listener


@pytest.mark.parametrize("stop_at", [(1, 1), (0, 3)])
def test_stop_and_resume_equals_uninterrupted(data_csv, tmp_path, stop_at):
    """Stopped at an epoch end: bitwise equal. Stopped mid-epoch: equal up to float rounding
    (about 1e-8 here: the CPU batch-norm statistics kernel sums in an order that depends on
    memory alignment, which differs in a new process), so compared with rtol 1e-5, atol 1e-6."""
    full = train(tiny(data_csv, tmp_path / "full", epochs=3))
    ctl = E.Control()
    log = E.EventLog()
    part = train(
        tiny(data_csv, tmp_path / "part", epochs=3),
        listeners=[_stop_at(ctl, *stop_at), log],
        control=ctl,
    )
    assert part.stopped and part.state_path
    stopped = log.of(E.Stopped)[0]
    assert (stopped.epoch, stopped.batch) == (stop_at[0], stop_at[1] + 1)
    st = torch.load(part.state_path, weights_only=True)
    assert (st["epoch"], st["batch"]) == (stop_at[0], stop_at[1] + 1)
    log2 = E.EventLog()
    res = train(
        tiny(data_csv, tmp_path / "part", epochs=3, resume=part.state_path), listeners=[log2]
    )
    started = log2.of(E.Started)[0]
    assert (started.start_epoch, started.start_batch) == (stop_at[0], stop_at[1] + 1)
    assert not res.stopped and res.epochs_done == 3
    a = load_checkpoint(full.last_path).state_dict()
    b = load_checkpoint(res.last_path).state_dict()
    mid_epoch = stop_at[1] + 1 < 4
    assert _states_equal(a, b, atol=1e-6 if mid_epoch else 0.0)
    assert [h["val_srcc"] for h in res.history] == pytest.approx(
        [h["val_srcc"] for h in full.history], abs=1e-6
    )
    assert [h["train_loss"] for h in res.history] == pytest.approx(
        [h["train_loss"] for h in full.history]
    )
    assert res.best_epoch == full.best_epoch


def test_resume_refuses_other_settings(data_csv, tmp_path):
    r = train(tiny(data_csv, tmp_path, epochs=1))
    with pytest.raises(TrainingError, match="batch_size: 4 then, 2 now"):
        train(tiny(data_csv, tmp_path / "x", epochs=1, batch_size=2, resume=r.state_path))
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(TrainingError, match="not a readable training state"):
        train(tiny(data_csv, tmp_path / "y", resume=tmp_path / "junk.pt"))


def test_pause_and_resume_events(data_csv, tmp_path):
    ctl = E.Control()
    log = E.EventLog()

    def listener(ev):
        if isinstance(ev, E.BatchEnd) and (ev.epoch, ev.batch) == (0, 1):
            ctl.pause()
            threading.Timer(0.3, ctl.resume).start()

    r = train(tiny(data_csv, tmp_path, epochs=1), listeners=[listener, log], control=ctl)
    assert not r.stopped
    p, q = log.of(E.Paused), log.of(E.Resumed)
    assert len(p) == 1 and len(q) == 1 and (p[0].epoch, p[0].batch) == (0, 2)
    kinds = [type(e) for e in log.events]
    assert kinds.index(E.Paused) + 1 == kinds.index(E.Resumed)


def test_stop_while_paused(data_csv, tmp_path):
    ctl = E.Control()

    def listener(ev):
        if isinstance(ev, E.BatchEnd) and ev.batch == 0:
            ctl.pause()
            threading.Timer(0.2, ctl.request_stop).start()

    r = train(tiny(data_csv, tmp_path, epochs=1), listeners=[listener], control=ctl)
    assert r.stopped


def test_killed_during_checkpoint_write_leaves_previous_usable(data_csv, tmp_path):
    """A process killed (os._exit) in the middle of an atomic write keeps the last good files."""
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(TESTS)!r})
        import napari_pmt_iqa.weights as w
        from napari_pmt_iqa.training import TrainConfig, train
        calls = {{"n": 0}}
        real = os.fsync
        def dying_fsync(fd):
            calls["n"] += 1
            if calls["n"] == 5:  # epoch 2: last written, best being written -> die half-way
                os.write(fd, b"partial")
                os._exit(17)
            return real(fd)
        os.fsync = dying_fsync
        train(TrainConfig(data={str(data_csv)!r}, out_dir={str(out)!r}, backbone="tiny",
                          pretrained=False, epochs=3, batch_size=4, device="cpu",
                          progressive=False, val_fraction=0))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert proc.returncode == 17, proc.stderr[-2000:]
    assert list(out.glob(".best.safetensors.*.tmp"))  # the torn write is a temporary file
    model = load_checkpoint(out / "best.safetensors")  # epoch 1's best: intact
    assert read_metadata(out / "best.safetensors")["metrics"]["epoch"] == 0
    assert read_metadata(out / "last.safetensors")["metrics"]["epoch"] == 1
    st = torch.load(out / "state.pt", weights_only=True)
    assert st["epoch"] == 1
    assert model.config.backbone == "tiny"
    # and the run continues from the state file
    r = train(
        tiny(data_csv, out, epochs=3, progressive=False, val_fraction=0, resume=out / "state.pt")
    )
    assert r.epochs_done == 3 and read_metadata(r.best_path)["metrics"]["epoch"] == 2


# --------------------------------------------------------------------------- bad input
def _fails(cfg, match):
    log = E.EventLog()
    with pytest.raises(TrainingError, match=match):
        train(cfg, listeners=[log])
    failed = log.of(E.Failed)
    assert len(failed) == 1 and failed[0].message
    return failed[0]


def test_bad_csv_and_scores(tmp_path):
    (tmp_path / "a.csv").write_text("name,quality\nx.png,1\n")
    _fails(tiny(tmp_path / "a.csv", tmp_path / "o"), "'image' and 'mos'")
    d = tmp_path / "d"
    make_dataset(d, n=8, size=32)
    text = (d / "scores.csv").read_text().splitlines()
    text[3] = text[3].split(",")[0] + ",oops"
    (d / "scores.csv").write_text("\n".join(text))
    _fails(tiny(d / "scores.csv", tmp_path / "o"), "non-numeric")
    _fails(tiny(tmp_path / "nowhere", tmp_path / "o"), "does not exist")


def test_constant_scores_and_zero_width_range(tmp_path):
    pairs = [(a, 3.0) for a, _ in make_pairs(8, size=32)]
    _fails(tiny(pairs, tmp_path), "equal")
    f = _fails(tiny(make_pairs(8, size=32), tmp_path, score_scale=(2.0, 2.0)), "score range")
    assert "zero" in f.message


def test_smaller_than_a_batch(tmp_path):
    f = _fails(tiny(make_pairs(6, size=32), tmp_path, batch_size=8), "fewer than one batch")
    assert "batch_size" in f.hint


def test_bad_settings(data_csv, tmp_path):
    _fails(tiny(data_csv, tmp_path, precision="fp16"), "fp16")
    _fails(tiny(data_csv, tmp_path, epochs=0), "epochs")
    _fails(tiny(data_csv, tmp_path, device="cuda:3"), "CUDA|GPU")


def test_few_bad_images_are_left_out_with_a_warning(tmp_path):
    d = tmp_path / "d"
    make_dataset(d, n=20, size=64)
    (d / "img_004.png").write_bytes(b"corrupt")
    log = E.EventLog()
    with pytest.warns(RuntimeWarning, match="img_004.png"):
        r = train(tiny(d, tmp_path / "o", epochs=1), listeners=[log])
    assert r.n_train + r.n_val == 19 and any("img_004" in s for s in r.skipped)
    assert any("img_004" in i for i in log.of(E.DataIssue)[0].items)


def test_many_bad_images_is_an_error(tmp_path):
    d = tmp_path / "d"
    make_dataset(d, n=10, size=64)
    for i in range(4):
        (d / f"img_{i:03d}.png").write_bytes(b"corrupt")
    _fails(tiny(d, tmp_path / "o"), "4 of 10 images cannot be used")


def test_out_of_memory_names_the_setting_to_lower(data_csv, tmp_path, monkeypatch):
    from napari_pmt_iqa.model import PMTIQA

    def boom(self, *a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(PMTIQA, "forward", boom)
    f = _fails(tiny(data_csv, tmp_path), "ran out of memory")
    assert "--batch-size" in f.hint and "--crops-per-image" in f.hint


def test_a_broken_listener_does_not_stop_training(data_csv, tmp_path):
    def bad(ev):
        raise ValueError("listener bug")

    with pytest.warns(RuntimeWarning, match="listener failed"):
        r = train(tiny(data_csv, tmp_path, epochs=1, max_batches=1), listeners=[bad])
    assert r.epochs_done == 1


def test_validation_split_column_and_test_rows_unused(tmp_path):
    d = tmp_path / "d"
    make_dataset(d, n=20, size=64, split=True)  # every 5th row is "test"
    r = train(tiny(d, tmp_path / "o", epochs=1))
    assert r.n_train + r.n_val == 16  # the 4 test rows are never used
    cfg = replace(tiny(d, tmp_path / "o2", epochs=1), val_fraction=0)
    r = train(cfg)
    assert r.n_val == 0 and r.best_epoch == 0 and r.best_val == {}
    assert np.isfinite(r.history[0]["train_loss"])


def test_an_epoch_whose_validation_gives_nan_scores_is_never_best(data_csv, tmp_path, monkeypatch):
    from napari_pmt_iqa.scoring import ModelOutputError
    from napari_pmt_iqa.training import trainer as T

    real = T.predict_images
    calls = {"n": 0}

    def second_epoch_diverges(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ModelOutputError("The model produced NaN or infinite scores")
        return real(*a, **k)

    monkeypatch.setattr(T, "predict_images", second_epoch_diverges)
    events = []
    r = train(tiny(data_csv, tmp_path, epochs=2, max_batches=2), listeners=[events.append])
    assert r.epochs_done == 2 and calls["n"] == 2
    assert any(
        isinstance(e, E.DataIssue) and "Validation of this epoch failed" in e.message
        for e in events
    )
    assert r.best_epoch == 0  # the NaN epoch did not replace the good one


def test_no_validation_part_is_said(data_csv, tmp_path):
    events = []
    with pytest.warns(RuntimeWarning, match="validation part has 0 image"):
        r = train(
            tiny(data_csv, tmp_path, epochs=1, max_batches=1, val_fraction=0.0),
            listeners=[events.append],
        )
    assert r.epochs_done == 1
    assert any(isinstance(e, E.DataIssue) and "last one is kept" in e.message for e in events)


def test_paper_settings_and_honest_defaults():
    paper = TrainConfig.paper()
    assert (paper.backbone, paper.epochs, paper.batch_size, paper.crops_per_image) == (
        "resnet50",
        30,
        12,
        4,
    )
    assert paper.head_lr == paper.lr and paper.lr_step == 6 and paper.progressive
    assert TrainConfig.paper(epochs=3).epochs == 3
    # the defaults are a CPU-sized variant, and the docstring says so
    assert "paper's own settings" in TrainConfig.__doc__
    assert TrainConfig().backbone == "efficientnet_lite0"


def test_validation_keeps_the_memory_format_of_the_training_model(tiny_model):
    import copy

    import numpy as np

    from napari_pmt_iqa.training.evaluation import predict_images

    model = copy.deepcopy(tiny_model).train()
    w = next(p for p in model.parameters() if p.ndim == 4)
    assert w.is_contiguous()
    imgs = [np.full((256, 256, 3), v, np.uint8) for v in (60, 120, 180)]
    predict_images(model, imgs.__getitem__, range(3), device="cpu")
    assert w.is_contiguous() and not w.is_contiguous(memory_format=torch.channels_last)
    assert model.training  # back in training mode


def test_evaluate_takes_the_held_out_part_of_a_biq2021_folder(tmp_path, tiny_model):
    from PIL import Image

    from napari_pmt_iqa.training import evaluate

    root = tmp_path / "BIQ2021"
    (root / "Images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for part, n in (("Train", 6), ("Test", 4)):
        rows = []
        for i in range(n):
            name = f"{part.lower()}{i}.jpg"
            Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(
                root / "Images" / name
            )
            rows.append(f"{name},{(i + 1) / (n + 1):.3f}")
        (root / f"{part} (Images and MOS).csv").write_text("Image,MOS\n" + "\n".join(rows) + "\n")
    assert evaluate(tiny_model, root, device="cpu")["n"] == 4
    assert evaluate(tiny_model, root, device="cpu", part="train")["n"] == 6


def test_a_state_of_other_settings_is_refused_both_ways(tmp_path):
    """A setting recorded in either the saved or the new fingerprint must match (e.g. a fine-tune
    that kept the defect-aware score is not resumed by one that drops it)."""
    from napari_pmt_iqa.model import PMTIQA
    from napari_pmt_iqa.training.state import load_state, save_state

    model = PMTIQA(backbone="tiny", pretrained=False)
    opt = torch.optim.Adam(model.parameters())
    base = {"recipe": "r", "seed": 0}
    path = tmp_path / "state.pt"
    save_state(
        path, model, opt, None, 1, 0, [0.0], [None, None, {}], [], {**base, "defect_score": True}
    )
    with pytest.raises(TrainingError, match="defect_score: True then, None now"):
        load_state(path, base)
    save_state(path, model, opt, None, 1, 0, [0.0], [None, None, {}], [], base)
    with pytest.raises(TrainingError, match="defect_score: None then, True now"):
        load_state(path, {**base, "defect_score": True})
    st, _ = load_state(path, base)
    assert st["epoch"] == 1
