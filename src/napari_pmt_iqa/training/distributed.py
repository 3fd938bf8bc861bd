"""Multi-process helpers (torchrun / PyTorch distributed) shared by training and scoring.

:func:`napari_pmt_iqa.training.train` detects ``WORLD_SIZE > 1`` itself and sets up its process
group with :func:`_setup_distributed` (and :func:`use_sync_batchnorm`) from here.
:func:`distributed_score_files` scores many files with every process taking its share; rank 0
gathers the rows and writes one CSV::

    torchrun --nproc-per-node 4 -m napari_pmt_iqa score ...   # calls distributed_score_files
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .config import TrainConfig

#: Columns of the rows of :func:`distributed_score_files` (the ``pmt-iqa score`` CSV), in order.
SCORE_COLUMNS = ("path", "plane", "score", "units", "quality_class", "n_crops", "error")


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` outside torchrun)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


# --------------------------------------------------------------------------- training context
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_req: str):
    """Return (_Dist, torch.device); initialise the process group when torchrun asks for one."""
    import torch
    import torch.distributed as dist

    from ..devices import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return _Dist(), resolve_device(device_req)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    req = (device_req or "auto").lower()
    use_cuda = torch.cuda.is_available() and req in ("auto", "cuda") or req.startswith("cuda")
    if use_cuda:
        device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    d = _Dist(dist.get_rank(), dist.get_world_size(), local, owns)
    return d, device


def use_sync_batchnorm(config: TrainConfig, world_size: int, device_type: str) -> bool:
    """Whether a run's batch-norm layers become ``SyncBatchNorm`` (see ``TrainConfig.sync_batchnorm``)."""
    return (
        config.sync_batchnorm
        and world_size > 1
        and not config.freeze_backbone
        and device_type in ("cuda", "xpu")
    )


def is_distributed() -> bool:
    """True under torchrun with more than one process."""
    return world()[1] > 1


def _rows(path: str, result) -> list[dict]:
    planes = getattr(result, "planes", None)
    stack = planes is not None
    out = []
    for k, r in enumerate(planes if stack else [result]):
        out.append(
            {
                "path": path,
                "plane": k if stack else "",
                "score": f"{r.score:.4f}",
                "units": r.units,
                "quality_class": r.predicted_class + 1,  # 1 = worst, as napari shows it
                "n_crops": r.n_crops,
                "error": "",
            }
        )
    return out


def _error_row(path: str, error: str) -> dict:
    return {
        "path": path,
        "plane": "",
        "score": "",
        "units": "",
        "quality_class": "",
        "n_crops": "",
        "error": error,
    }


def close_process_group() -> None:
    """Destroy the default process group, avoiding a deadlock of older torch (2.2) with gloo.

    There ``destroy_process_group`` holds the GIL while it waits for gloo's worker threads, and a
    worker thread that drops the last reference to a tensor of an earlier collective (from
    ``all_gather_object``, say) needs the GIL to do it: both wait for ever (seen in CI: one process
    of two left hanging). Sleeping briefly first releases the GIL, so the worker threads finish.
    """
    import time

    import torch.distributed as dist

    if dist.is_initialized():
        time.sleep(0.2)
        dist.destroy_process_group()


def write_rows_csv(
    path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str] = SCORE_COLUMNS
) -> Path:
    """Write rows to a CSV file atomically (:func:`napari_pmt_iqa.export.write_table_csv`)."""
    from ..export import write_table_csv

    return write_table_csv(path, columns, rows)


def distributed_score_files(
    paths: Sequence[str | os.PathLike],
    model=None,
    *,
    device: str = "auto",
    out_csv: str | os.PathLike | None = None,
    precision: str = "fp32",
    method: str = "fast",
    memory_mb: float = 1024,
    progress: Callable[[int, int], None] | None = None,
    rgb: bool | None = None,
) -> list[dict] | None:
    """Score image files, each process of a torchrun job taking every ``world``-th file.

    Works without torchrun too (one process scores everything). Files that cannot be read or
    scored give a row with an empty score and the reason in ``error``; they never stop the run.
    Rows have the columns of the ``pmt-iqa score`` CSV (:data:`SCORE_COLUMNS`): one row per
    plane, ``score`` formatted with 4 decimals, ``plane`` empty for a 2D image.

    Parameters
    ----------
    paths
        The image files, in the order the CSV keeps.
    model
        ``None`` (default model), a registered name, a checkpoint path or a loaded PMTIQA.
    device
        ``"auto"``: under torchrun with GPUs, this process's local GPU (``LOCAL_RANK``).
    out_csv
        Where rank 0 writes the merged rows (atomically), columns :data:`SCORE_COLUMNS`.
    precision, method, memory_mb, rgb
        As in :func:`napari_pmt_iqa.scoring.score` (maps are not computed).
    progress
        ``progress(done, total)`` over this process's share.

    Returns
    -------
    list of dict or None
        The merged rows in input order on rank 0; ``None`` on the other ranks.
    """
    from ..imaging import ImageError, read_image
    from ..scoring import get_model, score

    d, dev = _setup_distributed(device)
    try:
        net = get_model(model, str(dev))
        paths = [str(p) for p in paths]
        mine = list(range(d.rank, len(paths), d.world))
        rows: list[tuple[int, dict]] = []
        for k, i in enumerate(mine):
            p = paths[i]
            try:
                r = score(
                    read_image(p),
                    model=net,
                    device=str(dev),
                    maps=False,
                    precision=precision,
                    method=method,
                    memory_mb=memory_mb,
                    rgb=rgb,
                )
                rows.append((i, _rows(p, r)))
            except (ImageError, OSError, ValueError) as exc:
                rows.append((i, [_error_row(p, str(exc))]))
            if progress:
                progress(k + 1, len(mine))
        if d.active:
            import torch.distributed as dist

            gathered: list = [None] * d.world
            dist.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        if not d.main:
            return None
        merged = [r for _, part in sorted(rows, key=lambda t: t[0]) for r in part]
        if out_csv is not None:
            write_rows_csv(out_csv, merged)
        return merged
    finally:
        if d.owns_group:
            close_process_group()
