"""Progressive multi-task loss, class binning and score scales."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_pmt_iqa.model import (
    PMTLoss,
    ScoreScale,
    class_edges,
    constant_weights,
    progressive_weights,
    score_to_class,
)


def test_progressive_weights_follow_the_paper():
    E = 5
    w = [progressive_weights(t, E) for t in range(E)]
    assert w[0] == (0.0, 1.0)  # epoch 0: classification only
    assert w[-1] == (1.0, 0.0)  # last epoch: regression only
    for t, (w_reg, w_cls) in enumerate(w):
        assert w_reg == pytest.approx(t / (E - 1))
        assert w_reg + w_cls == pytest.approx(1.0)
    regs = [r for r, _ in w]
    assert regs == sorted(regs)


def test_progressive_weights_edge_cases():
    assert progressive_weights(0, 1) == (1.0, 0.0)
    assert progressive_weights(15, 30)[0] == pytest.approx(15 / 29)
    with pytest.raises(ValueError, match="at least 1"):
        progressive_weights(0, 0)
    with pytest.raises(ValueError, match="outside"):
        progressive_weights(5, 5)
    with pytest.raises(ValueError, match="outside"):
        progressive_weights(-1, 5)


def test_constant_weights_baseline():
    sched = constant_weights()
    assert [sched(t, 10) for t in (0, 5, 9)] == [(1.0, 1.0)] * 3
    assert constant_weights(0.5, 2.0)(3, 4) == (0.5, 2.0)


def test_class_edges():
    assert class_edges(10) == [10.0 * i for i in range(11)]
    assert class_edges(4) == [0.0, 25.0, 50.0, 75.0, 100.0]


def test_score_to_class_bins_and_clamps():
    s = torch.tensor([-5.0, 0.0, 9.99, 10.0, 55.0, 99.9, 100.0, 130.0])
    assert score_to_class(s).tolist() == [0, 0, 0, 1, 5, 9, 9, 9]
    assert score_to_class(torch.tensor([24.9, 25.0, 100.0]), num_classes=4).tolist() == [0, 1, 3]
    assert score_to_class(s).dtype == torch.long


@pytest.mark.parametrize(
    "scale",
    [
        ScoreScale(0, 100),
        ScoreScale(0, 1, name="BIQ2021 (0-1)"),
        ScoreScale(1, 5, name="MOS 1-5"),
        ScoreScale(0, 100, higher_is_better=False, name="DMOS"),
        ScoreScale(-3, 7, higher_is_better=False),
    ],
)
def test_score_scale_round_trips(scale):
    values = np.linspace(scale.low, scale.high, 7)
    internal = scale.to_internal(values)
    assert internal.min() == pytest.approx(0.0, abs=1e-9)
    assert internal.max() == pytest.approx(100.0)
    np.testing.assert_allclose(scale.from_internal(internal), values, atol=1e-9)
    t = torch.tensor(values)
    torch.testing.assert_close(scale.from_internal(scale.to_internal(t)), t)
    assert ScoreScale.from_dict(scale.to_dict()) == scale


def test_lower_is_better_scale_inverts():
    dmos = ScoreScale(0, 100, higher_is_better=False)
    assert dmos.to_internal(0.0) == pytest.approx(100.0)  # best DMOS -> best internal
    assert dmos.to_internal(100.0) == pytest.approx(0.0)
    assert dmos.from_internal(75.0) == pytest.approx(25.0)
    assert ScoreScale(0, 5).to_internal(2.5) == pytest.approx(50.0)


@pytest.mark.parametrize("low, high", [(1.0, 1.0), (5.0, 0.0)])
def test_score_scale_needs_a_positive_width(low, high):
    with pytest.raises(ValueError, match="high > low"):
        ScoreScale(low, high)


def test_pmt_loss_combines_both_tasks():
    torch.manual_seed(0)
    score = torch.tensor([12.0, 47.0, 93.0], requires_grad=True)
    logits = torch.randn(3, 10, requires_grad=True)
    target = torch.tensor([10.0, 55.0, 100.0])
    loss = PMTLoss()
    loss.set_weights(0.25, 0.75)
    total, l1, ce = loss(score, logits, target)
    assert l1.item() == pytest.approx((2 + 8 + 7) / 3)
    ref_ce = F.cross_entropy(logits, torch.tensor([1, 5, 9]))
    assert ce.item() == pytest.approx(ref_ce.item(), rel=1e-6)
    assert total.item() == pytest.approx(0.25 * l1.item() + 0.75 * ce.item(), rel=1e-6)
    total.backward()
    assert score.grad is not None and logits.grad is not None


def test_pmt_loss_epoch_zero_trains_only_the_classifier():
    score = torch.tensor([30.0], requires_grad=True)
    logits = torch.zeros(1, 10, requires_grad=True)
    loss = PMTLoss()
    loss.set_weights(*progressive_weights(0, 10))
    total, _, _ = loss(score, logits, torch.tensor([80.0]))
    total.backward()
    assert score.grad.abs().sum() == 0
    assert logits.grad.abs().sum() > 0


def test_pmt_loss_under_bf16_scores():
    loss = PMTLoss(w_reg=1.0, w_cls=1.0)
    total, l1, _ = loss(
        torch.tensor([40.0], dtype=torch.bfloat16),
        torch.zeros(1, 10, dtype=torch.bfloat16),
        torch.tensor([50.0]),
    )
    assert total.dtype == torch.float32
    assert l1.item() == pytest.approx(10.0)


def test_pmt_loss_keeps_float32_targets_under_bf16():
    loss = PMTLoss(w_reg=1.0, w_cls=1.0)
    logits = torch.zeros(1, 10, dtype=torch.bfloat16)
    logits[0, 0] = 10.0  # confident in class 0
    # 9.99 is class 0; rounded to bf16 it would be 10.0, class 1
    _, l1, ce = loss(torch.tensor([9.99], dtype=torch.bfloat16), logits, torch.tensor([9.99]))
    assert ce.item() < 1e-3
    assert l1.item() == pytest.approx(abs(float(torch.tensor(9.99).bfloat16()) - 9.99), rel=1e-3)
