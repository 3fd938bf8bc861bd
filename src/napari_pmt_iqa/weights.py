"""Checkpoints (safetensors + JSON metadata), the registry of named weights, verified downloads.

A checkpoint is one ``.safetensors`` file. Its tensors are the model's ``state_dict``; its header
metadata holds one JSON document under the key ``"napari_pmt_iqa"`` with everything a score needs to
mean something: the architecture, the score scale (range, direction, units), the class bin edges,
the input normalisation, the training data and recipe, measured metrics and the package version.
Loading never unpickles anything.

Named weights live in :data:`REGISTRY`, in the style of torchvision's weights API: each
:class:`WeightsEntry` points to a file shipped in the package or a URL, with its SHA-256. Downloads
go to :func:`cache_dir` (``$PMT_IQA_CACHE``, default ``~/.cache/napari-pmt-iqa``), are verified by
hash and written atomically. With ``$PMT_IQA_OFFLINE=1`` (or ``offline=True``) only the cache is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import _suppress, atomic_write_bytes

META_KEY = "napari_pmt_iqa"
#: The newest checkpoint format this package reads. 2 adds the defect head, 3 the defect-aware
#: score (``defect_weights``). Each checkpoint is written in the oldest format that holds it, so
#: that older versions of the package keep reading what they can, and refuse the rest with
#: "upgrade the package" (a format-2 reader would silently ignore the weights and score
#: differently).
FORMAT_VERSION = 3
PACKAGE_WEIGHTS = Path(__file__).parent / "weights"
DEFAULT_MODEL = "pmt-lite0-v4"
#: Names of models that left the package for one with the same network (the same scores): they
#: still resolve, to their successor.
REPLACED_BY = {"pmt-lite0-v2": "pmt-lite0-v3"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a message that says why."""


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- save / load
def format_of(model) -> int:
    """The oldest checkpoint format that holds ``model`` (see :data:`FORMAT_VERSION`)."""
    if getattr(model, "defect_head", None) is None:
        return 1
    return 3 if any(model.config.defect_weights) else 2


def build_metadata(model, **extra: Any) -> dict:
    """The metadata document of a checkpoint of ``model`` (a :class:`PMTIQA`).

    ``extra`` entries (``score_scale``, ``training``, ``metrics``, ``name``, ...) are merged in.
    """
    from ._version import __version__
    from .model.losses import class_edges
    from .score_scale import ScoreScale

    scale = extra.pop("score_scale", None) or getattr(model, "score_scale", None) or ScoreScale()
    if isinstance(scale, ScoreScale):
        scale = scale.to_dict()
    n = model.config.num_classes
    sc = ScoreScale.from_dict(scale)
    meta = {
        "format_version": format_of(model),
        "architecture": "PMT-IQA",
        "config": model.config.to_dict(),
        "score_scale": scale,
        "class_edges_internal": class_edges(n),
        "class_edges": [float(sc.from_internal(e)) for e in class_edges(n)],
        "input": {
            "color": "RGB",
            "range": [0.0, 1.0],
            "mean": list(model.mean),
            "std": list(model.std),
            "intensity": "uint8/255; float in [0,1] as is; otherwise 0.1-99.9 percentile stretch",
        },
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "training": {},
        "metrics": {},
    }
    meta.update(extra)
    if getattr(model, "defect_head", None) is not None and "defects" not in meta:
        # a model fine-tuned from one with a fitted head keeps the record of that fit
        prior = (getattr(model, "meta", None) or {}).get("defects")
        if prior:
            meta["defects"] = prior
    if getattr(model, "fuses_defects", False) and "fusion" not in meta:
        # ... and, while it keeps the defect-aware score, the record of how it was chosen
        prior = (getattr(model, "meta", None) or {}).get("fusion")
        if prior:
            meta["fusion"] = prior
    return meta


def save_checkpoint(
    path: str | os.PathLike, model, metadata: dict | None = None, half: bool = False, **extra: Any
) -> Path:
    """Write ``model`` to ``path`` (safetensors, atomically) with its metadata.

    Parameters
    ----------
    path
        Destination ``.safetensors`` file.
    model
        A :class:`~napari_pmt_iqa.model.PMTIQA`.
    metadata
        A full metadata document (from :func:`build_metadata`); built from ``extra`` if omitted.
    half
        Store floating-point tensors in float16 (about half the size; scores change by far less
        than a point, see ``docs/results.md``), all but the defect head's (a few kilobytes).
    """
    from safetensors.torch import save

    meta = metadata if metadata is not None else build_metadata(model, **extra)
    meta = dict(meta)
    meta["storage_dtype"] = "float16" if half else "float32"
    # what this model needs, whatever document the metadata was copied from (see FORMAT_VERSION)
    meta["format_version"] = format_of(model)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        # the defect head stays float32 (a few kilobytes): its read-out of raw feature
        # statistics cancels large terms, which float16 weights would round
        if half and v.is_floating_point() and not k.startswith("defect_head."):
            v = v.half()
        state[k] = v
    data = save(state, metadata={META_KEY: json.dumps(meta)})
    atomic_write_bytes(path, data)
    return Path(path)


def read_metadata(path: str | os.PathLike) -> dict:
    """Read the metadata document of a checkpoint without loading its tensors."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder, not a checkpoint file: name the .safetensors file inside it."
        )
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is too short to be a safetensors checkpoint.")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > 100_000_000 or n > path.stat().st_size:
                raise CheckpointError(f"{path} is not a safetensors checkpoint (bad header).")
            header = json.loads(f.read(n))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: file not found.") from exc
    except PermissionError as exc:
        raise CheckpointError(f"{path}: no permission to read it.") from exc
    except OSError as exc:
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint: {exc.strerror or exc}."
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not a safetensors checkpoint ({exc}).") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors checkpoint (bad header).")
    raw = (header.get("__metadata__") or {}).get(META_KEY)
    if raw is None:
        raise CheckpointError(
            f"{path} is a safetensors file but not a napari-pmt-iqa checkpoint (no "
            f"'{META_KEY}' metadata)."
        )
    try:
        meta = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path}: its napari-pmt-iqa metadata is not valid JSON ({exc})."
        ) from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its napari-pmt-iqa metadata is not a JSON object.")
    if meta.get("architecture") != "PMT-IQA":
        raise CheckpointError(f"{path} holds a {meta.get('architecture')!r} model, not PMT-IQA.")
    try:
        version = int(meta.get("format_version", 0))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: its format_version {meta.get('format_version')!r} is not a number; the "
            "file was not written by napari-pmt-iqa or was edited."
        ) from exc
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer napari-pmt-iqa (format {meta['format_version']}); "
            "upgrade the package."
        )
    return meta


def load_checkpoint(path: str | os.PathLike, device: str = "cpu"):
    """Load a checkpoint file into a :class:`PMTIQA` (eval mode, float32).

    The model carries ``model.meta`` (the metadata document) and ``model.score_scale``.

    Raises
    ------
    CheckpointError
        Not a safetensors file, not a PMT-IQA checkpoint, corrupt, or tensors that do not fit the
        architecture its metadata describes.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model.network import PMTIQA, ModelConfig
    from .score_scale import ScoreScale

    path = Path(path)
    meta = read_metadata(path)
    try:
        config = ModelConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: the model configuration in its metadata is invalid ({exc})."
        ) from exc
    try:
        score_scale = ScoreScale.from_dict(meta["score_scale"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: the score scale in its metadata is invalid ({exc})."
        ) from exc
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc}).") from exc
    model = PMTIQA(config, pretrained=False)
    expected = model.state_dict()
    if not config.multiscale:  # written before the ablation lost its unused tap convolutions
        state = {k: v for k, v in state.items() if not k.startswith("reduce.")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong:
        detail = "; ".join(
            s
            for s in (
                f"missing {len(missing)} tensors (e.g. {missing[0]})" if missing else "",
                f"{len(unexpected)} unknown tensors (e.g. {unexpected[0]})" if unexpected else "",
                f"{len(wrong)} tensors of the wrong shape (e.g. {wrong[0]})" if wrong else "",
            )
            if s
        )
        raise CheckpointError(
            f"{path} does not fit the {config.backbone} PMT-IQA architecture its metadata describes: "
            f"{detail}."
        )
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state)
    model.meta = meta
    model.score_scale = score_scale
    model.checkpoint_path = str(path)
    return model.eval().to(torch.device(device))


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class WeightsEntry:
    """A named checkpoint: a file shipped with the package or a URL, with its SHA-256.

    Attributes
    ----------
    name
        Registry name, e.g. ``"pmt-lite0-v3"``.
    sha256
        Hex digest the file must have.
    file
        File name inside the package's ``weights/`` folder, for shipped weights.
    url
        Download address, for weights fetched on demand.
    meta
        A summary (backbone, training data, metrics) for listings; the full metadata is in the file.
    """

    name: str
    sha256: str
    file: str | None = None
    url: str | None = None
    meta: dict = field(default_factory=dict)


def _load_registry() -> dict[str, WeightsEntry]:
    reg: dict[str, WeightsEntry] = {}
    index = PACKAGE_WEIGHTS / "registry.json"
    if index.exists():
        for item in json.loads(index.read_text()):
            reg[item["name"]] = WeightsEntry(
                item["name"],
                item["sha256"],
                item.get("file"),
                item.get("url"),
                item.get("meta", {}),
            )
    return reg


#: Named checkpoints known to this version of the package.
REGISTRY: dict[str, WeightsEntry] = _load_registry()


def register(entry: WeightsEntry) -> None:
    """Add (or replace) a named checkpoint in :data:`REGISTRY`."""
    REGISTRY[entry.name] = entry


def cache_dir() -> Path:
    """Where downloaded weights go: ``$PMT_IQA_CACHE`` or ``~/.cache/napari-pmt-iqa``."""
    env = os.environ.get("PMT_IQA_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "napari-pmt-iqa"


def user_models_dir() -> Path:
    """Where models trained in the GUI are listed from in later sessions."""
    return cache_dir() / "user-models"


def is_offline() -> bool:
    return os.environ.get("PMT_IQA_OFFLINE", "").lower() in ("1", "true", "yes")


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying its SHA-256 before it is kept.

    Raises
    ------
    CheckpointError
        The download failed or its hash does not match (nothing is written then).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
            total = int(r.headers.get("Content-Length") or 0)
            done = 0
            while chunk := r.read(1 << 20):
                f.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        if sha256 and h.hexdigest() != sha256.lower():
            raise CheckpointError(
                f"The file downloaded from {url} has SHA-256 {h.hexdigest()}, not the expected "
                f"{sha256}: it was refused (tampered with or corrupted in transit)."
            )
        os.replace(tmp, dest)
    except CheckpointError:
        with _suppress():
            os.unlink(tmp)
        raise
    except Exception as exc:
        with _suppress():
            os.unlink(tmp)
        raise CheckpointError(
            f"Could not download {url} ({type(exc).__name__}: {exc}). Check the network, or set "
            "PMT_IQA_OFFLINE=1 and put the file into the cache folder "
            f"{cache_dir()} yourself."
        ) from exc
    return dest


#: Files already verified in this process, keyed by (path, mtime, size, expected hash).
_VERIFIED: set[tuple[str, int, int, str]] = set()


def _hash_matches(path: Path, sha256: str) -> bool:
    """Whether ``path`` has the SHA-256 ``sha256``; a file unchanged since it passed is not hashed again."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size, sha256)
    if key in _VERIFIED:
        return True
    if sha256_of(path) != sha256:
        return False
    _VERIFIED.add(key)
    return True


def resolve_weights(
    name_or_path: str | os.PathLike | None = None,
    offline: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """The local file of a registered name (verified, downloaded if needed) or a path.

    ``None`` means the default model shipped with the package.
    """
    name = DEFAULT_MODEL if name_or_path is None else name_or_path
    if isinstance(name, str) and name not in REGISTRY and name in REPLACED_BY:
        name = REPLACED_BY[name]
    if isinstance(name, str) and not name.strip():
        raise CheckpointError(
            "The model name is empty: leave it out to use the default model "
            f"({DEFAULT_MODEL!r}), or give a registered name or a checkpoint file."
        )
    if isinstance(name, str) and name in REGISTRY:
        entry = REGISTRY[name]
        if entry.file:
            path = PACKAGE_WEIGHTS / entry.file
        else:
            path = cache_dir() / f"{entry.name}-{entry.sha256[:12]}.safetensors"
        if path.exists():
            if not _hash_matches(path, entry.sha256):
                raise CheckpointError(
                    f"{path} does not match the SHA-256 registered for {name!r}; delete it so that it "
                    "is downloaded again, or reinstall the package."
                )
            return path
        if entry.file:
            raise CheckpointError(
                f"The weights file of {name!r} is missing from the package ({path})."
            )
        offline = is_offline() if offline is None else offline
        if offline or not entry.url:
            raise CheckpointError(
                f"{name!r} is not in the cache ({path}) and offline mode is on; download it once "
                "online, or copy the file there."
            )
        return download(entry.url, path, entry.sha256, progress)
    path = Path(name).expanduser()
    if not path.exists():
        known = ", ".join(sorted(REGISTRY)) or "none"
        raise CheckpointError(
            f"{name!r} is neither a registered model (known: {known}) nor an existing file."
        )
    return path


def load_model(
    name_or_path: str | os.PathLike | None = None, device: str = "cpu", offline: bool | None = None
):
    """Load a registered model by name, or a checkpoint file; ``None`` loads the default model.

    Examples
    --------
    >>> model = load_model()  # the default model shipped with the package
    >>> model.score_scale.name
    'MOS (LIVE-C, 0-100)'
    """
    from .devices import resolve_device

    path = resolve_weights(name_or_path, offline=offline)
    model = load_checkpoint(path, device="cpu")
    return model.to(resolve_device(device))


def list_models(include_user: bool = True) -> dict[str, str]:
    """Names (registry and user-trained checkpoints) mapped to a one-line description."""
    out = {}
    for name, e in REGISTRY.items():
        m = e.meta
        out[name] = m.get("description", m.get("backbone", ""))
    if include_user and user_models_dir().is_dir():
        for p in sorted(user_models_dir().glob("*.safetensors")):
            try:
                meta = read_metadata(p)
            except CheckpointError:
                continue
            out[str(p)] = meta.get("description", f"user model ({meta['config']['backbone']})")
    return out


def state_fingerprint(model) -> str:
    """A short hash of a model's weights (for logs and tests)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(v.detach().cpu().float().numpy()).tobytes())
    return h.hexdigest()[:16]
