"""Losses: ASL against a hand computation, its limits, BCE, cross-entropy targets, and the factory."""

from __future__ import annotations

import math

import pytest
import torch

from embedcache.errors import ConfigError
from embedcache.losses import AsymmetricLoss, create_loss, default_loss_kind


def sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


def asl_by_hand(logits, targets, gamma_neg=4.0, gamma_pos=1.0, clip=0.05):
    rows = []
    for logit_row, target_row in zip(logits, targets):
        total = 0.0
        for logit, target in zip(logit_row, target_row):
            p = sigmoid(logit)
            if target:
                total -= (1 - p) ** gamma_pos * math.log(p)
            else:
                shifted = max(p - clip, 0.0)
                total -= shifted ** gamma_neg * math.log(1 - shifted)
        rows.append(total)
    return sum(rows) / len(rows)


def test_asl_matches_a_hand_computation():
    logits = [[2.0, -1.0, 0.3], [-0.5, 4.0, -3.0]]
    targets = [[1, 0, 0], [0, 1, 1]]
    loss = create_loss("asl")(torch.tensor(logits), torch.tensor(targets))
    assert loss.item() == pytest.approx(asl_by_hand(logits, targets), rel=1e-6)
    custom = create_loss("asl", gamma_neg=2, gamma_pos=0, clip=0.2)(torch.tensor(logits), torch.tensor(targets))
    assert custom.item() == pytest.approx(asl_by_hand(logits, targets, 2.0, 0.0, 0.2), rel=1e-6)


def test_asl_clip_discards_easy_negatives_entirely():
    # sigmoid(-3) = 0.047 < clip 0.05: this negative contributes exactly nothing, loss and gradient.
    logits = torch.tensor([[-3.0]], requires_grad=True)
    loss = AsymmetricLoss()(logits, torch.tensor([[0.0]]))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.item() == 0.0


def test_asl_without_focusing_or_clip_is_bce_summed_over_classes():
    logits = torch.tensor([[1.5, -2.0, 0.1, 3.0], [0.0, 0.7, -1.2, -4.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    plain = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)(logits, targets)
    assert plain.item() == pytest.approx(create_loss("bce")(logits, targets).item() * 4, rel=1e-6)


def test_asl_stays_finite_for_extreme_logits():
    logits = torch.tensor([[80.0, -80.0, 80.0, -80.0]], requires_grad=True)
    loss = AsymmetricLoss()(logits, torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(logits.grad).all()
    assert loss.item() > 10  # the two confident mistakes are penalised (log clamped at eps = 1e-8)


def test_asl_accepts_half_precision_logits():
    logits = torch.tensor([[2.0, -1.0, 0.3]])
    targets = torch.tensor([[1, 0, 0]])
    full = AsymmetricLoss()(logits, targets)
    half = AsymmetricLoss()(logits.half(), targets)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=1e-3)


def test_bce_is_pytorch_mean_over_elements():
    logits = torch.tensor([[0.0, 2.0]])
    expected = (math.log(2.0) + -math.log(1 - sigmoid(2.0))) / 2
    assert create_loss("bce")(logits, torch.tensor([[1, 0]])).item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_takes_indices_or_one_hot_rows():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    loss_fn = create_loss("ce")
    from_indices = loss_fn(logits, torch.tensor([0, 1]))
    from_one_hot = loss_fn(logits, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    row0 = -math.log(math.exp(2.0) / (math.exp(2.0) + 1.0 + math.exp(-1.0)))
    row1 = -math.log(math.exp(0.5) / (2 * math.exp(0.5) + math.exp(3.0)))
    assert from_indices.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert from_one_hot.item() == from_indices.item()


def test_cross_entropy_refuses_multi_label_rows():
    loss_fn = create_loss("ce")
    with pytest.raises(ValueError, match="exactly one 1.*use loss 'asl'"):
        loss_fn(torch.zeros(2, 3), torch.tensor([[1, 1, 0], [0, 1, 0]]))
    with pytest.raises(ValueError, match="exactly one 1"):
        loss_fn(torch.zeros(1, 3), torch.tensor([[0, 0, 0]]))


def test_factory_and_default_kind():
    assert default_loss_kind(multilabel=True) == "asl"
    assert default_loss_kind(multilabel=False) == "ce"
    loss = create_loss("asl")
    assert (loss.gamma_neg, loss.gamma_pos, loss.clip, loss.eps) == (4.0, 1.0, 0.05, 1e-8)
    with pytest.raises(ConfigError, match="unknown loss 'focal'"):
        create_loss("focal")
    with pytest.raises(ConfigError, match="unknown option.*gama_neg"):
        create_loss("asl", gama_neg=2)
    with pytest.raises(ConfigError, match="bce loss takes no options"):
        create_loss("bce", gamma_neg=2)
    with pytest.raises(ConfigError, match="clip=1.5"):
        create_loss("asl", clip=1.5)
