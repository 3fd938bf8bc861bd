"""The scoring API: dtypes, layouts, determinism, tiling, stacks, cancel, precision, results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_pmt_iqa import scoring
from napari_pmt_iqa.imaging import ImageError
from napari_pmt_iqa.model import PMTIQA
from napari_pmt_iqa.score_scale import ScoreScale
from napari_pmt_iqa.scoring import (
    ScoreResult,
    ScoringCancelled,
    StackResult,
    score,
    score_batch,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return PMTIQA(backbone="tiny", pretrained=False).eval()


def _photo(shape=(256, 320, 3), seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    base = (np.sin(x / 9.0) + np.cos(y / 13.0)) * 60 + 128
    img = base[..., None] + rng.normal(0, 20, shape if len(shape) == 3 else shape + (1,))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img if len(shape) == 3 else img[..., 0]


def test_result_of_a_photo(tiny):
    img = _photo((288, 352, 3))  # 3 x 5 crops
    r = score(img, tiny, "cpu")
    assert isinstance(r, ScoreResult)
    assert r.crop_scores.shape == (3, 5) and r.n_crops == 15
    assert r.score == pytest.approx(r.crop_scores.mean(), rel=1e-5)
    assert r.class_probs.shape == (10,) and r.class_probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert r.predicted_class == int(np.argmax(r.class_probs))
    assert len(r.class_edges) == 11 and r.class_edges[0] == 0 and r.class_edges[-1] == 100
    assert r.crop_positions.shape == (3, 5, 2)
    np.testing.assert_array_equal(r.crop_positions[1, 2], [32, 64])
    assert r.crop_size == 224 and r.units and r.score_range == (0.0, 100.0)
    m = r.maps
    # the 3 x 5 crop grid, its edge cells repeated 3 times outwards to reach the image borders
    assert m.padding == (3, 3, 3, 3)
    assert m.quality.shape == m.class_map.shape == m.confidence.shape == (9, 11)
    assert m.scale_maps.shape == (4, 9, 11)
    np.testing.assert_array_equal(m.crop_grid(m.quality), r.crop_scores.astype(np.float32))
    assert m.geometry.scale == (32.0, 32.0)
    assert m.geometry.translate == (224 / 2 - 16 - 3 * 32, 224 / 2 - 16 - 3 * 32)
    assert ((m.confidence > 0) & (m.confidence <= 1)).all()
    d = r.to_dict()
    json.dumps(d)
    assert d["n_crops"] == 15 and d["method"] == "fast"


def test_scores_come_back_in_the_checkpoint_units(tiny):
    img = _photo()
    ref = score(img, tiny, "cpu", maps=False)
    tiny.score_scale = ScoreScale(0, 100, higher_is_better=False, name="DMOS")
    try:
        r = score(img, tiny, "cpu", maps=True)
    finally:
        del tiny.score_scale
    assert r.score == pytest.approx(100 - ref.score, abs=1e-3)
    assert not r.higher_is_better and r.units == "DMOS"
    assert r.class_edges[0] == 100 and r.class_edges[-1] == 0


def test_same_image_same_score_every_time(tiny):
    img = _photo(seed=3)
    scores = {score(img, tiny, "cpu", maps=False).score for _ in range(3)}
    assert len(scores) == 1
    crops = {score(img, tiny, "cpu", maps=False, method="crops").score for _ in range(2)}
    assert len(crops) == 1


@pytest.mark.parametrize(
    "dtype, scale",
    [
        (np.uint8, 1),
        (np.uint16, 257),
        (np.float32, 1 / 255),
        (np.float64, 1 / 255),
        (np.int32, 1),
        (np.float32, 1.0),
    ],
)
def test_any_dtype_is_accepted(tiny, dtype, scale):
    img = (_photo().astype(np.float64) * scale).astype(dtype)
    r = score(img, tiny, "cpu", maps=False)
    assert np.isfinite(r.score)


def test_dtype_normalisation_is_consistent(tiny):
    img8 = _photo()
    ref = score(img8, tiny, "cpu", maps=False).score
    # a float image in [0, 1] is the uint8 image / 255: the same score
    assert score(img8 / 255.0, tiny, "cpu", maps=False).score == pytest.approx(ref, abs=1e-4)
    # a true 16-bit photo with its range given explicitly scores like the 8-bit one
    img16 = img8.astype(np.uint16) * 257
    s16 = score(img16, tiny, "cpu", maps=False, intensity_range=(0, 65535)).score
    assert s16 == pytest.approx(ref, abs=1e-3)


def test_layouts_give_the_same_score(tiny):
    rgb = _photo()
    ref = score(rgb, tiny, "cpu", maps=False).score
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    assert score(rgba, tiny, "cpu", maps=False).score == pytest.approx(ref, abs=1e-5)
    chw = np.moveaxis(rgb, -1, 0).copy()
    assert score(chw, tiny, "cpu", maps=False).score == pytest.approx(ref, abs=1e-5)
    assert score(chw, tiny, "cpu", maps=False, channel_axis=0).score == pytest.approx(ref, abs=1e-5)
    gray = rgb[..., 0]
    g = score(gray, tiny, "cpu", maps=False).score
    g3 = score(np.repeat(gray[..., None], 3, -1), tiny, "cpu", maps=False).score
    assert g == pytest.approx(g3, abs=1e-5)


def test_small_images_are_enlarged_to_one_crop(tiny):
    r = score(_photo((100, 150, 3)), tiny, "cpu")
    assert r.n_crops >= 1
    assert r.crop_size == pytest.approx(224 * 100 / 224)  # crop side in original pixels
    r2 = score(
        np.full((14, 14), 7, np.uint8), tiny, "cpu", maps=False
    )  # 16 x enlargement: the limit
    assert np.isfinite(r2.score)
    with pytest.raises(ImageError, match="enlarged"):  # a 2 x 2 image says nothing about quality
        score(np.full((2, 2), 7, np.uint8), tiny, "cpu", maps=False)


def test_crops_method_equals_fast_on_one_crop(tiny):
    img = _photo((224, 224, 3))
    a = score(img, tiny, "cpu", method="fast", maps=False)
    b = score(img, tiny, "cpu", method="crops", maps=False)
    assert a.n_crops == b.n_crops == 1
    assert a.score == pytest.approx(b.score, abs=1e-4)
    c = score(_photo((256, 288, 3)), tiny, "cpu", method="crops", batch_size=4)
    assert c.crop_scores.shape == (2, 3) and c.method == "crops"


def test_tiles_within_a_memory_bound_match_one_pass(tiny):
    img = _photo((544, 608, 3), seed=5)  # 11 x 13 crops
    one = score(img, tiny, "cpu", maps=False, memory_mb=4096)
    calls = []
    tiled = score(
        img, tiny, "cpu", maps=False, memory_mb=1, progress=lambda d, t: calls.append((d, t))
    )
    total = calls[-1][1]
    assert total >= 4  # several tiles were used
    assert calls == [(k, total) for k in range(1, total + 1)]
    assert tiled.crop_scores.shape == one.crop_scores.shape == (11, 13)
    # stated tolerance: with the tiny model's halo (its whole receptive field) tiled crop scores
    # equal single-pass ones up to float rounding, 1e-5 on the 0-100 scale (without the margin
    # they differ by about 4e-4 here)
    assert np.ptp(one.crop_scores) > 1e-3  # the scores do vary over the image
    np.testing.assert_allclose(tiled.crop_scores, one.crop_scores, atol=1e-5)
    assert tiled.score == pytest.approx(one.score, abs=1e-5)


def test_large_uint8_image_is_not_copied_whole_into_float(tiny):
    """Tiles are converted to float one at a time: numpy never holds a full float32 copy."""
    import tracemalloc

    img = _photo((1536, 1536, 3))
    full_float_bytes = img.size * 4
    tracemalloc.start()
    try:
        r = score(img, model=tiny, device="cpu", maps=False, memory_mb=20)  # 576 px tiles
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.isfinite(r.score)
    assert peak < full_float_bytes / 2, f"numpy peak {peak / 2**20:.1f} MiB"


def test_tile_size_follows_the_budget():
    from napari_pmt_iqa.receptive_field import tile_halo

    assert scoring._tile_size("resnet50", 1024, 224) >= 1024
    # never smaller than 8 windows with the backbone's halo on both sides
    assert scoring._tile_size("resnet50", 1, 224) == 224 + 7 * 32 + 2 * tile_halo("resnet50")
    assert scoring._tile_size("resnet50", 64, 224) % 32 == 0


def test_stacks_give_one_score_per_plane(tiny):
    planes = [_photo((224, 256), seed=s) for s in range(3)]
    stack = np.stack(planes)  # (3, H, W) grayscale: more than 4 planes would not be colour
    stack = np.concatenate([stack, stack[:2]])  # 5 planes
    calls = []
    r = score(stack, tiny, "cpu", maps=False, progress=lambda d, t: calls.append((d, t)))
    assert isinstance(r, StackResult)
    assert r.scores.shape == (5,)
    assert r.scores[3] == r.scores[0] and r.scores[4] == r.scores[1]
    assert r.scores[0] == pytest.approx(score(planes[0], tiny, "cpu", maps=False).score)
    assert calls[-1] == (5, 5)
    r2 = score(np.stack([stack[:2], stack[2:4]]), tiny, "cpu", maps=False)  # (2, 2, H, W)
    assert r2.scores.shape == (2, 2)
    rgb_stack = np.stack([_photo((224, 224, 3), seed=s) for s in range(2)])
    assert score(rgb_stack, tiny, "cpu", maps=False).scores.shape == (2,)
    assert r.score == pytest.approx(r.scores.mean())


def test_cancel(tiny):
    img = _photo((544, 608, 3))
    with pytest.raises(ScoringCancelled):
        score(img, tiny, "cpu", memory_mb=1, cancel=lambda: True)
    n = {"k": 0}

    def after_two():
        n["k"] += 1
        return n["k"] > 2

    with pytest.raises(ScoringCancelled):
        score(img, tiny, "cpu", memory_mb=1, cancel=after_two)
    assert n["k"] == 3
    with pytest.raises(ScoringCancelled):
        score(img, tiny, "cpu", method="crops", cancel=lambda: True)
    with pytest.raises(ScoringCancelled):
        score(np.stack([img[..., 0]] * 3), tiny, "cpu", cancel=lambda: True)


def test_bf16_is_close_to_fp32(tiny):
    img = _photo(seed=7)
    a = score(img, tiny, "cpu", maps=False)
    b = score(img, tiny, "cpu", maps=False, precision="bf16")
    # stated tolerance: 1 point on the 0-100 scale (bf16 keeps about 3 significant digits)
    assert abs(a.score - b.score) < 1.0
    np.testing.assert_allclose(a.crop_scores, b.crop_scores, atol=2.0)
    with pytest.raises(ValueError, match="'fp16' needs a GPU"):
        score(img, tiny, "cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        score(img, tiny, "cpu", precision="int8")


def test_unknown_method_is_an_error(tiny):
    with pytest.raises(ValueError, match="method must be 'fast' or 'crops'"):
        score(_photo(), tiny, "cpu", method="random")


def test_channels_last_does_not_change_scores():
    torch.manual_seed(4)
    model = PMTIQA(backbone="tiny", pretrained=False).eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        ref = model(x, normalized=False).score
    img = (x[0].permute(1, 2, 0).numpy()).astype(np.float32)
    r = score(img, model, "cpu", maps=False)
    assert r.score == pytest.approx(float(ref), abs=1e-4)


def test_score_batch_matches_score(tiny):
    imgs = [_photo((256, 288, 3), seed=s) for s in range(3)] + [_photo((224, 224, 3), seed=9)]
    out = score_batch(imgs, tiny, "cpu", batch_size=2)
    for img, r in zip(imgs, out):
        assert r.score == pytest.approx(score(img, tiny, "cpu", maps=False).score, abs=1e-4)
    big = _photo((544, 608, 3))
    r = score_batch([big], tiny, "cpu", memory_mb=1)[0]
    assert r.score == pytest.approx(score(big, tiny, "cpu", maps=False).score, abs=1e-3)
    with pytest.raises(ImageError, match="2D images"):
        score_batch([np.zeros((3, 240, 240), np.uint8)[None].repeat(2, 0)], tiny, "cpu")


def test_model_from_a_checkpoint_is_cached(tiny, tmp_path):
    from napari_pmt_iqa.weights import save_checkpoint

    path = save_checkpoint(tmp_path / "m.safetensors", tiny, score_scale=ScoreScale(1, 5))
    scoring.clear_model_cache()
    a = scoring.get_model(str(path), "cpu")
    assert scoring.get_model(path, "cpu") is a
    r = score(_photo(), str(path), "cpu", maps=False)
    assert 1 <= r.score <= 5 and r.score_range == (1.0, 5.0)
    scoring.clear_model_cache()


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((0, 10), np.uint8), "empty"),
        (np.zeros((1, 1), np.uint8), "1 x 1 pixels"),
        (np.zeros(5, np.uint8), "at least 2 dimensions"),
        (np.zeros((2, 2, 2, 32, 32), np.uint8), "dimensions"),
        (np.array([["a", "b"], ["c", "d"]]), "numeric"),
        (np.ones((32, 32), np.complex64), "Complex"),
    ],
)
def test_bad_arrays_are_clear_errors(tiny, image, match):
    with pytest.raises(ImageError, match=match):
        score(image, tiny, "cpu")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_clear_errors(tiny, bad):
    img = _photo().astype(np.float32)
    img[10, 10, 1] = bad
    with pytest.raises(ImageError, match="NaN or infinite"):
        score(img, tiny, "cpu")


def test_explicit_cuda_without_gpu_is_a_device_error(tiny):
    from napari_pmt_iqa.devices import DeviceError

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceError, match="no usable CUDA GPU"):
        score(_photo(), tiny, "cuda:0")


def test_extreme_enlargement_is_refused_quickly(tiny):
    with pytest.raises(ImageError, match="enlarged"):
        score(np.zeros((10, 5000), np.uint8), model=tiny, device="cpu")
    r = score(np.zeros((256, 256, 1), np.uint8) + 100, model=tiny, device="cpu", maps=False)
    assert not isinstance(r, scoring.StackResult)


def test_nan_weights_are_a_clear_error_not_a_nan_score():
    import copy

    import torch

    from napari_pmt_iqa.scoring import ModelOutputError, score_batch

    torch.manual_seed(0)
    net = PMTIQA(backbone="tiny", pretrained=False).eval()
    bad = copy.deepcopy(net)
    with torch.no_grad():
        list(bad.parameters())[-1].fill_(float("nan"))  # the last layer of the heads
    img = _photo((96, 96, 3))
    assert np.isfinite(score(img, net, device="cpu").score)
    with pytest.raises(ModelOutputError, match="NaN or infinite scores"):
        score(img, bad, device="cpu")
    with pytest.raises(ModelOutputError):
        score_batch([img, img], bad, device="cpu")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"memory_mb": float("nan")}, "memory_mb must be a positive number"),
        ({"memory_mb": -1}, "memory_mb must be a positive number"),
        ({"memory_mb": "512"}, "memory_mb must be a positive number"),
        ({"method": "crops", "batch_size": 0}, "batch_size must be a whole number"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"precision": "fp16"}, "needs a GPU"),
        ({"intensity_range": "ab"}, "intensity_range must be two numbers"),
        ({"intensity_range": (5, 1)}, "low < high"),
    ],
)
def test_bad_options_are_refused_up_front(tiny, kwargs, match):
    with pytest.raises(ValueError, match=match):
        score(_photo((64, 64, 3)), tiny, device="cpu", **kwargs)


def test_score_batch_names_the_bad_image_and_takes_iterables(tiny):
    from napari_pmt_iqa.scoring import score_batch

    good = _photo((64, 64, 3))
    bad = good.astype(np.float32)
    bad[3, 3, 0] = np.nan
    with pytest.raises(ImageError, match=r"Image 1 of the batch: .*NaN"):
        score_batch([good, bad], tiny, device="cpu")
    with pytest.raises(ImageError, match="use score\\(\\) for it"):
        score_batch(good, tiny, device="cpu")
    with pytest.raises(ValueError, match="batch_size must be"):
        score_batch([good], tiny, device="cpu", batch_size=0)
    gen = score_batch((im for im in [good, good]), tiny, device="cpu")
    assert len(gen) == 2 and gen[0].score == pytest.approx(gen[1].score)
    stack = score_batch(np.stack([good, good]), tiny, device="cpu")
    assert len(stack) == 2


# --------------------------------------------------------------------------- issue 15
def test_a_model_in_training_mode_is_scored_in_eval_mode_and_given_back(tiny):
    torch.manual_seed(1)
    model = PMTIQA(backbone="tiny", pretrained=False)  # training mode, as a trainer has it
    img = _photo(seed=2)
    stats = [b.clone() for b in model.state_dict().values()]
    r = score(img, model, "cpu", maps=False)
    assert model.training  # given back as it came
    assert all(torch.equal(a, b) for a, b in zip(stats, model.state_dict().values()))
    ref = score(img, model.eval(), "cpu", maps=False)
    assert r.score == ref.score
    model.train()
    out = score_batch([img], model, "cpu")
    assert model.training and out[0].score == pytest.approx(ref.score, abs=1e-5)


def test_a_stray_pixel_or_a_wide_integer_type_does_not_change_the_rule(tiny):
    img = _photo(seed=4)
    ref = score(img, tiny, "cpu", maps=False).score
    f = img / 255.0
    f[10, 10, 0] = 1.0
    f1 = f.copy()
    f1[10, 10, 0] = 1.001  # one pixel above 1: clipped, not a reason to stretch the image
    assert score(f1, tiny, "cpu", maps=False).score == score(f, tiny, "cpu", maps=False).score
    for dtype in (np.int64, np.uint16):
        assert score(img.astype(dtype), tiny, "cpu", maps=False).score == pytest.approx(ref)


def test_planes_of_a_stack_share_one_intensity_rule(tiny):
    rng = np.random.default_rng(3)
    plane = (rng.random((256, 256)) * 3000 + 500).astype(np.uint16)
    stack = np.stack([plane, plane, plane // 10, plane, plane])
    r = score(stack, tiny, "cpu", maps=False)
    s = r.scores
    assert s[0] == s[1] == s[3] == s[4]
    assert abs(s[2] - s[0]) > 1e-3  # the dark plane is scored as dark
    # the stack's rule, not the plane's: plane 2 alone would be stretched to look like plane 0
    alone = score(stack[2], tiny, "cpu", maps=False).score
    assert alone == pytest.approx(s[0], abs=0.5) and alone != pytest.approx(s[2], abs=1e-3)


def _lazy_photo(h, w, chunk=1000):
    da = pytest.importorskip("dask.array")

    def block(block_info=None):
        (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
        y, x = np.mgrid[y0:y1, x0:x1]
        base = (np.sin(x / 9.0) + np.cos(y / 13.0)) * 60 + 128 + ((x * 7 + y * 13) % 23)
        return np.repeat(base[..., None], 3, axis=-1).astype(np.uint8)

    return da.map_blocks(
        block, chunks=((chunk,) * (h // chunk), (chunk,) * (w // chunk), (3,)), dtype=np.uint8
    )


def test_a_lazy_array_scores_like_numpy(tiny):
    lazy = _lazy_photo(1000, 1000, chunk=250)
    ref = score(np.asarray(lazy), tiny, "cpu")
    r = score(lazy, tiny, "cpu", memory_mb=16)  # tiled, read tile by tile
    np.testing.assert_allclose(r.crop_scores, ref.crop_scores, atol=1e-4)
    np.testing.assert_allclose(r.maps.quality, ref.maps.quality, atol=1e-4)
    stack = pytest.importorskip("dask.array").stack([lazy[:300, :300], lazy[300:600, 300:600]])
    rs = score(stack, tiny, "cpu", maps=False)
    assert rs.scores.shape == (2,)
    assert rs.scores[1] == pytest.approx(score(np.asarray(stack[1]), tiny, "cpu", maps=False).score)


def _rss_mb(key="VmRSS"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(key)


_PEAK_SCRIPT = """
import gc, sys
import dask
import numpy as np, torch
import dask.array as da
from napari_pmt_iqa.model import PMTIQA
from napari_pmt_iqa.scoring import score

def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

def block(block_info=None):  # a chunk costs about its own size, as a chunk read from a store
    (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
    y, x = np.arange(y0, y1), np.arange(x0, x1)
    base = np.add.outer(np.cos(y / 13.0).astype(np.float32), np.sin(x / 9.0).astype(np.float32))
    base *= 60
    base += np.add.outer((y * 13) % 23 + 128, (x * 7) % 23).astype(np.float32)
    out = np.empty(base.shape + (3,), np.uint8)
    out[..., 0] = base
    out[..., 1:] = out[..., :1]
    return out

budget = int(sys.argv[1])
dask.config.set(scheduler=sys.argv[2])
lazy = da.map_blocks(block, chunks=((1000,) * 8, (1000,) * 8, (3,)), dtype=np.uint8)
torch.manual_seed(0)
tiny = PMTIQA(backbone="tiny", pretrained=False).eval()
score(np.asarray(lazy[:1024, :1024]), tiny, "cpu", maps=False, memory_mb=budget)  # warm up
gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident set size (VmHWM)
before = rss("VmRSS")
r = score(lazy, tiny, "cpu", maps=False, memory_mb=budget)
print(r.crop_scores.shape, rss("VmHWM") - before, lazy.nbytes / 2**20)
"""


def test_a_dask_image_larger_than_the_budget_is_read_tile_by_tile():
    """Peak memory grows by at most 1.5 x memory_mb for a lazy image ~3 x larger than it.

    Measured in a fresh process (the peak resident set of the test process depends on what the
    tests before it left in the allocator), with dask's synchronous scheduler: with its default
    thread pool, dask decodes several chunks at once, which is the data source's memory, not the
    scorer's (docs/results.md gives both figures).
    """
    import subprocess
    import sys

    pytest.importorskip("dask.array")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS here")
    budget = 64
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(budget), "synchronous"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    shape, growth, size = out.stdout.strip().rsplit(" ", 2)
    assert shape == "(244, 244)" and float(size) > 2.8 * budget
    growth = float(growth)
    assert growth <= 1.5 * budget, (
        f"peak memory grew by {growth:.0f} MB (image {float(size):.0f} MB)"
    )
