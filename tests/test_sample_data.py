"""Sample data (graded distortions)."""

import numpy as np
import pytest

from napari_pmt_iqa import _sample_data


@pytest.mark.parametrize("kind", ["blur", "noise", "jpeg"])
def test_graded_stacks_get_worse(kind):
    stack, kwargs = _sample_data.graded_stack(kind, max_side=128)
    assert stack.dtype == np.uint8 and stack.ndim == 4 and stack.shape[-1] == 3
    assert kwargs["rgb"] and len(kwargs["metadata"]["pmt_iqa_sample"]["labels"]) == stack.shape[0]
    ref = stack[0].astype(float)
    err = [np.abs(s.astype(float) - ref).mean() for s in stack]
    assert err[0] == 0 and all(b > a for a, b in zip(err, err[1:]))  # strictly graded


def test_sample_functions_return_layer_data():
    for fn in (_sample_data.graded_blur, _sample_data.photo_pair, _sample_data.local_defects):
        out = fn()
        assert out and all(isinstance(item[0], np.ndarray) and "name" in item[1] for item in out)


def test_local_defects_quadrants():
    ((img, kwargs),) = _sample_data.local_defects()
    q = _sample_data._photo("astronaut", 384)
    n = q.shape[0]
    assert img.shape == (2 * n, 2 * q.shape[1], 3) and img.dtype == np.uint8
    quads = [
        img[:n, : q.shape[1]],
        img[:n, q.shape[1] :],
        img[n:, : q.shape[1]],
        img[n:, q.shape[1] :],
    ]
    assert np.array_equal(quads[0], q)  # the clean quadrant is untouched
    for k in (1, 2, 3):
        assert np.abs(quads[k].astype(int) - q.astype(int)).mean() > 1  # the others are distorted
    assert "quadrants" in kwargs["metadata"]["pmt_iqa_sample"]


def test_distort_rejects_unknown():
    with pytest.raises(ValueError, match="Unknown distortion"):
        _sample_data.distort(np.zeros((8, 8, 3), np.uint8), "swirl", 1)
