"""Setting up a training run (part of :class:`~.trainer._Run`): the checks of its settings, the
starting model, the data, the optimiser and the schedules of the loss weights and learning rate.
"""

from __future__ import annotations

import math
import warnings

from .errors import TrainingError
from .events import DataIssue


class TrainSetup:
    """The checks, model, data, optimiser and schedules of a training run."""

    # ------------------------------------------------------------------ setup
    def _validate(self) -> None:
        from ..devices import PRECISIONS
        from . import checks

        c = self.cfg
        for name in ("epochs", "batch_size", "crops_per_image"):
            checks.whole_number(name, getattr(c, name))
        checks.whole_number("max_batches", c.max_batches, optional=True)
        checks.positive("lr (the learning rate)", c.lr)
        checks.positive("head_lr (the heads' learning rate)", c.head_lr, optional=True)
        checks.fraction("val_fraction", c.val_fraction)
        checks.one_of("precision", c.precision, PRECISIONS)
        checks.one_of("lr_schedule", c.lr_schedule, ("step", "cosine"))
        if c.precision == "fp16" and self.device.type != "cuda":
            raise TrainingError(
                "precision 'fp16' needs a CUDA GPU.", "Use --precision bf16 on a CPU."
            )
        if c.batch_size % self.d.world:
            raise TrainingError(
                f"batch_size ({c.batch_size}) is the number of images per step over all "
                f"{self.d.world} processes and must be a multiple of it."
            )
        if c.synthetic is not None and int(c.synthetic_pairs) % self.d.world:
            raise TrainingError(
                f"synthetic_pairs ({c.synthetic_pairs}) is the number of pairs per step over all "
                f"{self.d.world} processes and must be a multiple of it."
            )

    def _init_scale(self):
        if self.cfg.init is None:
            return None
        from ..score_scale import ScoreScale
        from ..weights import read_metadata, resolve_weights

        meta = read_metadata(resolve_weights(self.cfg.init))
        return ScoreScale.from_dict(meta["score_scale"])

    def _build_model(self):
        from ..model import PMTIQA
        from ..weights import load_model

        c = self.cfg
        if c.init is None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = PMTIQA(
                    backbone=c.backbone, pretrained=c.pretrained, multiscale=c.multiscale
                )
            for w in caught:
                self.emit(DataIssue(str(w.message)))
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        else:
            model = load_model(c.init, device="cpu")
            if model.defect_head is not None and not c.freeze_backbone:
                from .defects import drop_defect_head

                drop_defect_head(model)
                self.emit(
                    DataIssue(
                        "The starting model's defect head (its defect maps) is left out of this "
                        "run: it reads the backbone's first stages, which this run trains. Fit a "
                        "new one on the result with 'pmt-iqa defects --model RESULT --photos "
                        "CLEAN_PHOTOS/ --out NEW.safetensors', or train with freeze_backbone to "
                        "keep it."
                    )
                )
            else:
                # the heads learn the ratings as they are: no defect-aware penalty on top of
                # them (the few-shot fine-tune can keep it: it trains through it); the defect
                # head and its maps stay
                from .defects import drop_defect_weights

                drop_defect_weights(model)
        return model

    def _prepare_data(self):
        from .prepare import prepare_training_data

        data = prepare_training_data(self.cfg, self._init_scale(), self.emit)
        self.data = data
        self.ds = data.sources[0].ds
        self.scale = data.scale
        self.store, self.samples = data.store, data.samples
        self.train_idx, self.val_idx = data.train_idx, data.val_idx
        self.skipped = data.skipped

    def _make_optimizer(self, model):
        import torch

        c = self.cfg
        head_lr = c.head_lr if c.head_lr is not None else 10 * c.lr
        heads = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
        groups = []
        if c.freeze_backbone:
            for p in model.backbone.parameters():
                p.requires_grad_(False)
        else:
            groups.append(
                {"params": list(model.backbone.parameters()), "lr": c.lr, "base_lr": c.lr}
            )
        groups.append({"params": heads, "lr": head_lr, "base_lr": head_lr})
        return torch.optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay)

    def _schedule(self, epoch: int) -> tuple[float, float]:
        from ..model.losses import constant_weights, progressive_weights

        if self.cfg.progressive:
            return progressive_weights(epoch, self.cfg.epochs)
        return constant_weights(*self.cfg.loss_weights)(epoch, self.cfg.epochs)

    def _lr_factor(self, epoch: int) -> float:
        c = self.cfg
        if c.lr_schedule == "cosine":
            t = epoch / max(c.epochs - 1, 1)
            return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t))
        step = int(c.lr_step or 0)
        # the authors set lr / 10 ** (t // 6) at the END of epoch t: epoch e runs at
        # lr / 10 ** ((e - 1) // 6), so the first decay comes at epoch step + 1
        return 0.1 ** (max(epoch - 1, 0) // step) if step > 0 else 1.0
