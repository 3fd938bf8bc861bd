"""The few-shot recipe (training/finetune.py, heads_fit.py, features.py) with the tiny backbone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _iqa_data import make_dataset, make_pairs, stop_at_step
from napari_pmt_iqa.scoring import score
from napari_pmt_iqa.training import FinetuneConfig, TrainingError, finetune
from napari_pmt_iqa.training.events import Control, EventLog, Preparing
from napari_pmt_iqa.training.features import FeatureLayout, heads_from_features, window_features
from napari_pmt_iqa.training.finetune import (
    RECIPE,
    Baseline,
    Refitting,
    holdout_split,
    is_ratings_csv,
    ratings_scale,
)
from napari_pmt_iqa.training.heads_fit import (
    FeaturePack,
    calibrate_regression,
    epoch_batches,
    image_scores,
    ranking_hinge,
)
from napari_pmt_iqa.weights import load_checkpoint, read_metadata


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ft"), n=30, size=96)


def _cfg(data, init, out, **kw):
    return FinetuneConfig(data=str(data), init=str(init), out_dir=str(out), device="cpu", **kw)


# --------------------------------------------------------------------------- features
def test_heads_on_cached_features_give_the_scores_of_score(tiny_model, rgb_image):
    img = np.ascontiguousarray(rgb_image[:, :, :3])
    feats, n = window_features(tiny_model, img)
    assert n == feats.shape[0] == 2 * 3  # 260 x 300 -> 256 x 288: 2 x 3 windows of 224
    assert feats.shape[1] == FeatureLayout.of(tiny_model).dim
    with torch.no_grad():
        s, logits = heads_from_features(tiny_model, feats)
    ref = score(img, model=tiny_model, device="cpu", maps=True)
    internal = tiny_model_scale(tiny_model).to_internal(ref.crop_scores.ravel())
    np.testing.assert_allclose(s.numpy(), internal, rtol=1e-4, atol=1e-3)
    assert float(image_scores(tiny_model, FeaturePack([feats], [0.0]))[0]) == pytest.approx(
        float(np.mean(internal)), abs=1e-3
    )
    # a sample of the windows, and the same sample again for the same seed
    some, n2 = window_features(tiny_model, img, max_windows=4, seed=3)
    again, _ = window_features(tiny_model, img, max_windows=4, seed=3)
    assert n2 == n and some.shape[0] == 4 and torch.equal(some, again)
    assert all(any(torch.allclose(r, f, atol=1e-5) for f in feats) for r in some)
    # tiles within a small memory budget give the same windows (up to the tiles' context)
    tiled, _ = window_features(tiny_model, img, memory_mb=16)
    assert tiled.shape == feats.shape


def tiny_model_scale(model):
    from napari_pmt_iqa.score_scale import ScoreScale

    return getattr(model, "score_scale", None) or ScoreScale()


def test_calibration_is_folded_exactly_into_the_regression_head(tiny_model, rgb_image):
    import copy

    model = copy.deepcopy(tiny_model)
    feats, _ = window_features(model, np.ascontiguousarray(rgb_image))
    pack = FeaturePack([feats[:2], feats[2:4], feats[4:]], [0.0] * 3)
    before = image_scores(model, pack)
    targets = 2.0 * before - 30.0
    a, b = calibrate_regression(model, before, targets)
    assert 0 < a <= 10
    np.testing.assert_allclose(image_scores(model, pack), a * before + b, rtol=1e-5, atol=1e-3)
    fit = np.polyfit(before, targets, 1)
    assert (a, b) == pytest.approx(tuple(fit)) and a == pytest.approx(2.0, rel=1e-3)
    # scores that fall with the targets, or barely vary: only the mean moves
    model = copy.deepcopy(tiny_model)
    a, b = calibrate_regression(model, np.array([2.0, 1.0]), np.array([1.0, 2.0]))
    assert (a, b) == (1.0, pytest.approx(0.0))
    a, b = calibrate_regression(model, np.array([50.0, 50.001]), np.array([10.0, 90.0]))
    assert a == 1.0 and b == pytest.approx(-0.0005)


def test_ranking_hinge_counts_only_pairs_rated_differently():
    pred = torch.tensor([50.0, 40.0, 60.0])
    target = torch.tensor([70.0, 30.0, 30.0])
    # pairs (0,1) and (0,2): margin 0.5 * 40 = 20; predicted gaps 10 and -10
    assert float(ranking_hinge(pred, target, 0.5)) == pytest.approx((10 + 30) / 2)
    assert float(ranking_hinge(pred, torch.full((3,), 50.0), 0.5)) == 0.0


def test_epoch_batches_cover_every_image_once():
    b = epoch_batches(37, 16, seed=1, epoch=2)
    assert len(b) == 3 and sorted(sum(b, [])) == list(range(37))
    assert {len(x) for x in b} <= {12, 13}
    assert b == epoch_batches(37, 16, seed=1, epoch=2) != epoch_batches(37, 16, seed=1, epoch=3)


def test_holdout_split_keeps_versions_of_a_photo_together_and_follows_the_order():
    from napari_pmt_iqa.data.datasets import Sample

    samples = [Sample(f"/x/{i}.png", i, None, f"photo{i // 3}") for i in range(30)]
    hold = holdout_split(samples, 0.2, 5, seed=0)
    assert len(hold) == 6 and hold == holdout_split(samples, 0.2, 5, seed=0)
    assert {samples[i].content for i in hold} == {samples[i].content for i in hold[::3]}
    assert all(sum(s.content == samples[i].content for s in samples) == 3 for i in hold)
    # names do not matter, only the order
    renamed = [Sample(f"/y/z{29 - i}.png", s.mos, None, s.content) for i, s in enumerate(samples)]
    assert holdout_split(renamed, 0.2, 5, seed=0) == hold
    plain = [Sample(f"/x/{i}.png", i) for i in range(20)]
    assert len(holdout_split(plain, 0.2, 5, seed=1)) == 5  # at least min_holdout
    assert holdout_split(plain, 0.0, 5, seed=1) == []


def test_is_ratings_csv(tmp_path, data_csv):
    p = tmp_path / "r.csv"
    p.write_text("image,mos,layer,plane\na.png,50,photo,\n")
    assert is_ratings_csv(p) and not is_ratings_csv(data_csv) and not is_ratings_csv(tmp_path)
    assert not is_ratings_csv([("a", 1)])


# --------------------------------------------------------------------------- the run
def test_finetune_writes_the_model_the_report_and_events(data_csv, tiny_checkpoint, tmp_path):
    log = EventLog()
    out = tmp_path / "run"
    res = finetune(_cfg(data_csv, tiny_checkpoint, out, epochs=6), listeners=[log])
    assert not res.stopped and res.refit and res.n_train + res.n_holdout == 30
    assert res.n_holdout == 6 and res.epochs_done <= 6
    assert (out / "best.safetensors").exists() and not (out / "state.pt").exists()
    kinds = [type(e).__name__ for e in log.events]
    assert kinds.index("Baseline") < kinds.index("Started") < kinds.index("Finished")
    assert log.of(Baseline)[0].val["srcc"] == pytest.approx(res.start_val["srcc"])
    assert log.of(Refitting)[-1].done == log.of(Refitting)[-1].total > 0
    assert {e.stage for e in log.events if type(e).__name__ == "Preparing"} == {
        "decoding",
        "features",
    }
    report = json.loads((out / "report.json").read_text())
    assert report["holdout_before"]["srcc"] == pytest.approx(res.start_val["srcc"])
    assert report["holdout_after"]["srcc"] == pytest.approx(res.best_val["srcc"])
    assert report["improved"] == res.improved == (res.best_val["srcc"] > res.start_val["srcc"])
    meta = read_metadata(out / "best.safetensors")
    assert meta["training"]["recipe"]["recipe"] == RECIPE
    assert meta["training"]["refit_on_all"] is True
    assert meta["training"]["adapted_backbone_head"] is True  # adapt_head=None: where possible
    assert meta["metrics"]["start_holdout"]["srcc"] == pytest.approx(res.start_val["srcc"])
    model = load_checkpoint(out / "best.safetensors")
    start = load_checkpoint(tiny_checkpoint)
    # the backbone is frozen up to its pointwise head, which the recipe adapts with the heads
    # (its batch-norm statistics stay: the backbone runs in eval mode)
    for k, v in start.state_dict().items():
        if k.startswith("backbone.") and not k.startswith("backbone.head."):
            assert torch.equal(v, model.state_dict()[k]), k
        if k.startswith("backbone.head.1.running"):
            assert torch.equal(v, model.state_dict()[k]), k
    assert not torch.equal(
        start.state_dict()["backbone.head.0.weight"], model.state_dict()["backbone.head.0.weight"]
    )
    assert any(
        not torch.equal(v, model.state_dict()[k])
        for k, v in start.state_dict().items()
        if not k.startswith("backbone.")
    )


def test_the_heads_learn_what_the_ratings_say(tmp_path, tiny_checkpoint):
    """Generated images whose ratings follow blur and noise: the fine-tuned model ranks the
    held-out images better than the random starting model does."""
    data = make_dataset(tmp_path / "d", n=40, size=96, seed=3)
    res = finetune(_cfg(data, tiny_checkpoint, tmp_path / "run", epochs=60, seed=1))
    assert res.best_val["srcc"] > max(0.6, res.start_val["srcc"] + 0.2), (
        res.start_val,
        res.best_val,
    )
    assert res.improved


def test_without_head_adaptation_the_whole_backbone_stays(data_csv, tiny_checkpoint, tmp_path):
    res = finetune(_cfg(data_csv, tiny_checkpoint, tmp_path / "run", epochs=3, adapt_head=False))
    model, start = load_checkpoint(res.best_path), load_checkpoint(tiny_checkpoint)
    for k, v in start.state_dict().items():
        if k.startswith("backbone."):
            assert torch.equal(v, model.state_dict()[k]), k
    training = read_metadata(res.best_path)["training"]
    assert training["recipe"]["adapt_head"] is False and training["adapted_backbone_head"] is False


def test_head_adaptation_where_the_backbone_has_no_pointwise_head_is_refused(tmp_path, data_csv):
    from napari_pmt_iqa.model import PMTIQA
    from napari_pmt_iqa.weights import save_checkpoint

    path = tmp_path / "single-scale.safetensors"
    save_checkpoint(path, PMTIQA(backbone="tiny", pretrained=False, multiscale=False))
    with pytest.raises(TrainingError, match="no multi-scale taps"):
        finetune(_cfg(data_csv, path, tmp_path / "x", adapt_head=True))
    res = finetune(_cfg(data_csv, path, tmp_path / "y", epochs=2))  # None: the heads alone
    assert res.best_path


@pytest.mark.parametrize("blend", [0.5, 1.0])
def test_stop_then_resume_gives_the_uninterrupted_model(data_csv, tiny_checkpoint, tmp_path, blend):
    """Exact both ways: a blending run keeps its unblended best epoch in the state (its
    best.safetensors is the blend); a plain one reads it back from best.safetensors."""
    from safetensors.torch import load_file

    full = finetune(
        _cfg(data_csv, tiny_checkpoint, tmp_path / "a", epochs=8, patience=100, blend=blend)
    )
    control = Control()
    stop_at_step_7 = stop_at_step(control, 7)
    out = tmp_path / "b"
    cfg = _cfg(data_csv, tiny_checkpoint, out, epochs=8, patience=100, blend=blend)
    part = finetune(cfg, listeners=[stop_at_step_7], control=control)
    assert part.stopped and part.state_path and (out / "best.safetensors").exists()
    assert 1 <= part.epochs_done < 8
    # the state keeps the weights the fine-tune changed, never the frozen backbone
    st = torch.load(part.state_path, weights_only=True)
    whole = load_checkpoint(tiny_checkpoint).state_dict()
    for stored in [st["model"], *([st["best_state"]] if blend != 1 else [])]:
        assert stored and set(stored) < set(whole)
        assert not any(k.startswith("backbone.") and "head" not in k for k in stored), stored
    assert ("best_state" in st) == (blend != 1)
    log = EventLog()
    rest = finetune(
        _cfg(data_csv, tiny_checkpoint, out, epochs=8, patience=100, resume=out, blend=blend),
        [log],
    )
    assert not rest.stopped and log.events and log.of(Baseline)
    started = [e for e in log.events if type(e).__name__ == "Started"][0]
    assert started.start_epoch == part.epochs_done and started.resumed_from
    a, b = load_file(full.best_path), load_file(rest.best_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rest.best_val == full.best_val

    def drop_time(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert json.dumps(drop_time(rest.history)) == json.dumps(drop_time(full.history))


def test_the_blend_takes_its_share_of_the_step_from_the_start(data_csv, tiny_checkpoint, tmp_path):
    """One epoch and no refit, so that both runs train the same weights: the blend at 0.5 is the
    midpoint of the start and the plain fine-tune, at 0 the start itself (uncalibrated here),
    and its held-out figures are the blend's."""
    from napari_pmt_iqa.training.weight_blend import blend_state

    kw = dict(epochs=1, refit=False, calibrate=False)
    plain = finetune(_cfg(data_csv, tiny_checkpoint, tmp_path / "a", blend=1.0, **kw))
    half = finetune(_cfg(data_csv, tiny_checkpoint, tmp_path / "b", blend=0.5, **kw))
    none = finetune(_cfg(data_csv, tiny_checkpoint, tmp_path / "c", blend=0.0, **kw))
    start = load_checkpoint(tiny_checkpoint).state_dict()
    tuned = load_checkpoint(plain.best_path).state_dict()
    got = load_checkpoint(half.best_path).state_dict()
    want = blend_state(start, tuned, 0.5)
    moved = 0
    for k, v in got.items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=1e-6, msg=k)
        if v.is_floating_point() and not torch.equal(start[k], tuned[k]):
            moved += 1
            assert not torch.equal(v, tuned[k]) and not torch.equal(v, start[k]), k
    assert moved > 0
    zero = load_checkpoint(none.best_path).state_dict()
    assert all(torch.equal(zero[k], start[k]) for k in start)
    assert none.best_val["srcc"] == pytest.approx(none.start_val["srcc"], abs=1e-9)
    assert read_metadata(half.best_path)["training"]["recipe"]["blend"] == 0.5
    assert read_metadata(half.best_path)["training"]["blend"] == 0.5


def test_the_recipe_blends_half_from_a_quality_model_and_keeps_new_heads_whole():
    cfg = FinetuneConfig()
    assert cfg.blend is None and cfg.blend_for(new_heads=False) == 0.5
    assert cfg.blend_for(new_heads=True) == 1.0
    assert FinetuneConfig(blend=0.3).blend_for(new_heads=True) == 0.3


def test_blend_state_checks_its_models():
    from napari_pmt_iqa.training.weight_blend import blend_state

    a = {"w": torch.zeros(2), "n": torch.tensor(3)}
    b = {"w": torch.ones(2), "n": torch.tensor(5)}
    out = blend_state(a, b, 0.25)
    assert torch.equal(out["w"], torch.full((2,), 0.25)) and int(out["n"]) == 5
    assert blend_state(a, b, 1.0)["w"] is b["w"]
    assert blend_state(a, b, 0.25, keys=set())["w"] is b["w"]  # only the keys given are blended
    with pytest.raises(ValueError, match="same weights"):
        blend_state(a, {"w": torch.ones(2)}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        blend_state(a, {"w": torch.ones(3), "n": torch.tensor(5)}, 0.5)


def test_a_pause_while_preparing_or_refitting_is_announced(data_csv, tiny_checkpoint, tmp_path):
    """Every wait of a paused run comes between Paused and Resumed (a GUI offers Resume then)."""
    import threading
    import time

    control = Control()
    seen, waits = [], []

    def pause_twice(ev):
        seen.append(type(ev).__name__)
        if (isinstance(ev, Preparing) and ev.stage == "features" and ev.done == 2) or (
            isinstance(ev, Refitting) and ev.done == 3
        ):
            control.pause()
        elif type(ev).__name__ == "Paused":
            waits.append(time.perf_counter())
            threading.Timer(0.3, control.resume).start()  # the run waits until then
        elif type(ev).__name__ == "Resumed":
            waits[-1] = time.perf_counter() - waits[-1]

    res = finetune(
        _cfg(data_csv, tiny_checkpoint, tmp_path / "p", epochs=2), [pause_twice], control
    )
    assert not res.stopped and res.best_path
    paused = [i for i, k in enumerate(seen) if k == "Paused"]
    assert len(paused) == 2 and all(seen[i + 1] == "Resumed" for i in paused)
    assert seen.index("Started") > paused[0] and seen[paused[1] - 1] == "Refitting"
    assert all(w >= 0.25 for w in waits), waits  # it did wait for Resume


def test_state_delta_keeps_what_changed_and_with_delta_restores_it():
    from napari_pmt_iqa.training.weight_blend import state_delta, with_delta

    base = {"a": torch.zeros(3), "b": torch.ones(2), "n": torch.tensor(1)}
    state = {"a": torch.zeros(3), "b": torch.tensor([1.0, 2.0]), "n": torch.tensor(1)}
    delta = state_delta(base, state)
    assert set(delta) == {"b"}
    back = with_delta(base, delta)
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert state_delta(base, {**state, "b": state["b"].double()}).keys() == {"b"}  # dtype
    assert with_delta(base, {}) == base
    with pytest.raises(ValueError, match="another model"):
        with_delta(base, {"zzz": torch.zeros(1)})


def test_a_resume_with_another_blend_is_refused(data_csv, tiny_checkpoint, tmp_path):
    control = Control()
    stop_at_once = stop_at_step(control, 1)
    out = tmp_path / "run"
    finetune(_cfg(data_csv, tiny_checkpoint, out, epochs=3, blend=0.5), [stop_at_once], control)
    with pytest.raises(TrainingError, match="other settings or data"):
        finetune(_cfg(data_csv, tiny_checkpoint, out, epochs=3, blend=1.0, resume=out))


@pytest.mark.parametrize("blend", [0.5, 1.0])
def test_a_stop_during_the_refit_resumes_into_the_same_model(
    data_csv, tiny_checkpoint, tmp_path, blend
):
    """Stopped in the refit, resumed and stopped there again, then resumed to the end: the
    model of a run never stopped; each stop keeps the selected epoch as the model so far."""
    from safetensors.torch import load_file

    full = finetune(_cfg(data_csv, tiny_checkpoint, tmp_path / "a", epochs=4, blend=blend))
    control = Control()

    def stop_in_refit(ev):
        if isinstance(ev, Refitting) and ev.done == 2:
            control.request_stop()

    out = tmp_path / "b"
    cfg = _cfg(data_csv, tiny_checkpoint, out, epochs=4, blend=blend)
    part = finetune(cfg, [stop_in_refit], control=control)
    assert part.stopped and part.state_path and part.best_path
    assert part.best_val == full.best_val  # the selected epoch is kept as the model so far
    control = Control()
    cfg.resume = out / "state.pt"
    again = finetune(cfg, [stop_in_refit], control=control)
    assert again.stopped and again.state_path
    assert again.best_path == part.best_path  # still there to publish after the second stop
    rest = finetune(_cfg(data_csv, tiny_checkpoint, out, epochs=4, resume=out, blend=blend))
    a, b = load_file(full.best_path), load_file(rest.best_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_refit_runs_the_selected_epochs_and_at_least_min_refit_steps(
    data_csv, tiny_checkpoint, tmp_path
):
    events = []
    cfg = _cfg(data_csv, tiny_checkpoint, tmp_path / "r", epochs=6, batch_size=4)
    cfg.min_refit_steps, cfg.patience = 1, 100
    res = finetune(cfg, [events.append])
    refit = [e for e in events if isinstance(e, Refitting)]
    per_epoch = -(-(res.n_train + res.n_holdout) // 4)
    assert refit[-1].epochs == res.best_epoch + 1
    assert refit[-1].total == (res.best_epoch + 1) * per_epoch == refit[-1].done
    cfg.min_refit_steps, cfg.out_dir = 200, str(tmp_path / "r2")
    events.clear()
    finetune(cfg, [events.append])
    assert 200 <= [e for e in events if isinstance(e, Refitting)][-1].total < 200 + per_epoch


def test_the_refit_never_runs_more_than_max_refit_steps():
    cfg = FinetuneConfig(batch_size=16, min_refit_steps=300, max_refit_steps=600)
    # 100 ratings: 7 steps per epoch; the floor is 43 epochs, the cap 85 (595 steps)
    assert cfg.refit_epochs_for(100, 2) == 43
    assert cfg.refit_epochs_for(100, 56) == 57
    assert cfg.refit_epochs_for(100, 85) == 85 and cfg.refit_epochs_for(100, 119) == 85
    # 300 ratings: 19 steps per epoch, at most 31 epochs
    assert cfg.refit_epochs_for(300, 34) == 31 and cfg.refit_epochs_for(300, 20) == 21
    cfg.max_refit_steps = None  # no limit: the selected epochs
    assert cfg.refit_epochs_for(100, 119) == 120
    cfg.max_refit_steps = 100  # below the minimum: the minimum wins
    assert cfg.refit_epochs_for(100, 119) == 43 and cfg.refit_epochs_for(100, 2) == 43
    cfg.max_refit_steps = cfg.min_refit_steps = 300  # equal: at least 300 steps all the same
    assert cfg.refit_epochs_for(100, 119) * 7 >= 300
    cfg.min_refit_steps, cfg.max_refit_steps = 0, 600
    # one step per epoch
    assert cfg.refit_epochs_for(3, 500) == 501 and cfg.refit_epochs_for(3, 700) == 600
    assert cfg.refit_epochs_for(100, 0) == 1  # never fewer than one epoch


def test_resume_with_other_data_is_refused(data_csv, tiny_checkpoint, tmp_path):
    control = Control()
    stop_at_once = stop_at_step(control, 1)
    out = tmp_path / "run"
    res = finetune(_cfg(data_csv, tiny_checkpoint, out, epochs=3), [stop_at_once], control)
    assert res.stopped and res.best_path is None and res.state_path  # no epoch ended yet
    other = make_dataset(tmp_path / "other", n=24, size=96)
    with pytest.raises(TrainingError, match="other settings or data"):
        finetune(_cfg(other, tiny_checkpoint, out, epochs=3, resume=out))


def test_a_stop_before_training_leaves_nothing_to_resume(data_csv, tiny_checkpoint, tmp_path):
    control = Control()
    control.request_stop()
    res = finetune(_cfg(data_csv, tiny_checkpoint, tmp_path / "run", epochs=3), control=control)
    assert res.stopped and res.best_path is None and res.state_path is None


def test_too_few_and_equal_ratings_say_what_to_do(tmp_path, tiny_checkpoint):
    pairs = make_pairs(n=12, size=64)
    with pytest.raises(TrainingError, match=r"12 usable rated images.*at least 20") as exc:
        finetune(FinetuneConfig(data=pairs, init=str(tiny_checkpoint), out_dir=str(tmp_path)))
    assert "Rate at least 20 images" in exc.value.hint
    same = [(img, 3.0) for img, _ in make_pairs(n=24, size=64)]
    with pytest.raises(TrainingError, match="equal"):
        finetune(
            FinetuneConfig(
                data=same, init=str(tiny_checkpoint), out_dir=str(tmp_path), score_scale=(0, 5)
            )
        )


def test_bad_settings_are_refused_before_any_work(tmp_path, tiny_checkpoint, data_csv):
    for kw, words in (
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -1.0}, "learning rate"),
        ({"holdout_fraction": 1.0}, "holdout_fraction"),
        ({"backbone": "tiny"}, "not both"),
        ({"epochs": 0}, "epochs"),
        ({"head_lr": 0.0}, "backbone head"),
        ({"max_refit_steps": 0}, "max_refit_steps"),
        ({"blend": 1.5}, "blend"),
        ({"blend": -0.1}, "blend"),
    ):
        with pytest.raises(TrainingError, match=words):
            finetune(_cfg(data_csv, tiny_checkpoint, tmp_path / "x", **kw))


def test_ratings_in_memory_use_the_rating_scale_and_split_test_rows_are_never_used(
    tmp_path, tiny_checkpoint
):
    pairs = make_pairs(n=24, size=64, scale=100.0)
    res = finetune(
        FinetuneConfig(
            data=pairs,
            init=str(tiny_checkpoint),
            out_dir=str(tmp_path / "a"),
            score_scale=ratings_scale(),
            epochs=2,
            device="cpu",
        )
    )
    assert read_metadata(res.best_path)["score_scale"]["name"] == ratings_scale().name
    data = make_dataset(tmp_path / "d", n=30, size=64, split=True)  # every 5th row is test
    res = finetune(_cfg(data, tiny_checkpoint, tmp_path / "b", epochs=2))
    assert res.n_train + res.n_holdout == 24
