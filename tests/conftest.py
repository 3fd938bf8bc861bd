"""Shared fixtures. torch and torchvision are imported first, before any viewer exists: importing
torchvision after napari/vispy created an OpenGL context segfaults (see docs environment.md)."""

# ruff: noqa: I001, E402  (torch and torchvision must be imported first)
import torch  # noqa: F401
import torchvision  # noqa: F401

import os
import tempfile

import numpy as np
import pytest

os.environ.setdefault("PMT_IQA_OFFLINE", "1")
# keep the user's cache (and its user-trained models) out of the tests
os.environ["PMT_IQA_CACHE"] = tempfile.mkdtemp(prefix="pmt-iqa-test-cache-")


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny random PMT-IQA model (fast, untrained)."""
    from napari_pmt_iqa.model import PMTIQA

    torch.manual_seed(0)
    return PMTIQA(backbone="tiny", pretrained=False).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model):
    """Path of a tiny checkpoint file (save_checkpoint of ``tiny_model``)."""
    from napari_pmt_iqa.weights import save_checkpoint

    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    save_checkpoint(path, tiny_model)
    return path


@pytest.fixture
def rgb_image():
    """A small textured uint8 RGB image (260 x 300)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:260, 0:300]
    base = (127 + 100 * np.sin(xx / 7.0) * np.cos(yy / 11.0))[..., None]
    img = base + rng.normal(0, 10, (260, 300, 3))
    return np.clip(img, 0, 255).astype(np.uint8)
