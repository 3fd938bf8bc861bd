"""Training the heads of a frozen PMT-IQA model on cached window features (the few-shot loop).

Pieces of :mod:`napari_pmt_iqa.training.finetune`, free of events and files so that they can be
tested and benchmarked on their own:

* :class:`FeaturePack`: the cached window features of a list of images in one tensor, with their
  targets (internal 0-100 scale) and, for a model with a defect-aware score, the windows' defect
  levels; :meth:`FeaturePack.batch` samples a few windows per image.
* :func:`image_scores`: the score of every image of a pack (mean over its windows, as
  :func:`~napari_pmt_iqa.scoring.score` does, the defect-aware score where the model has one
  and the pack holds levels), no gradients.
* :func:`batch_loss`: regression of the image scores on the ratings, a margin ranking loss on every
  pair of images of the batch rated differently (ratings are ordinal), the class head's
  cross-entropy on the windows, and an L2 pull towards the starting weights (L2-SP).
* :func:`calibrate_regression`: the affine map of the starting model's scores onto the ratings,
  folded into its (linear) regression head (:func:`image_factors` makes it exact for a
  defect-aware score).
* :func:`epoch_batches`: the seeded order of one epoch, every image once, in near-equal batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class FeaturePack:
    """Window features of several images, packed.

    Parameters
    ----------
    feats
        One ``(k_i, D)`` float tensor per image (:func:`~.features.window_features`).
    targets
        One target per image on the internal 0-100 scale.
    maps
        For the adaptation of the backbone head (:mod:`~.head_maps`): one list of head-input maps
        per image, whose windows are that image's rows (:func:`~.head_maps.window_blocks`).
    levels
        For a model with a defect-aware score (``PMTIQA.fuse``): one ``(k_i, K)`` tensor of the
        defect levels of each image's windows (``levels=True`` of
        :func:`~.features.window_features`); the heads then train and score through that score.
    """

    def __init__(
        self,
        feats: Sequence,
        targets: Sequence[float],
        maps: Sequence | None = None,
        levels: Sequence | None = None,
    ):
        import torch

        if len(feats) != len(targets):
            raise ValueError(f"{len(feats)} feature blocks but {len(targets)} targets")
        if maps is not None and len(maps) != len(feats):
            raise ValueError(f"{len(feats)} feature blocks but {len(maps)} map lists")
        if levels is not None:
            if len(levels) != len(feats) or any(
                a is None or int(a.shape[0]) != int(f.shape[0]) for a, f in zip(levels, feats)
            ):
                raise ValueError("The defect levels must have one row per feature row.")
        if maps is None:
            self.maps = None
        else:  # stored channels-last: a step's blocks are then read without a transposing copy
            from .head_maps import channels_last

            self.maps = [[channels_last(x) for x in m] for m in maps]
        counts = np.array([int(f.shape[0]) for f in feats], dtype=np.int64)
        self.rows = torch.cat(list(feats)).float() if len(feats) else torch.empty(0, 0)
        self.counts = counts
        self.offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.targets = torch.tensor(np.asarray(targets, dtype=np.float32))
        self.levels = (
            torch.cat([torch.as_tensor(a).float() for a in levels])
            if levels is not None and len(levels)
            else None
        )

    def image_rows(self, i: int):
        """``(features, levels)`` of image ``i`` (levels ``None`` where the pack holds none)."""
        a, b = int(self.offsets[i]), int(self.offsets[i] + self.counts[i])
        return self.rows[a:b], (self.levels[a:b] if self.levels is not None else None)

    def _levels_at(self, idx):
        return self.levels[idx] if self.levels is not None else None

    def __len__(self) -> int:
        return len(self.counts)

    def batch(self, images: Sequence[int], per_image: int | None, rng: np.random.Generator):
        """Rows of ``per_image`` random windows of each image (all where ``None``) and their image.

        Returns
        -------
        (torch.Tensor, torch.Tensor, torch.Tensor | None)
            ``(R, D)`` features, ``(R,)`` the position in ``images`` of each row's image, and the
            ``(R, K)`` defect levels of the rows (``None`` where the pack holds none).
        """
        import torch

        rows, seg = [], []
        for b, i in enumerate(images):
            k = int(self.counts[i])
            if per_image is None or k <= per_image:
                pick = np.arange(k)
            else:
                pick = np.sort(rng.choice(k, per_image, replace=False))
            rows.append(self.offsets[i] + pick)
            seg.append(np.full(len(pick), b))
        idx = torch.from_numpy(np.concatenate(rows))
        return self.rows[idx], torch.from_numpy(np.concatenate(seg)), self._levels_at(idx)

    def batch_blocks(
        self, images: Sequence[int], per_image: int | None, rng: np.random.Generator, cells: int
    ):
        """Like :meth:`batch`, but each image's windows are a block of adjacent windows of one of
        its maps (2 rows of ``ceil(per_image / 2)``, fewer where the map is smaller; a whole map
        where ``None``), so that the head runs on few cells: returns the rows, their image, the
        part of the map under each block (an image's rows are its block's windows, row-major) and
        the rows' defect levels (``None`` where the pack holds none).
        """
        import torch

        from .head_maps import map_windows

        if self.maps is None:
            raise ValueError("This pack holds no head maps.")
        rows, seg, subs = [], [], []
        for b, i in enumerate(images):
            maps = self.maps[i]
            sizes = np.array([np.prod(map_windows(m, cells)) for m in maps], dtype=np.int64)
            mi = 0 if len(maps) == 1 else int(rng.choice(len(maps), p=sizes / sizes.sum()))
            m = maps[mi]
            wy, wx = map_windows(m, cells)
            if per_image is None:
                bh, bw = wy, wx
            else:
                bh = min(2, wy)
                bw = min(wx, max(1, -(-int(per_image) // bh)))
            y0 = int(rng.integers(0, wy - bh + 1))
            x0 = int(rng.integers(0, wx - bw + 1))
            base = int(self.offsets[i]) + int(sizes[:mi].sum())
            grid = (y0 + np.arange(bh))[:, None] * wx + (x0 + np.arange(bw))[None, :]
            rows.append(base + grid.ravel())
            seg.append(np.full(bh * bw, b))
            subs.append(m[:, y0 : y0 + bh + cells - 1, x0 : x0 + bw + cells - 1])
        idx = torch.from_numpy(np.concatenate(rows))
        return self.rows[idx], torch.from_numpy(np.concatenate(seg)), subs, self._levels_at(idx)


def segment_mean(values, seg, n: int):
    """Mean of ``values`` per segment id ``seg`` (``0..n-1``)."""
    import torch

    sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, seg, values)
    cnt = torch.bincount(seg, minlength=n).to(values.dtype)
    return sums / cnt.clamp_min(1)


def _fused(model, s, levels):
    """Window scores ``s`` made defect-aware with their ``levels`` (``PMTIQA.fuse``, which leaves
    them as they are where the model does not fuse or the levels are unknown), the levels moved
    to the scores' device."""
    return model.fuse(s, None if levels is None else levels.to(s.device))


def image_scores(model, pack: FeaturePack, chunk_rows: int = 4096) -> np.ndarray:
    """Internal scores of every image of ``pack`` (mean over its cached windows; where the pack
    holds head maps, the fourth tap comes from the model's backbone head on them; where it holds
    defect levels and the model has a defect-aware score, that score, as scoring gives it)."""
    import torch

    from .features import FeatureLayout, heads_from_features
    from .head_maps import head_tap

    if len(pack) == 0:
        return np.empty(0)
    layout = FeatureLayout.of(model)
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        if pack.maps is not None:  # a few images at a time: their maps go through the head
            # together (head_tap stacks the maps of one shape)
            per = 32
            for i0 in range(0, len(pack), per):
                i1 = min(len(pack), i0 + per)
                a = int(pack.offsets[i0])
                b = int(pack.offsets[i1 - 1] + pack.counts[i1 - 1])
                tap4 = head_tap(model, [m for i in range(i0, i1) for m in pack.maps[i]])
                s, _ = heads_from_features(model, pack.rows[a:b].to(dev), layout, tap4)
                s = _fused(model, s, pack._levels_at(slice(a, b)))
                out.append(s.float().cpu())
        else:
            for k in range(0, pack.rows.shape[0], chunk_rows):
                s, _ = heads_from_features(model, pack.rows[k : k + chunk_rows].to(dev), layout)
                s = _fused(model, s, pack._levels_at(slice(k, k + chunk_rows)))
                out.append(s.float().cpu())
    s = torch.cat(out)
    seg = torch.from_numpy(np.repeat(np.arange(len(pack)), pack.counts))
    return segment_mean(s.double(), seg, len(pack)).numpy()


def image_factors(model, pack: FeaturePack) -> np.ndarray:
    """The mean over each image's windows of the defect-aware score's factor ``exp(-p)``
    (``PMTIQA.fuse``; ones where the model does not fuse or the pack holds no levels).

    With it an affine map ``a * s + b`` of the window scores changes an image's defect-aware score
    ``S`` to ``a * S + b * F`` (windows of positive score), which :func:`calibrate_regression`
    fits exactly.
    """
    import torch

    if pack.levels is None or not model.fuses_defects or len(pack) == 0:
        return np.ones(len(pack))
    with torch.no_grad():
        f = torch.exp(-model._penalty(pack.levels)).double()
    seg = torch.from_numpy(np.repeat(np.arange(len(pack)), pack.counts))
    return segment_mean(f, seg, len(pack)).numpy()


def head_parameters(model) -> list:
    """The heads' parameters (everything but the backbone; the L2 pull of ``anchor`` acts on
    these). The backbone head's, adapted too by default, are :func:`~.head_maps.adapted_parameters`."""
    return [p for n, p in model.named_parameters() if not n.startswith("backbone.")]


def ranking_hinge(pred, target, margin: float):
    """Margin ranking loss over every pair of a batch rated differently.

    For each pair with ``target[i] > target[j]``: ``relu(margin * (target[i] - target[j]) -
    (pred[i] - pred[j]))``, averaged over those pairs (0 when there are none). ``margin`` is the
    share of the rated difference the predicted difference should reach.
    """
    import torch

    dt = target[:, None] - target[None, :]
    dp = pred[:, None] - pred[None, :]
    mask = dt > 0
    if not bool(mask.any()):
        return pred.sum() * 0.0
    return torch.relu(margin * dt - dp)[mask].mean()


def batch_loss(
    model,
    pack: FeaturePack,
    images: Sequence[int],
    rng: np.random.Generator,
    *,
    windows: int | None,
    reg_weight: float,
    rank_weight: float,
    rank_margin: float,
    cls_weight: float,
    anchor: float,
    start_params: Sequence | None,
    layout=None,
):
    """The few-shot loss of one batch of images (see the module docstring).

    Returns
    -------
    (torch.Tensor, dict)
        The loss (with gradients) and its parts as floats (``reg``, ``rank``, ``ce``, ``anchor``).
    """
    import torch
    import torch.nn.functional as F

    from ..model.losses import score_to_class
    from .features import heads_from_features

    dev = next(model.parameters()).device
    tap4 = None
    if pack.maps is not None:
        from .head_maps import head_tap, window_cells

        rows, seg, subs, levels = pack.batch_blocks(images, windows, rng, window_cells(model))
        tap4 = head_tap(model, subs)
    else:
        rows, seg, levels = pack.batch(images, windows, rng)
    rows, seg = rows.to(dev), seg.to(dev)
    s, logits = heads_from_features(model, rows, layout, tap4)
    t = pack.targets[torch.as_tensor(list(images))].to(dev)
    # a defect-aware model trains through its defect-aware score and classes (what it scores)
    fuse = levels is not None and model.fuses_defects
    p = segment_mean(_fused(model, s, levels).float(), seg, len(images))
    reg = F.smooth_l1_loss(p, t, beta=5.0)
    rank = ranking_hinge(p, t, rank_margin)
    want = score_to_class(t[seg], model.config.num_classes)
    if fuse:
        probs = model.fuse_classes(torch.softmax(logits.float(), dim=1), levels.to(dev))
        # a crop whose factor leaves its rated class no share cannot reach it whatever its
        # logits: it has no gradient to give, and is left out of the figure
        got = probs.gather(1, want[:, None])[:, 0]
        ok = got > 0
        ce = -torch.log(got[ok]).mean() if bool(ok.any()) else logits.sum() * 0.0
    else:
        ce = F.cross_entropy(logits.float(), want)
    pull = torch.zeros((), device=dev)
    if anchor > 0 and start_params is not None:
        pull = sum(((q - q0) ** 2).sum() for q, q0 in zip(head_parameters(model), start_params))
    loss = reg_weight * reg + rank_weight * rank + cls_weight * ce + anchor * pull
    parts = {
        "reg": float(reg.detach()),
        "rank": float(rank.detach()),
        "ce": float(ce.detach()),
        "anchor": float(pull.detach()),
    }
    return loss, parts


def calibrate_regression(
    model,
    scores: np.ndarray,
    targets: np.ndarray,
    max_gain: float = 10.0,
    factors: np.ndarray | None = None,
) -> tuple[float, float]:
    """Fold the least-squares map ``a * score + b`` of ``scores`` onto ``targets`` into the model.

    The regression head is linear, so the map is exact: the calibrated model scores
    ``a * s + b`` where the model scored ``s``. Where the fit is no use (scores that do not
    vary, or fall as the targets rise) or would amplify the model's float rounding (a gain
    beyond ``max_gain``: scores that barely vary, e.g. new random heads), only the mean is
    moved (``a = 1``). For a defect-aware score give ``factors`` (:func:`image_factors`): the
    image scores then become ``a * score + b * factor``, and that is what is fitted (exactly
    where every window's score stays positive before and after the map: the penalty leaves a
    negative score as it is).

    Returns
    -------
    (float, float)
        ``(a, b)``.
    """
    import torch

    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    if s.size == 0:
        return 1.0, 0.0
    m = np.ones_like(s) if factors is None else np.asarray(factors, dtype=np.float64)
    a, b = 1.0, float(np.sum(t - s) / max(np.sum(m), 1e-12))
    if s.size >= 2 and np.ptp(s) > 0:
        (fa, fb), *_ = np.linalg.lstsq(np.stack([s, m], axis=1), t, rcond=None)
        if np.isfinite(fa) and np.isfinite(fb) and 0 < fa <= max_gain:
            a, b = float(fa), float(fb)
    head = model.reg_head
    with torch.no_grad():
        head.weight.mul_(a)
        head.bias.mul_(a).add_(b)
    return a, b


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, phase: int = 0) -> list:
    """Every image once, in a seeded order, cut into ``ceil(n / batch_size)`` near-equal batches."""
    if n == 0:
        return []
    perm = np.random.default_rng((seed, 4711, phase, epoch)).permutation(n)
    nb = max(1, -(-n // max(1, batch_size)))
    return [b.tolist() for b in np.array_split(perm, nb) if len(b)]


__all__ = [
    "FeaturePack",
    "batch_loss",
    "calibrate_regression",
    "epoch_batches",
    "head_parameters",
    "image_factors",
    "image_scores",
    "ranking_hinge",
    "segment_mean",
]
