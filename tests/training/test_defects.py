"""The defect head: rows, closed-form fit, attach/drop, maps from every scoring path, checkpoints."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from _iqa_data import make_dataset, stop_at_step
from napari_pmt_iqa.model import PMTIQA
from napari_pmt_iqa.model.network import ModelConfig
from napari_pmt_iqa.scoring import score, score_batch
from napari_pmt_iqa.training import TrainConfig, TrainingError, train
from napari_pmt_iqa.training import events as E
from napari_pmt_iqa.training.defects import (
    DEFECT_FAMILIES,
    DefectRows,
    attach_defect_head,
    defect_rows,
    drop_defect_head,
    fit_defects,
    window_features,
)
from napari_pmt_iqa.weights import build_metadata, load_checkpoint, read_metadata, save_checkpoint


def _photo(seed: int, h: int = 288, w: int = 320) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 90 * np.sin(xx / (5.0 + seed)) * np.cos(yy / (9.0 + seed))
    img = base[..., None] + rng.normal(0, 4, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return PMTIQA(backbone="tiny", pretrained=False).eval()


@pytest.fixture(scope="module")
def rows(tiny):
    return defect_rows(tiny, [_photo(i) for i in range(4)] + [_photo(9, 100, 120)], seed=3)


@pytest.fixture(scope="module")
def with_head(tiny, rows):
    m = PMTIQA(backbone="tiny", pretrained=False).eval()
    m.load_state_dict(tiny.state_dict())
    return attach_defect_head(m, fit_defects(rows, ridge=1.0))


def test_rows_clean_and_degraded_per_family(tiny, rows):
    kinds = tuple(DEFECT_FAMILIES)
    assert rows.kinds == kinds
    assert rows.photos == 4  # the 100 x 120 photo is smaller than a crop: skipped
    assert rows.features.shape == (len(rows.levels), tiny.defect_dim)
    assert tiny.defect_dim == 2 * sum(tiny.backbone.spec.channels[:3])
    clean = rows.family == -1
    assert (rows.levels[clean] == 0).all()
    assert ((rows.levels[~clean] >= 1) & (rows.levels[~clean] <= 5)).all()
    # each photo: clean + 2 versions per family, up to 12 windows each (a 288 x 320 photo has 3 x 4)
    assert clean.sum() == 4 * 12
    for f in range(len(kinds)):
        assert (rows.family == f).sum() == 4 * 2 * 12
    assert np.isfinite(rows.features).all()


def test_window_features_match_the_model_on_one_crop(tiny):
    img = _photo(1, 224, 224)
    f = window_features(tiny, img)
    x = tiny.normalize(torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None])
    want = tiny.defect_features(tiny.backbone(x)).detach().numpy()
    np.testing.assert_allclose(f, want, rtol=1e-5, atol=1e-6)
    assert window_features(tiny, _photo(1, 200, 400)).shape == (0, tiny.defect_dim)


def test_rows_refuse_bad_photos_and_families(tiny):
    with pytest.raises(TrainingError, match="8-bit RGB"):
        defect_rows(tiny, [np.zeros((300, 300), np.uint8)])
    with pytest.raises(TrainingError, match="unknown or no degradation kinds"):
        defect_rows(tiny, [_photo(0)], families={"blur": ("gaussian",)})
    with pytest.raises(TrainingError, match="large enough"):
        defect_rows(tiny, [_photo(0, 100, 100)])


def test_fit_recovers_a_linear_relation_and_folds_the_standardisation():
    rng = np.random.default_rng(0)
    n, d = 600, 10
    X = rng.normal(3.0, [0.1 * (k + 1) for k in range(d)], (n, d)).astype(np.float32)
    fam = np.repeat([-1, 0, 1], n // 3)
    true_w = rng.normal(0, 1, (2, d))
    levels = np.where(fam == -1, 0.0, 0.0)
    for f in (0, 1):
        m = (fam == f) | (fam == -1)
        levels = np.where(fam == f, X @ true_w[f] - (X[m] @ true_w[f]).mean() + 2.5, levels)
    rows = DefectRows(X, levels, fam, ("a", "b"), 5)
    fit = fit_defects(rows, ridge=1e-6, specific=False)
    for f in (0, 1):
        m = fam == f
        pred = X[m] @ fit.weight[f] + fit.bias[f]
        assert np.corrcoef(pred, levels[m])[0, 1] > 0.9  # the clean rows pull only the intercept
    # a larger penalty shrinks the weights
    assert (
        np.abs(fit_defects(rows, ridge=100.0, specific=False).weight).sum()
        < np.abs(fit.weight).sum()
    )
    assert fit.to_meta()["kinds"] == ["a", "b"] and fit.windows == n
    assert not fit.to_meta()["specific"]


def test_a_specific_fit_keeps_each_family_low_on_the_others():
    # two families told apart by two different features; a plain fit of family "a" sees only
    # clean and "a" rows, so it may read "b" defects as "a"; the specific fit learns they are not
    rng = np.random.default_rng(1)
    n = 300
    fam = np.repeat([-1, 0, 1], n)
    lev = np.where(fam == -1, 0.0, rng.integers(1, 6, 3 * n).astype(float))
    X = rng.normal(0, 0.05, (3 * n, 3)).astype(np.float32)
    X[:, 0] += np.where(fam >= 0, lev, 0.0)  # both families raise feature 0 (lost detail)
    X[:, 1] += np.where(fam == 0, lev, 0.0)  # only "a" raises feature 1
    X[:, 2] += np.where(fam == 1, lev, 0.0)  # only "b" raises feature 2
    rows = DefectRows(X, lev, fam, ("a", "b"), 1)
    b_rows = X[fam == 1]
    plain = fit_defects(rows, ridge=1e-4, specific=False)
    spec = fit_defects(rows, ridge=1e-4)
    assert spec.specific
    a_on_b = lambda f: float(np.mean(b_rows @ f.weight[0] + f.bias[0]))  # noqa: E731
    assert a_on_b(plain) > 1.0 and abs(a_on_b(spec)) < 0.2
    a_rows = fam == 0
    pred = X[a_rows] @ spec.weight[0] + spec.bias[0]
    np.testing.assert_allclose(pred, lev[a_rows], atol=0.3)


def test_fit_refuses_bad_penalty_and_missing_rows(rows):
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(TrainingError, match="ridge"):
            fit_defects(rows, ridge=bad)
    no_clean = dataclasses.replace(rows, family=np.where(rows.family == -1, 0, rows.family))
    with pytest.raises(TrainingError, match="no degraded or no clean rows"):
        fit_defects(no_clean)


def test_attach_sets_the_config_and_freezes_the_head(with_head, tiny):
    assert with_head.config.defect_kinds == tuple(DEFECT_FAMILIES)
    assert not any(p.requires_grad for p in with_head.defect_head.parameters())
    out = with_head(torch.rand(2, 3, 224, 224))
    assert out.defects.shape == (2, 3)
    assert ((out.defects >= 0) & (out.defects <= 5)).all()
    assert tiny(torch.rand(1, 3, 224, 224)).defects is None
    # the read-out runs in float32 even under bf16 autocast (it cancels large terms)
    feats = torch.rand(3, with_head.defect_dim) * 10
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = with_head.defects(feats)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, with_head.defects(feats))
    wrong = fit_defects(
        DefectRows(
            np.zeros((4, 7), np.float32),
            np.array([0.0, 1, 0, 2]),
            np.array([-1, 0, -1, 0]),
            ("blur",),
            1,
        )
    )
    with pytest.raises(TrainingError, match="features"):
        attach_defect_head(PMTIQA(backbone="tiny", pretrained=False), wrong)


def test_scores_unchanged_and_defect_maps_on_every_path(with_head, tiny):
    img = _photo(5, 420, 500)
    a = score(img, tiny, device="cpu")
    b = score(img, with_head, device="cpu")
    assert b.score == a.score  # the head only reads: scores and quality maps are the same
    np.testing.assert_array_equal(a.maps.quality, b.maps.quality)
    assert a.maps.defects is None and a.maps.defect_kinds == ()
    d = b.maps.defects
    assert d.shape == (3, *b.maps.quality.shape)
    assert b.maps.defect_kinds == tuple(DEFECT_FAMILIES)
    assert ((d >= 0) & (d <= 5)).all()
    # the crop grid of the maps is the head applied to each window's features
    # (the plane is cut centrally to multiples of 32: 416 x 480)
    x = torch.from_numpy(img[2:418, 10:490].astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        feats = with_head.defect_features(with_head.backbone(with_head.normalize(x)))
    want = with_head.defects(feats).detach().numpy().T.reshape(3, *b.crop_scores.shape)
    np.testing.assert_allclose(b.maps.crop_grid(d), want, atol=1e-4)
    assert b.defect_worst == {
        k: pytest.approx(float(want[i].max()), abs=1e-4) for i, k in enumerate(b.maps.defect_kinds)
    }
    assert b.defect_levels["noise"] == pytest.approx(float(want[1].mean()), abs=1e-4)


def test_defect_maps_of_tiles_crops_batches_and_stacks(with_head):
    from napari_pmt_iqa.scoring import _tile_size

    big = _photo(7, 900, 1000)
    assert max(big.shape[:2]) > _tile_size("tiny", 1, 224)  # a budget of 1 MB cuts it into tiles
    one = score(big, with_head, device="cpu", memory_mb=4096)
    tiled = score(big, with_head, device="cpu", memory_mb=1)
    assert np.ptp(one.maps.defects) > 0.01  # not a constant map
    np.testing.assert_allclose(tiled.maps.defects, one.maps.defects, atol=1e-3)
    # separate crops: each crop's cell is the head on that crop's own features
    img = _photo(8, 288, 320)
    crops = score(img, with_head, device="cpu", method="crops")
    grid = crops.maps.crop_grid(crops.maps.defects)
    for (i, j), (y, x) in zip([(0, 0), (1, 2), (2, 3)], [(0, 0), (32, 64), (64, 96)]):
        f = torch.from_numpy(window_features(with_head, img[y : y + 224, x : x + 224]))
        np.testing.assert_allclose(grid[:, i, j], with_head.defects(f)[0].numpy(), atol=1e-4)
    # a batch of two images of one size, and a stack of the same two: each its own maps
    other = _photo(9, 288, 320)
    singles = [score(im, with_head, device="cpu") for im in (img, other)]
    batched = score_batch([img, other], with_head, device="cpu", maps=True)
    stack = score(np.stack([img, other]), with_head, device="cpu")
    assert not np.allclose(singles[0].maps.defects, singles[1].maps.defects, atol=1e-3)
    for k in range(2):
        np.testing.assert_allclose(batched[k].maps.defects, singles[k].maps.defects, atol=1e-4)
        np.testing.assert_allclose(stack.planes[k].maps.defects, singles[k].maps.defects, atol=1e-4)


def test_checkpoint_round_trip_keeps_the_head(with_head, tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", with_head)
    back = load_checkpoint(path)
    assert back.config.defect_kinds == with_head.config.defect_kinds
    # format 2 with a defect head (older versions then ask for an upgrade); 1 without one
    from napari_pmt_iqa.weights import FORMAT_VERSION, read_metadata

    assert read_metadata(path)["format_version"] == 2 == FORMAT_VERSION - 1
    plain = drop_defect_head(load_checkpoint(path))
    assert read_metadata(save_checkpoint(tmp_path / "p.safetensors", plain))["format_version"] == 1
    img = _photo(6, 300, 300)
    np.testing.assert_allclose(
        score(img, back, device="cpu").maps.defects,
        score(img, with_head, device="cpu").maps.defects,
        atol=1e-5,
    )
    # float16 storage keeps the defect head in float32 (its read-out cancels large terms)
    from safetensors import safe_open

    half = save_checkpoint(tmp_path / "half.safetensors", with_head, half=True)
    with safe_open(str(half), "pt") as f:
        assert f.get_tensor("defect_head.weight").dtype == torch.float32
        assert f.get_tensor("reg_head.weight").dtype == torch.float16
    # an older checkpoint (no defect_kinds in its configuration) has no head
    cfg = ModelConfig.from_dict(
        {k: v for k, v in back.config.to_dict().items() if k != "defect_kinds"}
    )
    assert cfg.defect_kinds == ()
    with pytest.raises(ValueError, match="defect_kinds"):
        ModelConfig.from_dict({**cfg.to_dict(), "defect_kinds": "blur"})


def test_saving_a_model_with_its_head_keeps_the_record_of_the_fit(with_head, tmp_path):
    # e.g. a model fine-tuned from the shipped one: its metadata is rebuilt, the fit's record kept
    from napari_pmt_iqa.training.defects import save_with_defect_head
    from napari_pmt_iqa.weights import build_metadata, read_metadata

    fit = fit_defects(DefectRows(*_rows_like(with_head)))
    m = attach_defect_head(
        load_checkpoint(save_checkpoint(tmp_path / "a.safetensors", with_head)), fit
    )
    m.meta = {**m.meta, "name": "registered-name", "version": 9}
    path = save_with_defect_head(tmp_path / "b.safetensors", m, fit, photos_given=3)
    meta = read_metadata(path)
    assert meta["defects"]["photos_given"] == 3
    assert "name" not in meta and "version" not in meta  # a refit is not the registered model
    tuned = load_checkpoint(path)
    assert build_metadata(tuned, description="fine-tuned")["defects"] == meta["defects"]
    assert "defects" not in build_metadata(drop_defect_head(tuned))


def test_drop_removes_the_head(with_head):
    m = PMTIQA(backbone="tiny", pretrained=False).eval()
    m.load_state_dict(with_head.state_dict(), strict=False)
    attach_defect_head(m, fit_defects(DefectRows(*_rows_like(with_head))))
    drop_defect_head(m)
    assert m.defect_head is None and m.config.defect_kinds == ()
    assert score(_photo(2), m, device="cpu").maps.defects is None


def _rows_like(model):
    rng = np.random.default_rng(0)
    X = rng.normal(0, 1, (30, model.defect_dim)).astype(np.float32)
    fam = np.tile([-1, 0, 1, 2, 0, 1], 5)
    return X, np.where(fam == -1, 0.0, 3.0), fam, tuple(DEFECT_FAMILIES), 3


def _train_from(model, tmp_path, freeze: bool, listeners=()):
    """One tiny training run from a checkpoint of ``model``: the checkpoint it writes, loaded."""
    init = save_checkpoint(tmp_path / "init.safetensors", model)
    r = train(
        TrainConfig(
            data=make_dataset(tmp_path / "data", n=12, size=96),
            out_dir=tmp_path / "run",
            init=str(init),
            epochs=1,
            batch_size=4,
            max_batches=1,
            device="cpu",
            freeze_backbone=freeze,
        ),
        listeners=list(listeners),
    )
    return load_checkpoint(r.last_path)


@pytest.mark.parametrize("freeze", [False, True])
def test_training_drops_the_head_unless_the_backbone_is_frozen(with_head, tmp_path, freeze):
    log = E.EventLog()
    out = _train_from(with_head, tmp_path, freeze, [log])
    said = [e.message for e in log.of(E.DataIssue) if "defect head" in e.message]
    if freeze:
        assert out.config.defect_kinds == tuple(DEFECT_FAMILIES) and not said
        torch.testing.assert_close(out.defect_head.weight, with_head.defect_head.weight)
    else:
        assert out.defect_head is None and out.config.defect_kinds == () and said


# ---------------------------------------------------------------------- the defect-aware score
WEIGHTS = np.array([0.2, 0.0, 0.5])
_FUSED_PHOTO = (5, 420, 500)


def _fused(s: np.ndarray, d: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """What ``fuse`` makes of scores ``s`` of crops whose ``(K, ...)`` levels are ``d``."""
    p = np.tensordot(WEIGHTS, np.maximum(d - thresholds.reshape(-1, *[1] * (d.ndim - 1)), 0), 1)
    return s - np.maximum(s, 0) * (1 - np.exp(-p))


@pytest.fixture(scope="module")
def fused(with_head):
    """The head model with weights, and thresholds at the median level of each family on the
    test photo (so that some crops are below, some above)."""
    m = PMTIQA(with_head.config, pretrained=False).eval()
    m.load_state_dict(with_head.state_dict())
    r = score(_photo(*_FUSED_PHOTO), with_head, device="cpu")
    t = np.median(r.maps.crop_grid(r.maps.defects).reshape(3, -1), axis=1)
    m.config = dataclasses.replace(
        m.config, defect_weights=tuple(WEIGHTS), defect_thresholds=tuple(float(v) for v in t)
    )
    return m


def test_the_fused_score_takes_the_weighted_levels_off_every_crop(with_head, fused):
    assert fused.fuses_defects and not with_head.fuses_defects
    img = _photo(*_FUSED_PHOTO)
    t = np.array(fused.config.defect_thresholds)
    plain = score(img, with_head, device="cpu")
    aware = score(img, fused, device="cpu")
    d = plain.maps.crop_grid(plain.maps.defects)  # (3, ny, nx), the same head in both
    want = _fused(plain.crop_scores, d, t)
    # the test would pass trivially without any penalty, or with thresholds that clip nothing
    assert (plain.crop_scores - want).max() > 0.1
    assert (d[2] < t[2]).any() and (d[2] > t[2]).any()
    assert not np.allclose(want, _fused(plain.crop_scores, d, np.zeros(3)))
    np.testing.assert_allclose(aware.crop_scores, want, atol=1e-3)
    assert aware.score == pytest.approx(want.mean(), abs=1e-3)
    np.testing.assert_allclose(
        aware.maps.crop_grid(aware.maps.quality), aware.crop_scores, atol=1e-3
    )
    # the scale maps compare head outputs with head outputs: unchanged by the penalty
    np.testing.assert_allclose(aware.maps.scale_maps, plain.maps.scale_maps, atol=1e-4)
    np.testing.assert_array_equal(aware.maps.defects, plain.maps.defects)
    # separate crops (forward) fuse with each crop's own levels
    crops, crops_plain = (score(img, m, device="cpu", method="crops") for m in (fused, with_head))
    d = crops_plain.maps.crop_grid(crops_plain.maps.defects)
    want = _fused(crops_plain.crop_scores, d, t)
    np.testing.assert_allclose(crops.crop_scores, want, atol=1e-3)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        a, b = with_head(x), fused(x)
    want = _fused(a.score.numpy(), a.defects.numpy().T, t)
    np.testing.assert_allclose(b.score.numpy(), want, rtol=1e-5, atol=1e-4)
    # batches fuse like single images
    batched = score_batch([img], fused, device="cpu")
    assert batched[0].score == pytest.approx(aware.score, abs=1e-4)


def test_defect_weights_are_checked_stored_and_dropped(fused, tmp_path):
    from napari_pmt_iqa.training.defects import drop_defect_weights
    from napari_pmt_iqa.weights import FORMAT_VERSION, read_metadata

    base = fused.config.to_dict()
    with pytest.raises(ValueError, match="one value per kind"):
        ModelConfig.from_dict({**base, "defect_weights": [1.0]})
    with pytest.raises(ValueError, match=">= 0"):
        ModelConfig.from_dict({**base, "defect_weights": [1.0, -1.0, 0.0]})
    with pytest.raises(ValueError, match="list of numbers"):
        ModelConfig.from_dict({**base, "defect_weights": "1,2,3"})
    with pytest.raises(ValueError, match="defect_thresholds has 2 values"):
        ModelConfig.from_dict({**base, "defect_thresholds": [1.0, 2.0]})
    with pytest.raises(ValueError, match="defect_thresholds must be finite"):
        ModelConfig.from_dict({**base, "defect_thresholds": [1.0, float("nan"), 0.0]})
    # format 3 (a format-2 reader would ignore the weights and score otherwise)
    path = save_checkpoint(tmp_path / "f.safetensors", fused)
    assert read_metadata(path)["format_version"] == 3 == FORMAT_VERSION
    back = load_checkpoint(path)
    assert back.config.defect_weights == tuple(WEIGHTS)
    assert back.config.defect_thresholds == fused.config.defect_thresholds
    img = _photo(4, 300, 300)
    assert score(img, back, device="cpu").score == pytest.approx(
        score(img, fused, device="cpu").score, abs=1e-4
    )
    # dropping the weights keeps the head and its maps, and gives the head's scores back
    plain = drop_defect_weights(load_checkpoint(path))
    assert plain.defect_head is not None and not plain.fuses_defects
    assert read_metadata(save_checkpoint(tmp_path / "p.safetensors", plain))["format_version"] == 2
    # a refit head, or no head at all, takes the weights with it
    attach_defect_head(back, fit_defects(DefectRows(*_rows_like(back))))
    assert back.config.defect_weights == () == back.config.defect_thresholds
    again = drop_defect_head(load_checkpoint(path))
    assert again.config.defect_weights == () and not again.fuses_defects
    assert plain.config.defect_thresholds == ()


def _finetune(init, data, out, **kw):
    from napari_pmt_iqa.training import FinetuneConfig, finetune

    return finetune(FinetuneConfig(data=str(data), init=str(init), out_dir=str(out), **kw))


def test_a_fine_tune_keeps_the_defect_aware_score_unless_told(fused, tmp_path):
    init = save_checkpoint(
        tmp_path / "fused.safetensors", fused, metadata=build_metadata(fused, fusion={"w": 1})
    )
    data = make_dataset(tmp_path / "ft", n=24, size=96)
    kept = _finetune(init, data, tmp_path / "a", epochs=1)
    tuned = load_checkpoint(kept.best_path)
    assert tuned.config.defect_kinds == fused.config.defect_kinds and tuned.fuses_defects
    assert tuned.config.defect_weights == fused.config.defect_weights
    assert tuned.config.defect_thresholds == fused.config.defect_thresholds
    meta = read_metadata(kept.best_path)
    assert meta["fusion"] == {"w": 1} and meta["training"]["defect_aware_score"] is True
    dropped = _finetune(init, data, tmp_path / "b", epochs=1, defect_score=False)
    plain = load_checkpoint(dropped.best_path)
    assert plain.config.defect_kinds == fused.config.defect_kinds
    assert plain.config.defect_weights == () == plain.config.defect_thresholds
    assert not plain.fuses_defects and "fusion" not in read_metadata(dropped.best_path)
    # the starting figure is the starting model's own score: with and without the penalty differ
    assert kept.start_val["srcc"] != pytest.approx(dropped.start_val["srcc"], abs=1e-9) or (
        kept.start_val["plcc"] != pytest.approx(dropped.start_val["plcc"], abs=1e-9)
    )


def _cached_packs(model, img):
    """The image ``img`` as the fine-tune caches it, both ways (pooled rows; rows and head maps),
    with the defect levels of its windows."""
    from napari_pmt_iqa.training.features import window_features as rows_of
    from napari_pmt_iqa.training.head_maps import window_blocks
    from napari_pmt_iqa.training.heads_fit import FeaturePack

    f, n, lv = rows_of(model, img, levels=True)
    r, maps, n2, lv2 = window_blocks(model, img, max_windows=None, levels=True)
    assert n == n2 == f.shape[0] == lv.shape[0] == lv2.shape[0]
    assert lv.shape[1] == len(model.config.defect_kinds)
    return FeaturePack([f], [0.0], levels=[lv]), FeaturePack([r], [0.0], [maps], levels=[lv2])


def test_cached_windows_score_as_the_scorer_with_the_defect_aware_score(with_head, fused):
    from napari_pmt_iqa.training.heads_fit import FeaturePack, image_scores

    img = _photo(*_FUSED_PHOTO)
    from napari_pmt_iqa.score_scale import ScoreScale

    # a model without metadata scores on the internal scale (ScoreScale())
    to_int = ScoreScale().to_internal
    want = float(to_int(score(img, fused, device="cpu").score))
    plain = float(to_int(score(img, with_head, device="cpu").score))
    assert want < plain - 0.1  # the penalty takes something off this photo
    for pack in _cached_packs(fused, img):
        assert float(image_scores(fused, pack)[0]) == pytest.approx(want, abs=1e-3)
        # the same rows without their levels, or a model without weights: the heads alone
        bare = FeaturePack([pack.rows], [0.0], pack.maps)
        assert float(image_scores(fused, bare)[0]) == pytest.approx(plain, abs=1e-3)
        assert float(image_scores(with_head, pack)[0]) == pytest.approx(plain, abs=1e-3)
    assert FeaturePack([torch.zeros(2, 3)], [0.0]).levels is None
    with pytest.raises(ValueError, match="one row per feature row"):
        FeaturePack([torch.zeros(2, 3)], [0.0], levels=[torch.zeros(3, 3)])


def test_cached_levels_follow_their_rows_when_sampled_tiled_and_patched(fused):
    from napari_pmt_iqa.training.features import window_features as rows_of
    from napari_pmt_iqa.training.head_maps import window_blocks

    img = _photo(*_FUSED_PHOTO)
    full, n, lv = rows_of(fused, img, levels=True)
    assert n > 13 and lv.shape == (n, 3) and lv.std(0).min() > 0  # levels vary between windows

    def index_of(rows):  # each row's window, by its features
        d = torch.cdist(rows, full)
        assert float(d.min(1).values.max()) < 1e-2  # (others are > 0.1 away)
        return d.argmin(1)

    for kw in (
        {"max_windows": 13, "seed": 4},
        {"memory_mb": 1},
        {"memory_mb": 1, "max_windows": 7},
    ):
        f, _, got = rows_of(fused, img, levels=True, **kw)
        np.testing.assert_allclose(got, lv[index_of(f)], atol=1e-3, err_msg=str(kw))
    # patches of 4 x 4 windows, each computed with its own context
    r, maps, _, got = window_blocks(fused, img, max_windows=20, whole_up_to=10, seed=1, levels=True)
    assert len(maps) > 1 and got.shape == (r.shape[0], 3)
    np.testing.assert_allclose(got, lv[index_of(r)], atol=1e-3)
    # without a defect head there are no levels; without levels=True the old returns
    assert rows_of(PMTIQA(backbone="tiny", pretrained=False).eval(), img, levels=True)[2] is None
    assert len(rows_of(fused, img)) == 2 and len(window_blocks(fused, img)) == 3


def test_a_heads_only_fine_tune_with_sampled_windows_keeps_the_score(fused, tmp_path):
    init = save_checkpoint(tmp_path / "fused.safetensors", fused)
    data = make_dataset(tmp_path / "ft", n=24, size=288)  # 3 x 3 windows an image, 4 kept
    res = _finetune(
        init, data, tmp_path / "run", epochs=2, adapt_head=False, windows_per_image=4,
        holdout_windows=4,
    )  # fmt: skip
    assert res.refit and load_checkpoint(res.best_path).fuses_defects
    assert np.isfinite(res.start_val["srcc"]) and np.isfinite(res.best_val["srcc"])


def test_calibration_and_the_loss_work_through_the_defect_aware_score(fused):
    from napari_pmt_iqa.training.heads_fit import (
        FeaturePack,
        batch_loss,
        calibrate_regression,
        image_factors,
        image_scores,
    )

    m = PMTIQA(fused.config, pretrained=False).eval()
    m.load_state_dict(fused.state_dict())
    img = _photo(*_FUSED_PHOTO)
    one, _ = _cached_packs(m, img)
    rows, lv = one.rows, one.levels
    cut = [0, 4, 9, rows.shape[0]]
    pack = FeaturePack(
        [rows[a:b] for a, b in zip(cut, cut[1:])],
        [20.0, 50.0, 80.0],
        levels=[lv[a:b] for a, b in zip(cut, cut[1:])],
    )
    s, f = image_scores(m, pack), image_factors(m, pack)
    assert (f < 1).any() and (f > 0).all() and (f <= 1).all()
    np.testing.assert_array_equal(
        image_factors(m, FeaturePack(list(pack.rows.split(cut[1]))[:1], [0.0])), [1.0]
    )
    # targets that a * S + b * F fits exactly
    a, b = calibrate_regression(m, s, 1.5 * s + 10.0 * f, factors=f)
    assert a == pytest.approx(1.5, abs=1e-6) and b == pytest.approx(10.0, abs=1e-4)
    # exact: the calibrated heads give a * S + b * F (every window's score stays positive)
    np.testing.assert_allclose(image_scores(m, pack), a * s + b * f, rtol=1e-5, atol=1e-3)
    # the loss runs through the penalty: its gradients reach the heads, and it differs from the
    # loss of the same rows without their levels
    kw = dict(
        windows=None,
        reg_weight=1.0,
        rank_weight=1.0,
        rank_margin=0.5,
        cls_weight=0.1,
        anchor=0.0,
        start_params=None,
    )
    loss, parts = batch_loss(m, pack, [0, 1, 2], np.random.default_rng(0), **kw)
    loss.backward()
    assert torch.isfinite(loss) and m.reg_head.weight.grad.abs().sum() > 0
    bare = FeaturePack(list(rows.split([4, 5, rows.shape[0] - 9])), [20.0, 50.0, 80.0])
    _, parts2 = batch_loss(m, bare, [0, 1, 2], np.random.default_rng(0), **kw)
    assert parts["reg"] != pytest.approx(parts2["reg"], abs=1e-6)
    assert parts["ce"] != pytest.approx(parts2["ce"], abs=1e-6)
    assert np.isfinite(parts["ce"]) and parts["ce"] < 10  # crops with no share left out
    with pytest.raises(ValueError, match="one row per feature row"):
        FeaturePack([rows], [0.0], levels=[None])


def test_training_the_heads_keeps_the_defect_head_and_drops_the_weights(fused, tmp_path):
    out = _train_from(fused, tmp_path, freeze=True)
    assert out.config.defect_kinds == fused.config.defect_kinds and not out.fuses_defects
    assert out.config.defect_weights == () == out.config.defect_thresholds


def test_the_fused_score_stays_in_range_and_falls_with_every_level(fused):
    t = torch.tensor(fused.config.defect_thresholds).float()
    levels = torch.linspace(0, 5, 21)
    d = torch.zeros(21, 3)
    d[:, 2] = levels  # compression only, weight 0.5 per level past its threshold
    for s in (0.0, 3.0, 50.0, 100.0):
        out = fused.fuse(torch.full((21,), s), d)
        assert (out >= 0).all() and (out <= s + 1e-6).all()
        past = levels > t[2]
        if s > 0:  # strictly falling past the threshold, unchanged below it
            assert (out[past].diff() < 0).all()
            torch.testing.assert_close(out[~past], torch.full((int((~past).sum()),), s))
    # a score below the scale's worst end is left as it is (already the worst)
    torch.testing.assert_close(fused.fuse(torch.full((21,), -4.0), d), torch.full((21,), -4.0))


def _moved(probs: np.ndarray, factor: float) -> np.ndarray:
    """Reference for ``fuse_classes``: bin ``[10 i, 10 i + 10)`` scaled by ``factor``, its
    probability shared by overlap."""
    out = np.zeros(10)
    for i, p in enumerate(probs):
        lo, hi = 10 * i * factor, 10 * (i + 1) * factor
        for j in range(10):
            out[j] += p * max(0.0, min(hi, 10 * j + 10) - max(lo, 10 * j)) / (hi - lo)
    return out


def test_class_probabilities_move_with_the_score_factor(with_head):
    strong = PMTIQA(with_head.config, pretrained=False).eval()
    strong.load_state_dict(with_head.state_dict())
    strong.config = dataclasses.replace(strong.config, defect_weights=(1.0, 0.0, 0.0))
    # the factor of each crop is exp(-blur level): 1, 0.8 and about 0.37
    d = torch.tensor([[0.0, 3.0, 3.0], [-np.log(0.8), 0.0, 0.0], [1.0, 0.0, 0.0]])
    probs = torch.softmax(torch.randn(3, 10), 1)
    # a top class 5 (0.3) above two lesser ones at 7 and 8 (0.2 each), which a factor 0.8
    # moves into the bins below them: the top class must not move up
    probs[1] = torch.tensor([0.05, 0.05, 0.05, 0.05, 0.05, 0.3, 0.05, 0.2, 0.2, 0.0])
    out = strong.fuse_classes(probs, d).numpy()
    f = np.exp(-d[:, 0].numpy())
    for k in range(3):
        np.testing.assert_allclose(out[k], _moved(probs[k].numpy(), f[k]), atol=1e-6)
    np.testing.assert_allclose(out[0], probs[0].numpy(), atol=1e-6)  # factor 1: unchanged
    assert out.sum(1) == pytest.approx(np.ones(3), abs=1e-6)
    assert out[1].argmax() <= 5
    # a model without fusion leaves the probabilities alone
    assert with_head.fuse_classes(probs, d) is probs


def test_the_classes_follow_the_fused_score(with_head):
    strong = PMTIQA(with_head.config, pretrained=False).eval()
    strong.load_state_dict(with_head.state_dict())
    strong.config = dataclasses.replace(strong.config, defect_weights=(1.0, 1.0, 1.0))
    img = _photo(*_FUSED_PHOTO)
    plain, aware = score(img, with_head, device="cpu"), score(img, strong, device="cpu")
    factor = np.exp(-plain.maps.crop_grid(plain.maps.defects).sum(0))
    assert (factor < 0.5).mean() > 0.3  # the test would pass trivially if nothing moved
    plain_cls = plain.maps.crop_grid(plain.maps.class_map)
    got = aware.maps.crop_grid(aware.maps.class_map)
    # a crop's most likely class falls with its score: most crops lose classes
    assert (got < plain_cls).mean() > 0.3
    assert aware.class_probs.sum() == pytest.approx(1.0, abs=1e-5)
    k = np.arange(10)  # mass moves down the classes
    assert (aware.class_probs * k).sum() < (plain.class_probs * k).sum() - 0.3


def test_a_reader_of_format_2_refuses_a_defect_aware_model(fused, tmp_path, monkeypatch):
    from napari_pmt_iqa import weights as W

    path = save_checkpoint(tmp_path / "f.safetensors", fused)
    monkeypatch.setattr(W, "FORMAT_VERSION", 2)
    with pytest.raises(W.CheckpointError, match="newer napari-pmt-iqa"):
        W.read_metadata(path)


def test_a_refit_or_a_dropped_head_forgets_the_fusion_record(fused, tmp_path):
    from napari_pmt_iqa.training.defects import drop_defect_weights, save_with_defect_head

    fused_file = save_checkpoint(
        tmp_path / "f.safetensors",
        fused,
        metadata=build_metadata(fused, fusion={"weights": {}}, description="defect-aware"),
    )
    m = load_checkpoint(fused_file)
    assert "fusion" in m.meta
    fit = fit_defects(DefectRows(*_rows_like(m)))
    out = save_with_defect_head(tmp_path / "refit.safetensors", attach_defect_head(m, fit), fit)
    meta = read_metadata(out)
    assert "fusion" not in meta and "description" not in meta and meta["format_version"] == 2
    assert "fusion" not in drop_defect_weights(load_checkpoint(fused_file)).meta


def test_a_stopped_fused_fine_tune_resumes_into_the_uninterrupted_model(fused, tmp_path):
    from safetensors.torch import load_file

    from napari_pmt_iqa.training.events import Control

    init = save_checkpoint(tmp_path / "fused.safetensors", fused)
    data = make_dataset(tmp_path / "ft", n=24, size=288)
    kw = dict(epochs=4, patience=100, windows_per_image=4)
    full = _finetune(init, data, tmp_path / "a", **kw)
    control = Control()
    stop_at_step_3 = stop_at_step(control, 3)
    from napari_pmt_iqa.training import FinetuneConfig, finetune

    out = tmp_path / "b"
    cfg = FinetuneConfig(data=str(data), init=str(init), out_dir=str(out), **kw)
    part = finetune(cfg, listeners=[stop_at_step_3], control=control)
    assert part.stopped and part.state_path
    # the other setting does not resume it
    with pytest.raises(TrainingError, match="defect_score"):
        _finetune(init, data, out, resume=out, defect_score=False, **kw)
    rest = _finetune(init, data, out, resume=out, **kw)
    a, b = load_file(full.best_path), load_file(rest.best_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rest.best_val == full.best_val and rest.start_val == full.start_val
    assert load_checkpoint(rest.best_path).fuses_defects
