"""Device selection and mixed precision."""

from __future__ import annotations

import contextlib

import pytest
import torch

from napari_pmt_iqa import devices
from napari_pmt_iqa.devices import DeviceError, autocast, available_devices, resolve_device


def _fake(monkeypatch, cuda: bool, mps: bool, n: int = 2):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n if cuda else 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(
    "cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _fake(monkeypatch, cuda, mps)
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected


def test_available_devices_lists_what_exists(monkeypatch):
    _fake(monkeypatch, True, False, n=2)
    assert available_devices() == ["auto", "cpu", "cuda:0", "cuda:1"]
    _fake(monkeypatch, False, True)
    assert available_devices() == ["auto", "cpu", "mps"]


def test_explicit_devices(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    _fake(monkeypatch, True, False, n=2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="only 2 GPU"):
        resolve_device("cuda:2")


def test_cuda_on_this_machine_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceError, match="'cuda:1' was asked for, but this machine has no usable"):
        resolve_device("cuda:1")
    with pytest.raises(DeviceError, match="no usable CUDA GPU"):
        resolve_device("cuda")


def test_mps_missing_and_unknown_devices(monkeypatch):
    _fake(monkeypatch, False, False)
    with pytest.raises(DeviceError, match="'mps' was asked for"):
        resolve_device("mps")
    with pytest.raises(DeviceError, match="Unknown device 'gpu7'"):
        resolve_device("gpu7")
    with pytest.raises(DeviceError, match="Unsupported device type"):
        resolve_device("meta")


def test_autocast_contexts():
    cpu = torch.device("cpu")
    assert isinstance(autocast(cpu, "fp32"), contextlib.nullcontext)
    with autocast(cpu, "bf16"):
        y = torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4))
    assert y.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="use precision='bf16' on a CPU"):
        autocast(cpu, "fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast(cpu, "fp8")
    assert devices.PRECISIONS == ("fp32", "bf16", "fp16")
