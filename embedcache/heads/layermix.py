"""`layermix`: learned softmax weights over the layers of a multi-layer store (SUPERB's weighted sum, Yang et al.,
2021) mix every chosen layer's tokens into one [B, T, D] batch, which feeds any pooling head (`inner`).

In a bank it reads a `LayerStack` (every chosen layer of the batch, stacked [B, L, T, D]) while single-layer heads
of the same bank read one layer's `TokenBatch`; the bank routes each head its input (train.HeadBank).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch
from torch import nn

from embedcache.errors import ConfigError
from embedcache.heads.base import ProbeHead, TokenBatch


class LayerStack:
    """Every chosen layer of one batch: one TokenBatch per layer (shared with the heads that read that layer alone),
    stacked on first use. tokens: [B, L, T, D] with padding zeroed; prefix: [B, L, P, D] or None; mask: [B, T]."""

    def __init__(self, batches: Sequence[TokenBatch]):
        if not batches:
            raise ValueError("LayerStack: give at least one layer's TokenBatch")
        self.batches = list(batches)
        self.mask = self.batches[0].mask

    @property
    def num_layers(self) -> int:
        return len(self.batches)

    @property
    def embed_dim(self) -> int:
        return self.batches[0].embed_dim

    @cached_property
    def tokens(self) -> torch.Tensor:
        """[B, L, T, D], padding positions zero (so no padding value can leak into the mix)."""
        return torch.stack([batch.clean for batch in self.batches], dim=1)

    @cached_property
    def prefix(self) -> torch.Tensor | None:
        """[B, L, P, D], or None when the store has no prefix tokens."""
        if self.batches[0].prefix is None:
            return None
        return torch.stack([batch.prefix for batch in self.batches], dim=1)


class LayerMixHead(ProbeHead):
    """softmax(w) over L layers mixes their tokens (and prefix) into one TokenBatch for an inner head.

    inner: the head kind the mix feeds (linear, attentive, protobin, ...), built with `inner_options`; layers: the
    stored layers mixed, in the order of the stack the head reads (None: one layer, the batch given); the bank fills
    it with the layers of the data. layer_norm: normalise each layer's tokens over D (no affine) before mixing, as
    SUPERB's featurizer can. The weights start uniform (w = 0) and are parameters (`layer_logits`), saved with the
    head; `layer_weights()` gives softmax(w). Parameters: L + the inner head's.
    """

    kind = "layermix"

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        has_prefix: bool = False,
        inner: str = "linear",
        inner_options: dict | None = None,
        layers: Sequence[int] | None = None,
        layer_norm: bool = False,
        generator: torch.Generator | None = None,
    ):
        super().__init__(num_classes, embed_dim, has_prefix)
        from embedcache import heads as registry  # the registry imports this module

        if inner == self.kind:
            raise ConfigError("layermix head: inner='layermix' would mix twice; choose a pooling head, e.g. linear")
        if not isinstance(inner_options, dict | None):
            raise ConfigError(f"layermix head: inner_options {inner_options!r} is not a mapping of the inner head's "
                              "options")
        if layers is not None and (isinstance(layers, str | int) or not layers or
                                   not all(isinstance(v, int) and not isinstance(v, bool) for v in layers) or
                                   len(set(layers)) != len(layers)):
            raise ConfigError(f"layermix head: layers={layers!r} must be a list of distinct stored layer numbers")
        self.layers = None if layers is None else [int(value) for value in layers]
        self.inner = registry.create(inner, num_classes=num_classes, embed_dim=embed_dim, has_prefix=has_prefix,
                                     generator=generator, **(inner_options or {}))
        self.layer_norm = bool(layer_norm)
        self.layer_logits = nn.Parameter(torch.zeros(len(self.layers or [0])))
        self._options = {"inner": inner, "inner_options": dict(self.inner._options), "layers": self.layers,
                         "layer_norm": self.layer_norm}

    @property
    def num_layers(self) -> int:
        return self.layer_logits.shape[0]

    def layer_weights(self) -> torch.Tensor:
        """softmax(w) [L]: each layer's share of the mix."""
        return self.layer_logits.softmax(dim=0)

    def mix(self, batch: LayerStack | TokenBatch) -> TokenBatch:
        """The weighted sum of the stack's layers as one TokenBatch [B, T, D] (a TokenBatch is a stack of one)."""
        stack = LayerStack([batch]) if isinstance(batch, TokenBatch) else batch
        if stack.num_layers != self.num_layers:
            raise ConfigError(f"layermix head mixes {self.num_layers} layer(s) {self.layers} but the batch holds "
                              f"{stack.num_layers}; give it the layers it was trained on")
        if stack.embed_dim != self.embed_dim:
            self._check_dim(stack.batches[0])
        weights = self.layer_weights()
        tokens = self._normed(stack.tokens)
        mixed = torch.einsum("l,bltd->btd", weights.to(tokens.dtype), tokens)
        prefix = stack.prefix
        if prefix is not None:
            prefix = torch.einsum("l,blpd->bpd", weights.to(prefix.dtype), self._normed(prefix))
        return TokenBatch(mixed, stack.mask, prefix)

    def _normed(self, values: torch.Tensor) -> torch.Tensor:
        if not self.layer_norm:
            return values
        # A zeroed padding token stays zero: layer_norm of a zero vector is zero.
        return nn.functional.layer_norm(values, values.shape[-1:])

    def forward(self, batch: LayerStack | TokenBatch) -> torch.Tensor:
        return self.inner(self.mix(batch))

    def auxiliary_loss(self) -> torch.Tensor:
        return self.inner.auxiliary_loss()
