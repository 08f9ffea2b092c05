"""Training losses on logits [B, C]: BCE and asymmetric loss (ASL) for multi-label, cross-entropy for multi-class."""

from __future__ import annotations

import torch
from torch import nn

from embedcache.errors import ConfigError

LOSS_KINDS = ("bce", "asl", "ce")


class BCELoss(nn.Module):
    """Binary cross-entropy on logits and multi-hot targets [B, C], averaged over every element (PyTorch's mean)."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


class AsymmetricLoss(nn.Module):
    """ASL (Ridnik et al., ICCV 2021) on logits and multi-hot targets [B, C], summed over classes, averaged over the
    batch (the reference implementation also sums over the batch; averaging keeps the scale independent of B).

    With p = sigmoid(logit) and p_m = max(p - clip, 0):
    loss = -[ y (1 - p)^gamma_pos log(p) + (1 - y) p_m^gamma_neg log(1 - p_m) ], logs clamped at eps.
    The focusing weights carry gradient, as in the reference implementation's default.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: float = 0.05, eps: float = 1e-8):
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0:
            raise ConfigError(f"asl loss: gamma_neg={gamma_neg} and gamma_pos={gamma_pos} must be >= 0")
        if not 0.0 <= clip < 1.0:
            raise ConfigError(f"asl loss: clip={clip} must be in [0, 1)")
        if eps <= 0:
            raise ConfigError(f"asl loss: eps={eps} must be > 0")
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = float(gamma_neg), float(gamma_pos), float(clip), eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Computed in float32: (1 - p)^gamma and log(eps) underflow in half precision.
        logits = logits.float()
        targets = targets.to(logits.dtype)
        prob = torch.sigmoid(logits)
        shifted = (prob - self.clip).clamp(min=0) if self.clip > 0 else prob  # p_m: easy negatives discarded
        positive = targets * (1 - prob).pow(self.gamma_pos) * torch.log(prob.clamp(min=self.eps))
        negative = (1 - targets) * shifted.pow(self.gamma_neg) * torch.log((1 - shifted).clamp(min=self.eps))
        return -(positive + negative).sum(dim=1).mean()


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy averaged over the batch; targets are class indices [B] or one-hot rows [B, C]."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, class_indices(targets, logits.shape[1]))


def class_indices(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices [B] from indices [B] or one-hot rows [B, C] (each row must hold exactly one 1)."""
    if targets.dim() == 1:
        return targets.long()
    if targets.dim() != 2 or targets.shape[1] != num_classes:
        raise ValueError(
            f"ce loss: targets must be [B] indices or [B, {num_classes}] one-hot, got {tuple(targets.shape)}"
        )
    ones = targets == 1
    if not bool((ones.sum(dim=1) == 1).all()) or not bool(((targets == 0) | ones).all()):
        raise ValueError(
            "ce loss: every target row must hold exactly one 1 (single-label); "
            "these labels are multi-label, so use loss 'asl' or 'bce'"
        )
    return ones.to(torch.uint8).argmax(dim=1)


def create_loss(kind: str, **options) -> nn.Module:
    """Build a loss by kind: "bce", "asl" (gamma_neg, gamma_pos, clip, eps) or "ce"."""
    if kind == "asl":
        try:
            return AsymmetricLoss(**options)
        except TypeError:
            raise ConfigError(
                f"asl loss: unknown option(s) {', '.join(sorted(options))}; it accepts gamma_neg, gamma_pos, clip, eps"
            ) from None
    if kind in ("bce", "ce"):
        if options:
            raise ConfigError(f"{kind} loss takes no options, got {', '.join(sorted(options))}")
        return BCELoss() if kind == "bce" else CrossEntropyLoss()
    raise ConfigError(f"unknown loss {kind!r}: choose one of {', '.join(LOSS_KINDS)}")


def default_loss_kind(multilabel: bool) -> str:
    """The paper's choice: ASL for multi-label data, cross-entropy for single-label data."""
    return "asl" if multilabel else "ce"
