"""Reading image files and normalising arrays of any dtype and layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_pmt_iqa.imaging import ImageError, read_image, standardize_layout, to_rgb01


def _rgb(h=40, w=50, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


# --------------------------------------------------------------------------- files
@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_read_image_formats(tmp_path, suffix):
    img = _rgb()
    path = tmp_path / f"img{suffix}"
    if suffix == ".tif":
        import tifffile

        tifffile.imwrite(path, img)
    else:
        Image.fromarray(img).save(path)
    arr = read_image(path)
    assert arr.shape == (40, 50, 3) and arr.dtype == np.uint8
    if suffix != ".jpg":
        np.testing.assert_array_equal(arr, img)


def test_read_16_bit_png_and_palette(tmp_path):
    img16 = (np.arange(40 * 50).reshape(40, 50) * 30).astype(np.uint16)
    Image.fromarray(img16).save(tmp_path / "g16.png")
    arr = read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(arr.astype(np.uint16), img16)
    Image.fromarray(_rgb()).convert("P").save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png").shape == (40, 50, 3)


def test_text_file_renamed_png_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageError, match=r"notes\.png: not a readable image"):
        read_image(path)


def test_truncated_jpeg_is_a_clear_error(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(_rgb(200, 200)).save(good, quality=95)
    data = good.read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.jpg: truncated or corrupt"):
        read_image(bad)


def test_corrupt_tiff_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage" * 3)
    with pytest.raises(ImageError, match=r"bad\.tif"):
        read_image(bad)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a folder"):
        read_image(tmp_path)


# --------------------------------------------------------------------------- layouts
@pytest.mark.parametrize(
    "shape, expected",
    [
        ((40, 50), (40, 50, 1)),
        ((40, 50, 3), (40, 50, 3)),
        ((40, 50, 4), (40, 50, 4)),
        ((3, 40, 50), (40, 50, 3)),  # channel-first colour
        ((4, 40, 50), (40, 50, 4)),
        ((7, 40, 50), (7, 40, 50, 1)),  # a grayscale stack
        ((2, 40, 50, 3), (2, 40, 50, 3)),  # a colour stack
    ],
)
def test_standardize_layout(shape, expected):
    assert standardize_layout(np.zeros(shape, np.uint8)).shape == expected


def test_layout_overrides():
    a = np.zeros((3, 40, 50), np.uint8)
    assert standardize_layout(a, rgb=False).shape == (3, 40, 50, 1)
    assert standardize_layout(np.zeros((40, 3, 50)), channel_axis=1).shape == (40, 50, 3)
    with pytest.raises(ImageError, match="channel axis has 5"):
        standardize_layout(np.zeros((40, 5, 50)), channel_axis=1)
    with pytest.raises(ImageError, match="last axis of 3 or 4"):
        standardize_layout(np.zeros((40, 50)), rgb=True)


@pytest.mark.parametrize(
    "arr, match",
    [
        (np.zeros((0, 5)), "empty"),
        (np.zeros(7), "at least 2 dimensions"),
        (np.array([[object()]]), "numeric"),
        (np.zeros((4, 4), np.complex128), "Complex"),
    ],
)
def test_layout_rejects_bad_arrays(arr, match):
    with pytest.raises(ImageError, match=match):
        standardize_layout(arr)


# --------------------------------------------------------------------------- intensities
def test_uint8_is_divided_by_255():
    a = np.array([[0, 255], [51, 102]], np.uint8)[..., None]
    out = to_rgb01(a)
    assert out.dtype == np.float32 and out.shape == (2, 2, 3)
    np.testing.assert_allclose(out[..., 0], [[0, 1], [0.2, 0.4]], atol=1e-6)


def test_float_in_unit_range_is_kept():
    a = np.random.default_rng(0).random((8, 8, 3))
    np.testing.assert_allclose(to_rgb01(a), a.astype(np.float32))


def test_uint16_is_stretched_by_percentiles():
    rng = np.random.default_rng(0)
    a = rng.integers(1000, 4096, size=(64, 64, 1)).astype(np.uint16)  # 12-bit data in 16 bits
    out = to_rgb01(a)
    assert out.min() == 0.0 and out.max() == 1.0
    assert 0.3 < out.mean() < 0.7  # not nearly black
    fixed = to_rgb01(a, intensity_range=(0, 65535))
    np.testing.assert_allclose(fixed[..., 0], a[..., 0] / 65535, atol=1e-6)
    with pytest.raises(ImageError, match="high > low"):
        to_rgb01(a, intensity_range=(5, 5))


def test_constant_and_bool_and_negative_images():
    np.testing.assert_array_equal(to_rgb01(np.full((4, 4, 1), 1000, np.uint16)), 0.5)
    b = np.eye(4, dtype=bool)[..., None]
    np.testing.assert_array_equal(to_rgb01(b)[..., 0], np.eye(4))
    neg = np.linspace(-5, 5, 100).reshape(10, 10, 1)
    out = to_rgb01(neg)
    assert out.min() == 0.0 and out.max() == 1.0


def test_alpha_dropped_and_gray_repeated():
    rgba = np.dstack([_rgb(), np.zeros((40, 50), np.uint8)])
    np.testing.assert_array_equal(to_rgb01(rgba), to_rgb01(_rgb()))
    g = to_rgb01(_rgb()[..., :1])
    np.testing.assert_array_equal(g[..., 0], g[..., 2])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_rejected(bad):
    a = np.zeros((4, 4, 3), np.float32)
    a[1, 1, 1] = bad
    with pytest.raises(ImageError, match="NaN or infinite"):
        to_rgb01(a)


def test_float64_values_beyond_float32_range_are_normalised_not_nan():
    rng = np.random.default_rng(0)
    base = rng.random((16, 16, 3))
    for factor in (1e300, -1e300, 1e39):
        out = to_rgb01(base * factor)
        assert out.dtype == np.float32 and np.isfinite(out).all()
        # the same picture as at a sane scale (normalisation is scale invariant)
        np.testing.assert_allclose(out, to_rgb01(base * np.sign(factor) * 1000), atol=1e-5)
    out = to_rgb01(base * 1e300, intensity_range=(0.0, 1e300))
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_too_small_plane_rejected():
    with pytest.raises(ImageError, match="at least 2 x 2"):
        to_rgb01(np.zeros((1, 5, 3), np.uint8))


def test_trailing_axis_of_one_is_grayscale_and_two_is_refused():
    from napari_pmt_iqa.imaging import standardize_layout

    assert standardize_layout(np.zeros((64, 48, 1), np.uint8)).shape == (64, 48, 1)
    with pytest.raises(ImageError, match="2 entries"):
        standardize_layout(np.zeros((64, 48, 2), np.uint8))
    # an explicit rgb=False still reads it as a stack of planes
    assert standardize_layout(np.zeros((64, 48, 2), np.uint8), rgb=False).shape == (64, 48, 2, 1)


# --------------------------------------------------------------------------- the intensity rule
def test_a_stray_pixel_does_not_flip_the_rule_of_a_float_image():
    from napari_pmt_iqa.imaging import intensity_rule

    a = np.random.default_rng(0).random((64, 64, 3))
    ref = to_rgb01(a)
    a[3, 4, 0] = 1.001  # one pixel over the top
    a[5, 6, 1] = -0.01
    assert intensity_rule(a).kind == "unit"
    out = to_rgb01(a)
    assert out[3, 4, 0] == 1.0 and out[5, 6, 1] == 0.0  # clipped
    mask = np.ones(a.shape, bool)
    mask[3, 4, 0] = mask[5, 6, 1] = False
    np.testing.assert_array_equal(out[mask], ref[mask])


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.int32, np.int16])
def test_8_bit_values_in_wider_integers_are_8_bit(dtype):
    from napari_pmt_iqa.imaging import intensity_rule

    img = _rgb(64, 64)
    assert intensity_rule(img.astype(dtype)).kind == "8-bit values"
    np.testing.assert_array_equal(to_rgb01(img.astype(dtype)), to_rgb01(img))
    dim = (img // 4).astype(dtype)  # a dark photo stays dark: not stretched
    np.testing.assert_allclose(to_rgb01(dim), to_rgb01((img // 4).astype(np.uint8)), atol=0)


def test_one_rule_for_a_stack_keeps_a_dark_plane_dark():
    from napari_pmt_iqa.imaging import intensity_rule

    rng = np.random.default_rng(1)
    plane = rng.integers(500, 4000, (64, 64, 1)).astype(np.uint16)
    stack = np.stack([plane, plane // 10, plane])
    rule = intensity_rule(stack)
    assert rule.kind == "percentiles" and rule.high > 3000
    bright = to_rgb01(stack[0], rule=rule)
    dark = to_rgb01(stack[1], rule=rule)
    assert dark.mean() < 0.1 < 0.3 < bright.mean()
    # each plane alone would be stretched to look the same
    assert to_rgb01(stack[1]).mean() == pytest.approx(to_rgb01(stack[0]).mean(), abs=0.05)
    assert "percentiles" in rule.describe()


def test_rules_of_other_dtypes_and_sampling_of_large_arrays():
    from napari_pmt_iqa import imaging

    assert imaging.intensity_rule(np.zeros((4, 4, 1), np.uint8)).kind == "8-bit"
    assert imaging.intensity_rule(np.zeros((4, 4, 1), bool)).kind == "binary"
    assert imaging.intensity_rule(np.full((4, 4, 1), 7.0)).kind == "constant"
    assert imaging.intensity_rule(np.zeros((4, 4, 1)), (2, 3)).kind == "given"
    big = np.random.default_rng(0).integers(0, 4096, (2100, 2100, 1)).astype(np.uint16)
    rule = imaging.intensity_rule(big)  # 4.4 M values: percentiles of a strided sample
    lo, hi = np.percentile(big, [0.1, 99.9])
    assert rule.low == pytest.approx(lo, rel=0.05, abs=5) and rule.high == pytest.approx(
        hi, rel=0.01
    )


def test_lazy_planes_read_only_what_is_indexed():
    from napari_pmt_iqa.imaging import LazyPlane, is_lazy, lazy_planes

    class Spy:
        """An array-like that records every read (like a zarr array)."""

        def __init__(self, a):
            self.a, self.reads = a, []
            self.shape, self.dtype, self.ndim = a.shape, a.dtype, a.ndim

        def __getitem__(self, key):
            self.reads.append(key)
            return self.a[key]

    a = np.random.default_rng(0).integers(0, 255, (2, 3, 40, 50), dtype=np.uint8)  # (T, C, H, W)
    spy = Spy(a)
    assert is_lazy(spy) and not is_lazy(a)
    planes, lead = lazy_planes(spy, channel_axis=1)
    assert lead == (2,) and len(planes) == 2 and isinstance(planes[1], LazyPlane)
    assert planes[1].shape == (40, 50, 3) and not spy.reads
    tile = planes[1][10:20, 5:15]
    np.testing.assert_array_equal(tile, np.moveaxis(a[1, :, 10:20, 5:15], 0, -1))
    assert len(spy.reads) == 1
    w = planes[0].window(8, 8, 16, 16)
    np.testing.assert_array_equal(w[2:4, 3:5], np.moveaxis(a[0, :, 10:12, 11:13], 0, -1))
    np.testing.assert_array_equal(np.asarray(planes[0]), np.moveaxis(a[0], 0, -1))
    grey, lead = lazy_planes(Spy(a[:, 0]))
    assert lead == (2,) and grey[0].shape == (40, 50, 1)


def test_one_enlargement_rule_for_scoring_and_training(tiny_model):
    """A small image scores (nearly) the same whether score() or the training path enlarged it:
    both use imaging.enlarge_to (bicubic); only the training path's uint8 storage differs."""
    import torch
    import torch.nn.functional as F

    from napari_pmt_iqa.data.crops import array_to_rgb8
    from napari_pmt_iqa.imaging import enlarge_to, enlarged_size
    from napari_pmt_iqa.scoring import score

    rng = np.random.default_rng(0)
    img = (rng.random((150, 200, 3)) * 255).astype(np.uint8)
    assert enlarged_size(150, 200, 224) == (224, 299)
    ref = F.interpolate(
        torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None],
        size=(224, 299),
        mode="bicubic",
        align_corners=False,
    )[0].permute(1, 2, 0)
    np.testing.assert_array_equal(
        enlarge_to(img, (224, 299)), (ref.clamp(0, 255).numpy() + 0.5).astype(np.uint8)
    )
    trained = array_to_rgb8(img, 224)
    assert trained.shape == (224, 299, 3)
    a = score(img, tiny_model, device="cpu", maps=False).score
    b = score(trained, tiny_model, device="cpu", maps=False).score
    assert abs(a - b) < 0.5
