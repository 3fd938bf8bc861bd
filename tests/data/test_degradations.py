"""The degradation bank: every kind, five graded levels, shape and dtype kept, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from napari_pmt_iqa.data import degradations as D


def _photo(seed: int = 0) -> np.ndarray:
    """A 160 x 192 crop of a bundled natural photo (scikit-image's astronaut; no download)."""
    from skimage import data

    y0, x0 = [(40, 120), (200, 180), (300, 60), (100, 250)][seed % 4]
    return np.ascontiguousarray(data.astronaut()[y0 : y0 + 160, x0 : x0 + 192])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


@pytest.mark.parametrize("kind", D.KINDS)
def test_each_level_is_worse_than_the_one_before(kind):
    img = _photo()
    psnr = []
    for level in range(1, 6):
        out = D.distort(img, kind, level, seed=3)
        assert out.shape == img.shape and out.dtype == np.uint8
        psnr.append(_psnr(img, out))
    assert all(a > b for a, b in zip(psnr, psnr[1:])), psnr
    np.testing.assert_array_equal(D.distort(img, kind, 0), img)


@pytest.mark.parametrize("kind", D.KINDS)
def test_same_seed_same_result(kind):
    img = _photo(1)
    np.testing.assert_array_equal(D.distort(img, kind, 3, seed=5), D.distort(img, kind, 3, seed=5))


def test_noise_depends_on_the_seed():
    img = _photo(2)
    assert not np.array_equal(
        D.distort(img, "noise", 2, seed=1), D.distort(img, "noise", 2, seed=2)
    )


def test_the_bank_and_its_held_out_kinds():
    assert set(D.TRAIN_KINDS).isdisjoint(D.HELD_OUT_KINDS) and len(D.HELD_OUT_KINDS) >= 2
    assert set(D.TRAIN_KINDS) | set(D.HELD_OUT_KINDS) == set(D.KINDS)
    assert set(D.SANITY_KINDS) <= set(D.TRAIN_KINDS)
    for kind in D.KINDS:
        assert len(D.LEVELS[kind]) == 5


def test_signal_dependent_noise_is_stronger_in_bright_areas():
    flat = np.zeros((64, 128, 3), np.uint8)
    flat[:, 64:] = 220
    flat[:, :64] = 30
    out = D.distort(flat, "poisson", 3, seed=0).astype(np.float64)
    assert out[:, 64:].std() > 1.5 * out[:, :64].std()


def test_chroma_noise_leaves_the_luma_alone():
    img = _photo(3)
    out = D.distort(img, "chroma_noise", 4, seed=0).astype(np.float64)
    w = np.array([0.299, 0.587, 0.114])
    luma_change = np.abs(out @ w - img.astype(np.float64) @ w)
    chroma_change = np.abs(out - img.astype(np.float64)).mean()
    assert luma_change.mean() < 0.25 * chroma_change


def test_bad_arguments_are_clear_errors():
    img = _photo()
    with pytest.raises(ValueError, match="unknown distortion"):
        D.distort(img, "sepia", 1)
    with pytest.raises(ValueError, match="level"):
        D.distort(img, "blur", 6)
    with pytest.raises(ValueError, match="uint8"):
        D.distort(img.astype(np.float32), "blur", 1)


def test_stacked_degradations():
    img = _photo()
    out = D.distort_stack(img, [("blur", 2), ("jpeg", 3)], seed=0)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert _psnr(img, out) < _psnr(img, D.distort(img, "blur", 2))
