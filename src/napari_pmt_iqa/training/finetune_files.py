"""The files of a few-shot fine-tuning run (part of :class:`~.finetune_run._Run`):
``best.safetensors`` (the model so far, with its metadata), ``state.pt`` (what a resume needs,
checked against the run's fingerprint) and ``report.json``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from .config import _describe_data
from .events import CheckpointSaved
from .finetune_config import RECIPE


class RunFiles:
    """The checkpoints and the report of a fine-tuning run."""

    # ------------------------------------------------------------------ files
    def _fingerprint(self) -> dict:
        c = self.cfg
        fp = {
            "recipe": RECIPE,
            "init": str(c.init) if c.backbone is None else f"imagenet:{c.backbone}",
            "n_train": len(self.train_idx),
            "n_holdout": len(self.hold_idx),
            "seed": int(c.seed),
            "epochs": int(self.epochs),
            "batch_size": int(c.batch_size),
            "adapt_head": bool(self.adapt),
        }
        if self.start_model.fuses_defects:  # (a run that drops the penalty resumes as before)
            fp["defect_score"] = True
        fp["blend"] = self.blend
        return fp

    def _metadata(self, model, val: dict, epochs_done: int, refit: bool) -> dict:
        from ..weights import build_metadata

        c = self.cfg
        training = {
            "data": {
                "name": self.ds.name,
                "root": str(self.ds.root) if self.ds.root else None,
                "n_train": len(self.train_idx),
                "n_holdout": len(self.hold_idx),
                "n_skipped": len(self.skipped),
                "score_scale": self.scale.to_dict(),
            },
            "init": self.init_desc,
            "recipe": c.recipe(),
            "epochs_done": int(epochs_done),
            "refit_on_all": bool(refit),
            "adapted_backbone_head": bool(self.adapt),
            "defect_aware_score": bool(model.fuses_defects),
            "calibration": list(self.calibration),
            "blend": self.blend,
        }
        desc = c.description or (
            f"PMT-IQA ({model.config.backbone}) fine-tuned on {len(self.train_idx) + len(self.hold_idx)} "
            f"ratings ({self.ds.name})"
        )
        return build_metadata(
            model,
            score_scale=self.scale,
            training=training,
            metrics={"holdout": _jsonable(val), "start_holdout": _jsonable(self.start_val)},
            description=desc,
        )

    def _save_best(self, model, val: dict, epochs_done: int, refit: bool, epoch: int) -> None:
        from ..weights import save_checkpoint

        path = self.out / "best.safetensors"
        save_checkpoint(path, model, self._metadata(model, val, epochs_done, refit))
        self.best_path = path
        self.emit(CheckpointSaved(str(path), epoch, "best", float(val.get("srcc", math.nan))))

    def _save_state(self, model, opt, epoch: int, batch: int, sums: list[float]) -> None:
        import io

        import torch

        from ..atomic import atomic_write_bytes
        from .state import STATE_FORMAT
        from .weight_blend import state_delta

        # weights as changes from the calibrated start, which a resume computes again: the
        # frozen backbone is not stored
        st = {
            "format": STATE_FORMAT,
            "model": state_delta(self._base, model.state_dict()),
            "optim": opt.state_dict(),
            "epoch": int(epoch),
            "batch": int(batch),
            "sums": [float(v) for v in sums],
            "best_key": float(self.best[0]) if self.best[0] is not None else None,
            "best_epoch": self.best[1],
            "best_val": json.dumps(_jsonable(self.best[2])),
            "history": json.dumps(self.history),
            "check": json.dumps(self._fingerprint()),
        }
        if self._blending and self._best_state is not None:
            # best.safetensors holds the blend: the unblended best epoch is kept here
            st["best_state"] = state_delta(self._base, self._best_state)
        buf = io.BytesIO()
        torch.save(st, buf)
        atomic_write_bytes(self.state_path, buf.getvalue())
        self.emit(CheckpointSaved(str(self.state_path), epoch, "state"))

    def _write_report(self, refit: bool) -> Path:
        from ..atomic import atomic_write_text

        c = self.cfg
        report = {
            "recipe": c.recipe(),
            "init": self.init_desc,
            "data": _describe_data(c.data),
            "score_scale": self.scale.to_dict(),
            "n_train": len(self.train_idx),
            "n_holdout": len(self.hold_idx),
            "n_skipped": len(self.skipped),
            "holdout_before": _jsonable(self.start_val),
            "holdout_after": _jsonable(self.best[2] or {}),
            "improved": self._improved(),
            "best_epoch": self.best[1],
            "epochs_done": len(self.history),
            "refit_on_all": bool(refit),
            "refit_epochs": getattr(self, "refit_epochs", None) if refit else None,
            "blend": self.blend,
            "feature_seconds": round(self.feature_seconds, 3),
            "seconds": round(time.time() - self.t0, 3),
            "best_path": str(self.best_path) if self.best_path else None,
        }
        path = self.out / "report.json"
        atomic_write_text(path, json.dumps(report, indent=2))
        return path

    def _improved(self) -> bool:
        after = (self.best[2] or {}).get("srcc", math.nan)
        before = self.start_val.get("srcc", math.nan)
        if not math.isfinite(after):
            return False
        return not math.isfinite(before) or after > before


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in dict(d or {}).items():
        if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
            v = float(v)
            out[str(k)] = None if not math.isfinite(v) else v
        else:
            out[str(k)] = v if isinstance(v, (str, bool)) or v is None else str(v)
    return out
