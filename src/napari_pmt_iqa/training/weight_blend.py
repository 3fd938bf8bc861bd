"""Weight-space blend of a fine-tuned model with the model it started from.

A fine-tune on a hundred ratings moves the heads a long way on little evidence. Taking only part
of that step, ``w = w_start + share * (w_tuned - w_start)`` for every trained weight, keeps most of
what the ratings taught and most of what the starting model knew (a weight-space ensemble, as
WiSE-FT: Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022). It works because
the two models share an origin: the fine-tune starts from the starting weights, so the straight
line between them stays in one basin. The blended model is one model, as fast as either.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


def blend_state(
    base: Mapping, tuned: Mapping, share: float, keys: Collection[str] | None = None
) -> dict:
    """The state dict ``base + share * (tuned - base)`` (floating tensors; others from ``tuned``).

    Parameters
    ----------
    base
        State dict of the starting model (for a fine-tune: after its calibration).
    tuned
        State dict of the fine-tuned model, with the same keys and shapes.
    share
        Share of the fine-tuned step kept: 0 gives ``base``, 1 gives ``tuned``.
    keys
        Blend only these entries (the trained weights), take the others from ``tuned`` as they
        are (they are the same in both; this saves the arithmetic on a frozen backbone).

    Returns
    -------
    dict
        A new state dict; ``share`` 1 returns the tuned tensors themselves (no arithmetic, so
        that a plain fine-tune is exactly what it was).
    """
    if set(base) != set(tuned):
        missing = sorted(set(base) ^ set(tuned))[:3]
        raise ValueError(f"The two models do not have the same weights (e.g. {missing}).")
    share = float(share)
    if share == 1.0:
        return dict(tuned)
    out = {}
    for k, t in tuned.items():
        if keys is not None and k not in keys:
            out[k] = t
            continue
        b = base[k]
        if tuple(b.shape) != tuple(t.shape):
            raise ValueError(
                f"Weight {k} has shape {tuple(b.shape)} in one model, {tuple(t.shape)} in the other."
            )
        if t.is_floating_point():
            out[k] = b.to(t.dtype).lerp(t, share)
        else:
            out[k] = t
    return out


def state_delta(base: Mapping, state: Mapping) -> dict:
    """The entries of ``state`` that differ from ``base`` (what a fine-tune changed).

        A fine-tune trains its heads (and perhaps the backbone's head layer) and leaves a frozen
        backbone as it was: keeping only the changed entries makes its resume state a fraction of
        a whole model. ``with_delta(base, state_delta(base, state))`` gives ``state`` back (every entry
    equal, on the devices of ``base``).
    """
    import torch

    out = {}
    for k, v in state.items():
        b = base.get(k)
        if b is not None and b.device != v.device:  # (a resumed run's delta was read to the CPU)
            b = b.to(v.device)
        if b is None or b.shape != v.shape or b.dtype != v.dtype or not torch.equal(b, v):
            out[k] = v
    return out


def with_delta(base: Mapping, delta: Mapping) -> dict:
    """``base`` with the entries of ``delta`` in place of its own (see ``state_delta``).

    Raises
    ------
    ValueError
        If ``delta`` holds an entry that ``base`` does not have (it belongs to another model).
    """
    extra = sorted(set(delta) - set(base))
    if extra:
        raise ValueError(f"The saved weights belong to another model (e.g. {extra[:3]}).")
    # each entry on its base entry's device (a state.pt is read to the CPU)
    return {**base, **{k: v.to(base[k].device) for k, v in delta.items()}}
