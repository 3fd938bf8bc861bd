"""The training state ``state.pt`` behind stop/resume: the RNG states (torch, numpy, Python, CUDA)
and the atomic save and checked load of the state file (loaded with ``weights_only=True``).
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np

from .errors import TrainingError

STATE_FORMAT = 1


def _rng_state() -> dict:
    import torch

    np_state = np.random.get_state()  # noqa: NPY002 (saved so that user code using it resumes too)
    st = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    import torch

    torch.set_rng_state(st["torch"])
    keys = st["numpy_keys"].numpy().astype(np.uint32)
    g = st["numpy_gauss"]
    np_state = ("MT19937", keys, int(st["numpy_pos"]), int(g[0]), float(g[1]))
    np.random.set_state(np_state)  # noqa: NPY002
    py = json.loads(st["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in st and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(st["cuda"])
        except (RuntimeError, IndexError):  # a different number of GPUs
            pass


def save_state(
    path: Path,
    model,
    opt,
    scaler,
    epoch: int,
    batch: int,
    sums: list[float],
    best,
    history: list[dict],
    fingerprint: dict,
) -> None:
    """Write a training state to ``path`` atomically.

    It holds the model, optimiser and scaler states, the position (``epoch``, ``batch``), the
    running ``sums``, the ``best`` ``[key, epoch, val]``, the ``history``, the RNG states and the
    run's ``fingerprint`` (checked by :func:`load_state`).
    """
    import torch

    from ..atomic import atomic_write_bytes

    st = {
        "format": STATE_FORMAT,
        "model": model.state_dict(),
        "optim": opt.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
        "epoch": int(epoch),
        "batch": int(batch),
        "sums": [float(v) for v in sums],
        "best_key": float(best[0]) if best[0] is not None else None,
        "best_epoch": best[1],
        "best_val": json.dumps(best[2]),
        "history": json.dumps(history),
        "rng": _rng_state(),
        "check": json.dumps(fingerprint),
    }
    buf = io.BytesIO()
    torch.save(st, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: Path, fingerprint: dict) -> tuple[dict, Path]:
    """Read a training state (``path``, or ``path/state.pt`` for a folder) and the file it came from.

    Raises :class:`TrainingError` when it is missing, unreadable, not a training state, or from a
    run whose fingerprint differs from ``fingerprint``.
    """
    import torch

    if path.is_dir():
        path = path / "state.pt"
    if not path.exists():
        raise TrainingError(
            f"Cannot resume: {path} does not exist.", "Give the state.pt of an earlier run."
        )
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(
            f"Cannot resume: {path} is not a readable training state ({type(exc).__name__}: {exc}).",
            "Start a new run or use best.safetensors as init.",
        ) from exc
    if not isinstance(st, dict) or st.get("format") != STATE_FORMAT:
        raise TrainingError(f"Cannot resume: {path} is not a napari-pmt-iqa training state.")
    saved = json.loads(st["check"])
    now = fingerprint
    keys = [*now, *(k for k in saved if k not in now)]
    diff = [
        f"{k}: {saved.get(k)} then, {now.get(k)} now" for k in keys if saved.get(k) != now.get(k)
    ]
    if diff:
        raise TrainingError(
            f"Cannot resume from {path}: the run had other settings or data ({'; '.join(diff)}).",
            "Resume with the same data, seed, epochs, batch size, backbone, defect-aware "
            "score setting and blend.",
        )
    return st, path
