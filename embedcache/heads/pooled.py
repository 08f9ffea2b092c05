"""Heads on one pooled vector per clip: `linear` and `mlp` over the cls token, mean, max or mean+max of the tokens;
and the whole split's pooled vectors that the heads fitted without gradients (knn, logreg) read."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from embedcache.errors import ConfigError
from embedcache.heads.base import ProbeHead, TokenBatch, make_linear

POOLINGS = ("auto", "cls", "mean", "max", "meanmax")


def resolve_pooling(pooling: str, has_prefix: bool) -> str:
    """Turn "auto" into the paper's rule (cls if the encoder exposes one, else mean) and check the choice."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling={pooling!r} is not known: choose one of {', '.join(POOLINGS)}")
    if pooling == "auto":
        return "cls" if has_prefix else "mean"
    if pooling == "cls" and not has_prefix:
        raise ConfigError(
            "pooling='cls' needs prefix (cls) tokens, but this store has none; use pooling='mean' or 'auto'"
        )
    return pooling


def pooled_width(pooling: str, embed_dim: int) -> int:
    """Width of the pooled vector: 2 * D for meanmax, D otherwise."""
    return 2 * embed_dim if pooling == "meanmax" else embed_dim


def pool(batch: TokenBatch, pooling: str) -> torch.Tensor:
    """The pooled vector [B, D] (or [B, 2D] for meanmax) of a token batch, read from its shared quantities."""
    if pooling == "cls":
        if batch.cls is None:
            raise ConfigError("pooling='cls': this batch has no prefix tokens; use pooling='mean'")
        return batch.cls
    if pooling == "mean":
        return batch.mean
    if pooling == "max":
        return batch.max
    if pooling == "meanmax":
        return torch.cat([batch.mean, batch.max], dim=-1)
    raise ConfigError(f"pooling={pooling!r} is not known: choose one of {', '.join(POOLINGS[1:])}")


@dataclass
class LabelledSplit:
    """One whole split as a head fitted without gradients reads it; HeadBank builds it from a SplitData.

    batches: a fresh pass over the split, yielding (positions [n] into the split, TokenBatch);
    labels: [N, C] uint8 targets in split order; multilabel: the task (sigmoid per class, or softmax).
    """

    batches: Callable[[], Iterable[tuple[np.ndarray, TokenBatch]]]
    labels: np.ndarray
    multilabel: bool
    _pooled: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def pooled(self, pooling: str) -> np.ndarray:
        """Every clip's pooled vector [N, D] (float32, split order), read once per pooling and shared by heads."""
        if pooling not in self._pooled:
            features = None
            with torch.no_grad():
                for positions, batch in self.batches():
                    values = pool(batch, pooling).float().cpu().numpy()
                    if features is None:
                        features = np.zeros((len(self.labels), values.shape[1]), dtype=np.float32)
                    features[positions] = values
            self._pooled[pooling] = features
        return self._pooled[pooling]


class LinearHead(ProbeHead):
    """One linear layer on the pooled vector (the paper's `linear` baseline with pooling="auto")."""

    kind = "linear"

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        has_prefix: bool = False,
        pooling: str = "auto",
        generator: torch.Generator | None = None,
    ):
        super().__init__(num_classes, embed_dim, has_prefix)
        self.pooling = resolve_pooling(pooling, has_prefix)
        self._options = {"pooling": self.pooling}
        self.fc = make_linear(pooled_width(self.pooling, embed_dim), num_classes, True, generator)

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        self._check_dim(batch)
        return self.fc(pool(batch, self.pooling))


class MLPHead(ProbeHead):
    """Pooled vector -> Linear(hidden) -> GELU -> dropout -> Linear(C).

    hidden defaults to 512, the single hidden layer MARBLE's probe uses: for D = 768 and C = 10 that is ~0.4 M
    parameters, between linear (7.7 k) and mhca (1.2 M). dropout defaults to 0 because dropout draws from the global
    RNG, which would make a head trained in a bank differ from the same head trained alone.
    """

    kind = "mlp"

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        has_prefix: bool = False,
        pooling: str = "auto",
        hidden: int = 512,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__(num_classes, embed_dim, has_prefix)
        if hidden < 1:
            raise ConfigError(f"mlp head: hidden={hidden} must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"mlp head: dropout={dropout} must be in [0, 1)")
        self.pooling = resolve_pooling(pooling, has_prefix)
        self._options = {"pooling": self.pooling, "hidden": hidden, "dropout": dropout}
        self.fc1 = make_linear(pooled_width(self.pooling, embed_dim), hidden, True, generator)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = make_linear(hidden, num_classes, True, generator)

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        self._check_dim(batch)
        return self.fc2(self.drop(self.act(self.fc1(pool(batch, self.pooling)))))
