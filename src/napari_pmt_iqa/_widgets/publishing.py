"""Publishing a fine-tuned model: a copy with its metadata in the user models folder, announced.

:func:`publish_model` copies a run's ``best.safetensors`` into
:func:`~napari_pmt_iqa.weights.user_models_dir` (which the model lists of later sessions read) and
emits :data:`~napari_pmt_iqa._widgets.training_worker.model_trained` so that an open score widget
adds and selects it. One run folder is published under one name: publishing the same run again
(after Stop, then *Resume from checkpoint*) replaces its earlier copy instead of adding a second
one. No Qt and no torch at import time.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

__all__ = ["published_copy_of", "publish_model"]


def _safe_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.")
    return name or "finetuned"


def _run_dir_of(meta: dict) -> str:
    return str(((meta.get("training") or {}).get("napari") or {}).get("run_dir") or "")


def published_copy_of(run_dir: str | os.PathLike, folder: str | os.PathLike) -> Path | None:
    """The model in ``folder`` published earlier from the run folder ``run_dir`` (None if none)."""
    from ..weights import CheckpointError, read_metadata

    folder = Path(folder)
    if not run_dir or not folder.is_dir():
        return None
    want = str(Path(run_dir).expanduser().resolve())
    for p in sorted(folder.glob("*.safetensors")):
        try:
            got = _run_dir_of(read_metadata(p))
        except (CheckpointError, OSError, ValueError):
            continue
        if got and str(Path(got).expanduser().resolve()) == want:
            return p
    return None


def publish_model(
    checkpoint: str | os.PathLike,
    name: str,
    extra: dict | None = None,
    dest_dir: str | os.PathLike | None = None,
    emit: bool = True,
    replace_run: bool = True,
) -> Path:
    """Copy a trained checkpoint into the user models folder with enriched metadata; announce it.

    The copy goes to ``weights.user_models_dir()`` (listed by ``weights.list_models()`` in later
    sessions) as ``<name>.safetensors``. An earlier copy of the same run (``extra["run_dir"]``) is
    replaced; a different model of that name is never overwritten (a number is appended). Its
    metadata gets ``description`` and ``training["napari"]`` (``extra``). The tensors are copied as
    they are; nothing is unpickled.

    Parameters
    ----------
    checkpoint
        The run's ``best.safetensors``.
    name
        The model's name (also its file name, sanitised).
    extra
        Added to the metadata under ``training["napari"]`` (data used, settings, run folder).
    dest_dir
        Where to put it instead of the user models folder.
    emit
        Emit :data:`~napari_pmt_iqa._widgets.training_worker.model_trained` with the new path.
    replace_run
        Replace the earlier copy of the same run folder (a resumed run); False for a new run,
        which never replaces a model (its folder may have been emptied and used again).

    Returns
    -------
    Path
        The published checkpoint.
    """
    from safetensors import safe_open
    from safetensors.torch import save

    from ..atomic import atomic_write_bytes
    from ..weights import META_KEY, read_metadata, user_models_dir

    src = Path(checkpoint)
    meta = read_metadata(src)
    tensors = {}
    with safe_open(str(src), framework="pt") as f:
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    meta = dict(meta)
    training = dict(meta.get("training") or {})
    training["napari"] = dict(extra or {})
    meta["training"] = training
    meta["name"] = name
    meta["description"] = f"{name} (fine-tuned in napari)"
    folder = Path(dest_dir) if dest_dir is not None else user_models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    dest = published_copy_of((extra or {}).get("run_dir", ""), folder) if replace_run else None
    if dest is None:
        base = _safe_name(name)
        dest = folder / f"{base}.safetensors"
        i = 2
        while dest.exists() and dest.resolve() != src.resolve():
            dest = folder / f"{base}-{i}.safetensors"
            i += 1
    atomic_write_bytes(dest, save(tensors, metadata={META_KEY: json.dumps(meta)}))
    del tensors
    if emit:
        from .training_worker import model_trained

        model_trained.emit(str(dest), meta)
    return dest
