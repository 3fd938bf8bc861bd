"""Checkpoints (safetensors + metadata), the registry, verified downloads, bad files."""

from __future__ import annotations

import functools
import http.server
import json
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_pmt_iqa import weights as W
from napari_pmt_iqa.model import PMTIQA
from napari_pmt_iqa.score_scale import ScoreScale
from napari_pmt_iqa.scoring import score


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PMT_IQA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PMT_IQA_OFFLINE", raising=False)
    saved = dict(W.REGISTRY)
    yield
    W.REGISTRY.clear()
    W.REGISTRY.update(saved)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return PMTIQA(backbone="tiny", pretrained=False).eval()


@pytest.fixture
def ckpt(tmp_path, tiny):
    scale = ScoreScale(0, 5, name="MOS (BID, 0-5)")
    return W.save_checkpoint(
        tmp_path / "tiny.safetensors",
        tiny,
        score_scale=scale,
        training={"data": ["generated"], "epochs": 0},
        metrics={"srcc": 0.5},
        description="tiny test model",
    )


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server (127.0.0.1, free port) serving ``tmp_path / 'www'``."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _image(seed=0, shape=(256, 288, 3)):
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


# --------------------------------------------------------------------------- save / load
def test_round_trip_keeps_weights_and_metadata(ckpt, tiny):
    model = W.load_checkpoint(ckpt)
    assert not model.training
    assert W.state_fingerprint(model) == W.state_fingerprint(tiny)
    meta = model.meta
    assert meta["architecture"] == "PMT-IQA"
    assert meta["config"]["backbone"] == "tiny"
    assert meta["score_scale"] == {
        "low": 0.0,
        "high": 5.0,
        "higher_is_better": True,
        "name": "MOS (BID, 0-5)",
    }
    assert meta["class_edges"] == pytest.approx([0.5 * i for i in range(11)])
    assert meta["class_edges_internal"] == pytest.approx([10.0 * i for i in range(11)])
    assert meta["input"]["mean"] == list(tiny.mean) and meta["input"]["std"] == list(tiny.std)
    assert meta["training"] == {"data": ["generated"], "epochs": 0}
    assert meta["metrics"] == {"srcc": 0.5}
    from napari_pmt_iqa import __version__

    assert meta["package_version"] == __version__
    assert meta["storage_dtype"] == "float32"
    assert model.score_scale == ScoreScale(0, 5, name="MOS (BID, 0-5)")
    assert W.read_metadata(ckpt) == meta
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(model(x).score, tiny(x).score)


def test_loading_never_unpickles(ckpt, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("unpickling is not allowed")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert W.load_checkpoint(ckpt).config.backbone == "tiny"


def test_a_pickle_file_is_refused_without_being_unpickled(tmp_path, tiny, monkeypatch):
    path = tmp_path / "model.safetensors"
    torch.save(tiny.state_dict(), path)  # a pickle-based .pt renamed
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(W.CheckpointError, match="not a safetensors checkpoint"):
        W.load_checkpoint(path)


def test_half_storage_is_smaller_and_scores_close(tmp_path, tiny):
    full = W.save_checkpoint(tmp_path / "full.safetensors", tiny)
    half = W.save_checkpoint(tmp_path / "half.safetensors", tiny, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    m_full, m_half = W.load_checkpoint(full), W.load_checkpoint(half)
    assert m_half.meta["storage_dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in m_half.parameters())
    img = _image(1)
    a = score(img, m_full, "cpu", maps=False)
    b = score(img, m_half, "cpu", maps=False)
    # stated tolerance: 0.5 % of the score range (0.5 points on 0-100)
    assert abs(a.score - b.score) < 0.5
    np.testing.assert_allclose(a.crop_scores, b.crop_scores, atol=0.5)


def test_load_model_accepts_a_path_and_a_device(ckpt):
    model = W.load_model(ckpt, device="cpu")
    assert next(model.parameters()).device.type == "cpu"
    assert model.checkpoint_path == str(ckpt)


# --------------------------------------------------------------------------- bad checkpoints
def _rewrite_meta(src: Path, dst: Path, edit) -> Path:
    from safetensors.torch import load_file, save

    meta = W.read_metadata(src)
    edit(meta)
    dst.write_bytes(save(load_file(str(src)), metadata={W.META_KEY: json.dumps(meta)}))
    return dst


def test_metadata_of_another_backbone_is_refused(ckpt, tmp_path):
    def other(meta):
        meta["config"]["backbone"] = "resnet18"

    bad = _rewrite_meta(ckpt, tmp_path / "other.safetensors", other)
    with pytest.raises(W.CheckpointError, match="does not fit the resnet18 PMT-IQA architecture"):
        W.load_checkpoint(bad)


def test_tensors_of_the_wrong_shape_are_refused(tmp_path):
    model = PMTIQA(backbone="tiny", pretrained=False, tap_dim=20)
    src = W.save_checkpoint(tmp_path / "td20.safetensors", model)

    def claim_28(meta):
        meta["config"]["tap_dim"] = 28

    bad = _rewrite_meta(src, tmp_path / "td28.safetensors", claim_28)
    with pytest.raises(W.CheckpointError, match="tensors of the wrong shape"):
        W.load_checkpoint(bad)


def test_unknown_backbone_in_metadata_is_refused(ckpt, tmp_path):
    def unknown(meta):
        meta["config"]["backbone"] = "vit_h"

    bad = _rewrite_meta(ckpt, tmp_path / "vit.safetensors", unknown)
    with pytest.raises(W.CheckpointError, match="configuration in its metadata is invalid"):
        W.load_checkpoint(bad)


def test_invalid_score_scale_is_refused(ckpt, tmp_path):
    bad = _rewrite_meta(
        ckpt, tmp_path / "scale.safetensors", lambda m: m.update(score_scale={"low": 3, "high": 3})
    )
    with pytest.raises(W.CheckpointError, match="score scale in its metadata is invalid"):
        W.load_checkpoint(bad)


def test_newer_format_and_other_architecture_are_refused(ckpt, tmp_path):
    newer = _rewrite_meta(
        ckpt,
        tmp_path / "newer.safetensors",
        lambda m: m.update(format_version=W.FORMAT_VERSION + 1),
    )
    with pytest.raises(W.CheckpointError, match="newer napari-pmt-iqa"):
        W.load_checkpoint(newer)
    other = _rewrite_meta(
        ckpt, tmp_path / "hyper.safetensors", lambda m: m.update(architecture="HyperIQA")
    )
    with pytest.raises(W.CheckpointError, match="'HyperIQA' model, not PMT-IQA"):
        W.load_checkpoint(other)


def test_folder_and_bad_format_version_are_clear_errors(ckpt, tmp_path):
    folder = tmp_path / "dir.safetensors"
    folder.mkdir()
    with pytest.raises(W.CheckpointError, match="is a folder, not a checkpoint file"):
        W.load_checkpoint(folder)
    with pytest.raises(W.CheckpointError, match="is a folder"):
        W.load_model(str(folder))
    with pytest.raises(W.CheckpointError, match="model name is empty"):
        W.load_model("")
    odd = _rewrite_meta(
        ckpt, tmp_path / "odd.safetensors", lambda m: m.update(format_version="abc")
    )
    with pytest.raises(W.CheckpointError, match="format_version 'abc' is not a number"):
        W.load_checkpoint(odd)


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_checkpoint_is_refused(ckpt, tmp_path, keep):
    data = ckpt.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(W.CheckpointError, match=r"corrupt|not a safetensors"):
        W.load_checkpoint(bad)


def test_corrupt_header_is_refused(ckpt, tmp_path):
    data = bytearray(ckpt.read_bytes())
    data[10:20] = b"\xff" * 10
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(W.CheckpointError, match="not a safetensors checkpoint"):
        W.load_checkpoint(bad)


@pytest.mark.parametrize("content", [b"", b"abc", b"hello, this is a text file\n" * 20])
def test_non_safetensors_files_are_refused(tmp_path, content):
    bad = tmp_path / "text.safetensors"
    bad.write_bytes(content)
    with pytest.raises(W.CheckpointError, match=r"not a safetensors|too short"):
        W.load_checkpoint(bad)


def test_safetensors_without_our_metadata_is_refused(tmp_path, tiny):
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(plain))
    with pytest.raises(W.CheckpointError, match="not a napari-pmt-iqa checkpoint"):
        W.load_checkpoint(plain)


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]"])
def test_broken_metadata_is_refused(tmp_path, tiny, raw):
    from safetensors.torch import save

    bad = tmp_path / "meta.safetensors"
    bad.write_bytes(save({"x": torch.zeros(2)}, metadata={W.META_KEY: raw}))
    with pytest.raises(W.CheckpointError, match="metadata is not"):
        W.load_checkpoint(bad)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(W.CheckpointError, match="neither a registered model"):
        W.load_model(tmp_path / "nope.safetensors")
    with pytest.raises(W.CheckpointError, match="file not found"):
        W.read_metadata(tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------- registry & downloads
def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    assert W.cache_dir() == tmp_path / "cache"
    assert W.user_models_dir() == tmp_path / "cache" / "user-models"
    monkeypatch.delenv("PMT_IQA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert W.cache_dir() == tmp_path / "xdg" / "napari-pmt-iqa"


def test_download_from_local_server_loads(ckpt, http_root):
    root, base = http_root
    (root / "m.safetensors").write_bytes(ckpt.read_bytes())
    W.register(
        W.WeightsEntry(
            "served",
            W.sha256_of(ckpt),
            url=f"{base}/m.safetensors",
            meta={"description": "served in a test"},
        )
    )
    calls = []
    path = W.resolve_weights("served", progress=lambda d, t: calls.append((d, t)))
    assert path.parent == W.cache_dir()
    assert W.sha256_of(path) == W.sha256_of(ckpt)
    assert calls and calls[-1][0] == ckpt.stat().st_size
    model = W.load_model("served")
    assert model.meta["description"] == "tiny test model"
    assert W.list_models()["served"] == "served in a test"
    # now cached: offline mode finds it without the server
    root.joinpath("m.safetensors").unlink()
    assert W.resolve_weights("served", offline=True) == path
    # nothing but the checkpoint is left in the cache (no temporary files)
    assert [p.name for p in W.cache_dir().iterdir()] == [path.name]


def test_tampered_download_is_refused_and_nothing_is_cached(ckpt, http_root):
    root, base = http_root
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 0xFF
    (root / "m.safetensors").write_bytes(bytes(data))
    W.register(W.WeightsEntry("tampered", W.sha256_of(ckpt), url=f"{base}/m.safetensors"))
    with pytest.raises(W.CheckpointError, match="refused"):
        W.load_model("tampered")
    cache = W.cache_dir()
    assert not cache.exists() or list(cache.iterdir()) == []


def test_offline_without_cache_is_a_clear_error(ckpt, http_root, monkeypatch):
    root, base = http_root
    (root / "m.safetensors").write_bytes(ckpt.read_bytes())
    W.register(W.WeightsEntry("later", W.sha256_of(ckpt), url=f"{base}/m.safetensors"))
    monkeypatch.setenv("PMT_IQA_OFFLINE", "1")
    with pytest.raises(W.CheckpointError, match="not in the cache.*offline mode is on"):
        W.load_model("later")
    assert not W.cache_dir().exists() or list(W.cache_dir().iterdir()) == []


def test_unreachable_server_is_a_clear_error(ckpt, http_root):
    _, base = http_root
    W.register(W.WeightsEntry("gone", W.sha256_of(ckpt), url=f"{base}/missing.safetensors"))
    with pytest.raises(W.CheckpointError, match="Could not download"):
        W.resolve_weights("gone")
    assert not W.cache_dir().exists() or list(W.cache_dir().iterdir()) == []


def test_a_cached_file_with_the_wrong_hash_is_refused(ckpt):
    entry = W.WeightsEntry("cached", "0" * 64, url="http://127.0.0.1:9/never")
    W.register(entry)
    target = W.cache_dir() / f"cached-{'0' * 12}.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(ckpt.read_bytes())
    with pytest.raises(W.CheckpointError, match="does not match the SHA-256"):
        W.resolve_weights("cached")


def test_list_models_includes_user_models(ckpt, tmp_path):
    udir = W.user_models_dir()
    udir.mkdir(parents=True)
    (udir / "mine.safetensors").write_bytes(ckpt.read_bytes())
    (udir / "junk.safetensors").write_bytes(b"junk")
    listed = W.list_models()
    assert listed[str(udir / "mine.safetensors")] == "tiny test model"
    assert str(udir / "junk.safetensors") not in listed


def test_a_cached_file_changed_after_verification_is_refused(ckpt):
    sha = W.sha256_of(ckpt)
    W.register(W.WeightsEntry("cached-model", sha, url="http://127.0.0.1:9/never-fetched"))
    path = W.cache_dir() / f"cached-model-{sha[:12]}.safetensors"
    path.parent.mkdir(parents=True)
    data = bytearray(Path(ckpt).read_bytes())
    path.write_bytes(bytes(data))
    assert W.resolve_weights("cached-model") == path  # verified once, then not hashed again
    assert W.resolve_weights("cached-model") == path
    before = path.stat().st_mtime_ns
    data[-1] ^= 0xFF  # same size, other bytes: the file changed on disk (later: a newer mtime)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before + 10**9, before + 10**9))
    with pytest.raises(W.CheckpointError, match="does not match the SHA-256"):
        W.resolve_weights("cached-model")


def test_a_replaced_name_resolves_to_its_successor():
    # pmt-lite0-v2 left the package for pmt-lite0-v3: the same network with a defect head
    assert W.REPLACED_BY["pmt-lite0-v2"] == "pmt-lite0-v3"
    assert "pmt-lite0-v2" not in W.REGISTRY
    assert W.resolve_weights("pmt-lite0-v2") == W.resolve_weights("pmt-lite0-v3")
    meta = W.read_metadata(W.resolve_weights("pmt-lite0-v2"))
    assert meta["config"]["defect_kinds"] == ["blur", "noise", "compression"]
    assert meta["format_version"] == 2


def test_the_default_model_is_defect_aware():
    # pmt-lite0-v4: v1's network, a defect head and a defect-aware score (format 3)
    meta = W.read_metadata(W.resolve_weights(None))
    assert meta["format_version"] == 3 and meta["name"] == W.DEFAULT_MODEL
    cfg = meta["config"]
    assert cfg["defect_kinds"] == ["blur", "noise", "compression"]
    assert len(cfg["defect_weights"]) == 3 and any(cfg["defect_weights"])
    assert set(meta["fusion"]) >= {"weights", "thresholds", "form", "chosen_on", "validation"}
    # the shipped network is v1's: without the head it holds the same tensors as v1's file
    from safetensors.torch import load_file

    v4, v1 = load_file(W.resolve_weights(None)), load_file(W.resolve_weights("pmt-lite0-livec-biq"))
    assert set(v4) - set(v1) == {"defect_head.weight", "defect_head.bias"}
    assert all(torch.equal(v4[k], v1[k]) for k in v1)
