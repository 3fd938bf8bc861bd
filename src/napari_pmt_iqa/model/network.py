"""The PMT-IQA network: a backbone, multi-scale (MS) taps, a shared trunk and two heads.

Layout (paper configuration, ResNet-50, a 224 x 224 crop)::

    layer1 256x56x56  -> 1x1 conv 256->16  -> avg-pool to 8x8 -> 1024 -> Linear -> 28
    layer2 512x28x28  -> 1x1 conv 512->32  -> avg-pool to 4x4 ->  512 -> Linear -> 28
    layer3 1024x14x14 -> 1x1 conv 1024->64 -> avg-pool to 2x2 ->  256 -> Linear -> 28
    layer4 2048x7x7   ->                      avg-pool to 1x1 -> 2048 -> Linear -> 28
    concat (112) -> Linear 112 -> LeakyReLU -> Linear 14 -> LeakyReLU -> { regression: Linear 14->1
                                                                         { classes: 14->14->10

The authors pool with fixed 7x7 kernels, so their model only accepts 224 x 224 crops. Here the
pooling is adaptive to the same grids (8, 4, 2, 1): at 224 it is exactly the 7x7 pooling, and other
crop sizes work too.

Two ways to run it:

* :meth:`PMTIQA.forward` on a batch of crops, the training path.
* :meth:`PMTIQA.stage_maps` once over a whole image (or a large tile) followed by
  :meth:`PMTIQA.windows`, which pools every 224-window on a 32-pixel lattice out of the shared
  feature maps. This is the fast scoring path: the backbone runs once per image instead of once per
  crop, and the per-window outputs are the local quality maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import BACKBONES, STAGE_STRIDES, build_backbone

#: Pooling grids of the four taps (cells per side) for the paper's 224 crop.
TAP_GRIDS = (8, 4, 2, 1)
#: Backbone stages whose statistics feed the defect head: the first three, the fine-scale ones
#: (texture, noise, blocks), which the few-shot recipe never changes.
DEFECT_STAGES = 3


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a :class:`PMTIQA` (stored in every checkpoint)."""

    backbone: str = "resnet50"
    num_classes: int = 10
    tap_channels: tuple[int, int, int] = (16, 32, 64)
    tap_dim: int = 28
    trunk_dim: int = 14
    crop_size: int = 224
    multiscale: bool = True
    #: Defect families the model's defect head estimates (empty: no defect head; see
    #: :meth:`PMTIQA.defect_features` and ``training/defects.py``).
    defect_kinds: tuple[str, ...] = ()
    #: The defect-aware score: for each family of ``defect_kinds``, the strength of its penalty
    #: per level past its threshold in ``defect_thresholds`` (empty: scores as the regression
    #: head gives them; see :meth:`PMTIQA.fuse`).
    defect_weights: tuple[float, ...] = ()
    #: The level of each family below which it costs nothing (empty: 0 for every family).
    defect_thresholds: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("defect_weights", "defect_thresholds"):
            v = getattr(self, name)
            if v and len(v) != len(self.defect_kinds):
                raise ValueError(
                    f"{name} has {len(v)} values for {len(self.defect_kinds)} defect kinds "
                    f"{self.defect_kinds!r}: give one value per kind, or none."
                )
            if any(not math.isfinite(x) or x < 0 for x in v):
                raise ValueError(f"{name} must be finite and >= 0; got {v!r}")

    def to_dict(self) -> dict:
        return {
            "backbone": self.backbone,
            "num_classes": self.num_classes,
            "tap_channels": list(self.tap_channels),
            "tap_dim": self.tap_dim,
            "trunk_dim": self.trunk_dim,
            "crop_size": self.crop_size,
            "multiscale": self.multiscale,
            "defect_kinds": list(self.defect_kinds),
            "defect_weights": list(self.defect_weights),
            "defect_thresholds": list(self.defect_thresholds),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "tap_channels" in known:
            known["tap_channels"] = tuple(int(c) for c in known["tap_channels"])
        if "defect_kinds" in known:
            kinds = known["defect_kinds"]
            if isinstance(kinds, str) or not all(isinstance(k, str) and k for k in kinds):
                raise ValueError(f"defect_kinds must be a list of names; got {kinds!r}")
            known["defect_kinds"] = tuple(kinds)
        for name in ("defect_weights", "defect_thresholds"):
            if name in known:
                w = known[name]
                if isinstance(w, (str, bytes)) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in w
                ):
                    raise ValueError(f"{name} must be a list of numbers; got {w!r}")
                known[name] = tuple(float(v) for v in w)
        cfg = cls(**known)
        if cfg.backbone not in BACKBONES:
            raise ValueError(f"Unknown backbone {cfg.backbone!r} in the model configuration.")
        return cfg


@dataclass
class PMTOutput:
    """What a forward pass returns.

    Attributes
    ----------
    score
        Regression head output, shape ``(N,)``, on the model's internal 0-100 scale (the
        defect-aware score, see :meth:`PMTIQA.fuse`, when the model has defect weights and the
        crops are crop-sized).
    logits
        Classification head output, shape ``(N, num_classes)``.
    taps
        The four 28-d multi-scale vectors, each ``(N, tap_dim)`` (their concatenation is the MS
        feature).
    defects
        Defect-head output ``(N, len(config.defect_kinds))``: the estimated degradation level
        (0 none .. 5 severe) of each defect family, or None for a model without a defect head.
    """

    score: torch.Tensor
    logits: torch.Tensor
    taps: list[torch.Tensor] = field(default_factory=list)
    defects: torch.Tensor | None = None


class PMTIQA(nn.Module):
    """Progressive multi-task IQA network.

    Parameters
    ----------
    config
        Architecture; see :class:`ModelConfig`. Keyword arguments override its fields.
    pretrained
        Start the backbone from ImageNet weights when they can be had.

    Examples
    --------
    >>> model = PMTIQA(backbone="resnet18", pretrained=False)
    >>> out = model(torch.rand(2, 3, 224, 224))
    >>> out.score.shape, out.logits.shape
    (torch.Size([2]), torch.Size([2, 10]))
    """

    def __init__(
        self, config: ModelConfig | None = None, *, pretrained: bool = True, **overrides
    ) -> None:
        super().__init__()
        config = config or ModelConfig()
        if overrides:
            config = ModelConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        self.backbone = build_backbone(config.backbone, pretrained=pretrained)
        spec = self.backbone.spec
        c1, c2, c3, c4 = spec.channels
        t1, t2, t3 = config.tap_channels
        d = config.tap_dim
        g1, g2, g3, _ = TAP_GRIDS
        if config.multiscale:
            self.reduce = nn.ModuleList(
                [
                    nn.Conv2d(c1, t1, 1, bias=False),
                    nn.Conv2d(c2, t2, 1, bias=False),
                    nn.Conv2d(c3, t3, 1, bias=False),
                ]
            )
            self.tap_fc = nn.ModuleList(
                [
                    nn.Linear(t1 * g1 * g1, d),
                    nn.Linear(t2 * g2 * g2, d),
                    nn.Linear(t3 * g3 * g3, d),
                    nn.Linear(c4, d),
                ]
            )
        else:  # ablation: only the last stage, projected to the same width (no tap layers at
            # all, so that every parameter takes part in the loss: DDP needs that)
            self.reduce = nn.ModuleList()
            self.tap_fc = nn.ModuleList([nn.Linear(c4, 4 * d)])
        ms = 4 * d
        self.trunk = nn.Sequential(
            nn.Linear(ms, ms),
            nn.LeakyReLU(0.01),
            nn.Linear(ms, config.trunk_dim),
            nn.LeakyReLU(0.01),
        )
        self.reg_head = nn.Linear(config.trunk_dim, 1)
        # start the regression at the middle of the internal 0-100 scale, not at 0
        nn.init.constant_(self.reg_head.bias, 50.0)
        self.cls_head = nn.Sequential(
            nn.Linear(config.trunk_dim, config.trunk_dim),
            nn.LeakyReLU(0.01),
            nn.Linear(config.trunk_dim, config.num_classes),
        )
        # the defect head is fitted in closed form (training/defects.py), never by the optimiser:
        # its parameters are frozen so that no training run (nor DDP) sees them as unused
        self.defect_head: nn.Linear | None = None
        if config.defect_kinds:
            self.defect_head = nn.Linear(self.defect_dim, len(config.defect_kinds))
            self.defect_head.requires_grad_(False)

    # ------------------------------------------------------------------ building blocks
    @property
    def mean(self) -> tuple[float, float, float]:
        return self.backbone.spec.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.backbone.spec.std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map RGB in [0, 1] (``N, 3, H, W``) to the backbone's input normalisation."""
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone stage maps, the first three already reduced by their 1x1 convolutions.

        ``x`` is normalised input (see :meth:`normalize`) of any size. Without the multi-scale
        taps (the ablation) only the last map is used: the first three are returned as they are.
        """
        return self.reduce_maps(self.backbone(x))

    def reduce_maps(self, raw: list[torch.Tensor]) -> list[torch.Tensor]:
        """The tap maps of :meth:`stage_maps` from the backbone's raw stage maps."""
        f1, f2, f3, f4 = raw
        if not self.config.multiscale:
            return [f1, f2, f3, f4]
        return [self.reduce[0](f1), self.reduce[1](f2), self.reduce[2](f3), f4]

    # ------------------------------------------------------------------ defect features
    @property
    def defect_dim(self) -> int:
        """Width of :meth:`defect_features`: mean and RMS of each channel of the first stages."""
        return 2 * sum(self.backbone.spec.channels[:DEFECT_STAGES])

    def defect_features(self, raw: list[torch.Tensor], step: int | None = None) -> torch.Tensor:
        """Mean and root mean square of each channel of the first three raw stage maps over every
        ``crop_size`` window of a lattice (the windows of :meth:`window_pooled`).

        ``raw`` is the backbone's output (:meth:`stage_maps` before its reductions) for images
        whose sides are multiples of 32 and at least ``crop_size``; a single crop gives one
        window. Returns ``(N * ny * nx, defect_dim)``, row-major over the windows of each image.
        """
        step = step or self.lattice
        crop = self.config.crop_size
        lat = self.lattice
        if crop % lat or step % lat:
            raise ValueError("Defect features need a crop size and step that are multiples of 32.")
        parts = []
        ny = nx = None
        for m, s in zip(raw[:DEFECT_STAGES], STAGE_STRIDES):
            m = m.float()
            # means over 32-pixel cells first, then over the crop's cells: the same mean as one
            # crop-sized pooling, at a fraction of its cost
            cells = lat // s
            mean = F.avg_pool2d(F.avg_pool2d(m, cells), crop // lat, step // lat)
            sq = F.avg_pool2d(F.avg_pool2d(m * m, cells), crop // lat, step // lat)
            rms = sq.clamp_min(0).sqrt()
            if ny is None:
                ny, nx = mean.shape[-2:]
            parts += [mean[..., :ny, :nx], rms[..., :ny, :nx]]
        v = torch.cat(parts, dim=1)  # N, D, ny, nx
        return v.permute(0, 2, 3, 1).reshape(-1, v.shape[1])

    def defects(self, features: torch.Tensor) -> torch.Tensor | None:
        """Defect-head levels (``N, len(defect_kinds)``, clipped to 0..5) of defect features, or
        None for a model without a defect head."""
        if self.defect_head is None:
            return None
        # in float32 even under bf16/fp16 autocast: the read-out cancels large terms
        with torch.autocast(device_type=features.device.type, enabled=False):
            w = self.defect_head.weight
            return self.defect_head(features.to(w.dtype)).float().clamp(0.0, 5.0)

    @property
    def fuses_defects(self) -> bool:
        """Whether scores are defect-aware (a defect head and a non-zero ``defect_weights``)."""
        return self.defect_head is not None and any(self.config.defect_weights)

    def fuse(self, score: torch.Tensor, defects: torch.Tensor | None) -> torch.Tensor:
        """The defect-aware score, in internal units (0 worst .. 100 best)::

            p = sum_k defect_weights[k] * max(0, defects[:, k] - defect_thresholds[k])
            fused = score - max(score, 0) * (1 - exp(-p))

        ``score`` is ``(N,)`` regression output and ``defects`` the ``(N, K)`` levels of the same
        crops (:meth:`defects`). The regression head learns quality from human ratings of
        authentic photos, which hold little strong noise or compression; the weights and
        thresholds, chosen on validation images (``scripts/fit_fusion.py``), let the defect
        head's estimate of those defects lower the score of the crops that show them, past a
        level authentic photos rarely reach. The penalty is a factor ``exp(-p)`` on the score:
        a fused score never leaves the score range, and falls strictly with every defect level
        past the threshold. Returns ``score`` itself when the model does not fuse.
        """
        if not self.fuses_defects or defects is None:
            return score
        s = score.float()
        return (s - s.clamp(min=0.0) * -torch.expm1(-self._penalty(defects))).to(score.dtype)

    def fuse_classes(self, probs: torch.Tensor, defects: torch.Tensor | None) -> torch.Tensor:
        """Class probabilities ``(N, C)`` moved as :meth:`fuse` moves scores: each class's bin
        ``[lo, hi)`` of the internal scale becomes ``[lo * f, hi * f)`` with the crop's factor
        ``f = exp(-p)``, and its probability is shared among the classes that interval overlaps,
        in proportion to the overlap. The class map and the class probabilities then follow the
        defect-aware score. Returns ``probs`` itself when the model does not fuse."""
        if not self.fuses_defects or defects is None:
            return probs
        from .losses import class_edges

        n = probs.shape[1]
        edges = torch.tensor(class_edges(n), dtype=torch.float32, device=probs.device)
        lo, hi = edges[:-1], edges[1:]
        f = torch.exp(-self._penalty(defects)).to(probs.device)[:, None, None]  # (N, 1, 1)
        # overlap of source bin i, scaled, with target bin j: (N, i, j), each row summing to 1
        src_lo, src_hi = lo[None, :, None] * f, hi[None, :, None] * f
        inter = torch.minimum(src_hi, hi[None, None, :]) - torch.maximum(src_lo, lo[None, None, :])
        share = inter.clamp(min=0.0) / (src_hi - src_lo)
        return torch.einsum("ni,nij->nj", probs.float(), share).to(probs.dtype)

    def _penalty(self, defects: torch.Tensor) -> torch.Tensor:
        """``p = sum_k w_k * max(0, level_k - t_k)`` of each crop, ``(N,)`` float32."""
        c, dev = self.config, defects.device
        w = torch.tensor(c.defect_weights, dtype=torch.float32, device=dev)
        t = torch.tensor(c.defect_thresholds or (0.0,) * len(w), dtype=torch.float32, device=dev)
        # elementwise and a sum, not a matrix product: float32 even under autocast
        return ((defects.float() - t).clamp(min=0.0) * w).sum(dim=-1)

    def taps_from_pooled(self, pooled: list[torch.Tensor]) -> list[torch.Tensor]:
        """Turn the four pooled grids (``N, C, g, g``) into the four MS vectors."""
        if not self.config.multiscale:
            v = self.tap_fc[0](pooled[3].flatten(1))
            return list(v.chunk(4, dim=1))
        return [fc(p.flatten(1)) for fc, p in zip(self.tap_fc, pooled)]

    def heads(self, taps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Score and class logits from the four MS vectors."""
        h = self.trunk(torch.cat(taps, dim=1))
        return self.reg_head(h).squeeze(1), self.cls_head(h)

    # ------------------------------------------------------------------ crop path
    def forward(self, x: torch.Tensor, normalized: bool = True) -> PMTOutput:
        """Score a batch of crops.

        Parameters
        ----------
        x
            ``(N, 3, H, W)``; normalised for the backbone unless ``normalized=False``, in which
            case RGB in [0, 1] is expected and normalised here.
        """
        if not normalized:
            x = self.normalize(x)
        raw = self.backbone(x)
        maps = self.reduce_maps(raw)
        pooled = [F.adaptive_avg_pool2d(m, g) for m, g in zip(maps, TAP_GRIDS)]
        taps = self.taps_from_pooled(pooled)
        score, logits = self.heads(taps)
        defects = None
        if self.defect_head is not None and x.shape[-1] == x.shape[-2] == self.config.crop_size:
            with torch.no_grad():
                defects = self.defects(self.defect_features(raw))
            score = self.fuse(score, defects)
        return PMTOutput(score=score, logits=logits, taps=taps, defects=defects)

    # ------------------------------------------------------------------ window path
    @property
    def lattice(self) -> int:
        """Pixel step of the window lattice of the fast path (the coarsest stage's stride)."""
        return STAGE_STRIDES[-1]

    def window_pooled(
        self, maps: list[torch.Tensor], step: int | None = None
    ) -> tuple[list[torch.Tensor], int, int]:
        """Pool every ``crop_size`` window of a lattice out of whole-image stage maps.

        Parameters
        ----------
        maps
            Output of :meth:`stage_maps` for images whose sides are multiples of 32 and at least
            ``crop_size``.
        step
            Window step in pixels, a multiple of 32 (default 32).

        Returns
        -------
        pooled, ny, nx
            Four tensors ``(N * ny * nx, C, g, g)`` (row-major over the windows of each image)
            and the number of windows per column and row.
        """
        step = step or self.lattice
        crop = self.config.crop_size
        if crop % self.lattice or step % self.lattice:
            raise ValueError("The window path needs a crop size and step that are multiples of 32.")
        out = []
        ny = nx = 0
        for m, s, g in zip(maps, STAGE_STRIDES, TAP_GRIDS):
            cells = crop // s // g  # feature pixels per pooling cell (7 at 224)
            box = F.avg_pool2d(m, kernel_size=cells, stride=1)
            win = crop // s
            st = step // s
            ny = (m.shape[-2] - win) // st + 1
            nx = (m.shape[-1] - win) // st + 1
            if ny < 1 or nx < 1:
                raise ValueError("The image is smaller than one crop.")
            iy = (st * torch.arange(ny, device=m.device))[:, None] + cells * torch.arange(
                g, device=m.device
            )[None, :]
            ix = (st * torch.arange(nx, device=m.device))[:, None] + cells * torch.arange(
                g, device=m.device
            )[None, :]
            sel = box[:, :, iy][..., ix]  # N, C, ny, g, nx, g
            sel = sel.permute(0, 2, 4, 1, 3, 5).reshape(-1, m.shape[1], g, g)
            out.append(sel)
        return out, ny, nx

    def windows(
        self, maps: list[torch.Tensor], step: int | None = None
    ) -> tuple[PMTOutput, int, int]:
        """Outputs of every lattice window of whole-image stage maps (see :meth:`window_pooled`).

        The scores are the regression head's, without the defect-aware score (:meth:`fuse` needs
        the raw first stages, which :meth:`stage_maps` has reduced): scoring
        (:func:`napari_pmt_iqa.scoring.score`) applies it, from the backbone's raw maps.
        """
        pooled, ny, nx = self.window_pooled(maps, step)
        taps = self.taps_from_pooled(pooled)
        score, logits = self.heads(taps)
        return PMTOutput(score=score, logits=logits, taps=taps), ny, nx


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
