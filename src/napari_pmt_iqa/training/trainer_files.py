"""The files of a training run (part of :class:`~.trainer._Run`), written by rank 0, atomically:
``last.safetensors`` and ``best.safetensors`` (with the run's metadata) after every epoch, and
``state.pt`` (what a resume needs, checked against the run's fingerprint).
"""

from __future__ import annotations

from pathlib import Path

from .events import CheckpointSaved
from .state import load_state, save_state

#: The running sums of an epoch (kept in ``state.pt`` for an exact resume mid-epoch).
SUMS = ("loss", "l1", "ce", "images", "rank", "rank_acc", "pairs")


class TrainFiles:
    """The checkpoints of a training run."""

    # ------------------------------------------------------------------ files
    def _metadata(self, model, epoch: int, val: dict) -> dict:
        from ..weights import build_metadata

        c = self.cfg
        described = [
            {
                "name": src.name,
                "root": str(src.ds.root) if src.ds.root else None,
                "n_train": len(src.train_idx),
                "n_val": len(src.val_idx),
                "score_scale": src.ds.scale.to_dict(),
                "repeat": src.repeat,
            }
            for src in self.data.sources
        ]
        if c.data_description is not None:  # the caller's words (e.g. which public part)
            described = c.data_description
        training = {
            "data": described[0] if len(described) == 1 else described,
            "n_skipped": len(self.skipped),
            "recipe": c.recipe(),
            **({"command": c.recipe_command} if c.recipe_command else {}),
            **({"synthetic": self.synthetic.describe()} if self.synthetic else {}),
            "epochs_done": epoch + 1,
            "schedule": "progressive" if c.progressive else f"constant {list(c.loss_weights)}",
            "world_size": self.d.world,
        }
        names = " + ".join(src.name for src in self.data.sources)
        desc = c.description or f"PMT-IQA ({model.config.backbone}) trained on {names}"
        return build_metadata(
            model,
            score_scale=self.scale,
            training=training,
            metrics={"val": val, "epoch": epoch},
            description=desc,
        )

    def _save_state(
        self, model, opt, scaler, epoch: int, batch: int, sums: list[float], best
    ) -> None:
        save_state(
            self.state_path,
            model,
            opt,
            scaler,
            epoch,
            batch,
            sums,
            best,
            self.history,
            self._fingerprint(),
        )
        self.emit(CheckpointSaved(str(self.state_path), epoch, "state"))

    def _fingerprint(self) -> dict:
        c = self.cfg
        return {
            "backbone": c.backbone if c.init is None else str(c.init),
            "n_train": len(self.train_idx),
            "n_val": len(self.val_idx),
            "batch_size": c.batch_size,
            "crops_per_image": c.crops_per_image,
            "seed": c.seed,
            "epochs": c.epochs,
            "data_repeat": [src.repeat for src in self.data.sources],
            "synthetic_photos": len(self.synthetic.train_idx) if self.synthetic else 0,
            "synthetic_pairs": int(c.synthetic_pairs) if self.synthetic else 0,
        }

    def _load_state(self, path: Path) -> dict:
        st, path = load_state(path, self._fingerprint())
        self.resumed_from = str(path)
        return st

    def _save_epoch(self, model, opt, scaler, epoch: int, val: dict, is_best: bool, best) -> None:
        """After an epoch (rank 0): ``last.safetensors``, ``best.safetensors`` if it is the
        best so far, and ``state.pt`` for a resume at the next epoch."""
        from ..weights import save_checkpoint

        meta = self._metadata(model, epoch, val)
        last_path = self.out / "last.safetensors"
        save_checkpoint(last_path, model, meta)
        srcc = val.get("srcc", float("nan"))
        self.emit(CheckpointSaved(str(last_path), epoch, "last", srcc))
        if is_best:
            self.best_path = self.out / "best.safetensors"
            save_checkpoint(self.best_path, model, meta)
            self.emit(CheckpointSaved(str(self.best_path), epoch, "best", srcc))
        self._save_state(model, opt, scaler, epoch + 1, 0, [0.0] * len(SUMS), best)
