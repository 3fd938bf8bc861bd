"""Progressive multi-task loss, score binning and score-range normalisation.

The model always regresses on an internal scale of 0 (worst) to 100 (best). A data set's own units
(LIVE-C's MOS 0-100, BIQ2021's 0-1, a DMOS where lower is better, ...) are mapped onto it by a
:class:`ScoreScale`, which a checkpoint keeps so that scores come back in the units of its data
(``ScoreScale`` and ``INTERNAL_MAX`` live in the package's ``score_scale`` module).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..score_scale import INTERNAL_MAX, ScoreScale  # noqa: F401  (ScoreScale: re-exported)


def class_edges(num_classes: int = 10) -> list[float]:
    """Edges of the equal-width quality bins on the internal scale (``num_classes + 1`` values)."""
    return [INTERNAL_MAX * i / num_classes for i in range(num_classes + 1)]


def score_to_class(score: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """Bin internal scores (0-100) into ``num_classes`` equal-width classes, clamped to the range.

    Scores outside 0-100 (a MOS slightly beyond the nominal range) fall into the first or last bin.
    """
    c = torch.floor(score * num_classes / INTERNAL_MAX).long()
    return c.clamp_(0, num_classes - 1)


def progressive_weights(epoch: int, epochs: int) -> tuple[float, float]:
    """The PMT schedule: ``(w_reg, w_cls)`` at 0-based ``epoch`` of ``epochs``.

    ``w_reg = t / (E - 1)`` and ``w_cls = 1 - w_reg``: epoch 0 is pure classification (the easy
    task), the last epoch pure regression (the hard one). With one epoch, regression only.
    """
    if epochs < 1:
        raise ValueError("epochs must be at least 1")
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch {epoch} is outside 0..{epochs - 1}")
    w_reg = 1.0 if epochs == 1 else epoch / (epochs - 1)
    return w_reg, 1.0 - w_reg


def constant_weights(w_reg: float = 1.0, w_cls: float = 1.0):
    """The non-progressive baseline: the same weights at every epoch."""

    def schedule(epoch: int, epochs: int) -> tuple[float, float]:
        return w_reg, w_cls

    return schedule


class PMTLoss(torch.nn.Module):
    """``w_reg * L1(score, target) + w_cls * CE(logits, class(target))`` on the internal scale.

    Call :meth:`set_weights` at the start of each epoch (the trainer does).
    """

    def __init__(self, num_classes: int = 10, w_reg: float = 0.0, w_cls: float = 1.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.w_reg = w_reg
        self.w_cls = w_cls

    def set_weights(self, w_reg: float, w_cls: float) -> None:
        self.w_reg, self.w_cls = float(w_reg), float(w_cls)

    def forward(
        self, score: torch.Tensor, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(total, l1, ce)``; ``target`` is on the internal 0-100 scale."""
        # targets stay float32: under bf16 autocast, casting them to the score's dtype would
        # round them (55.3 -> 55.25) and could move them into another class bin (9.99 -> 10.0)
        target = target.to(device=score.device, dtype=torch.float32)
        l1 = F.l1_loss(score.float(), target)
        ce = F.cross_entropy(logits.float(), score_to_class(target, self.num_classes))
        return self.w_reg * l1 + self.w_cls * ce, l1, ce
