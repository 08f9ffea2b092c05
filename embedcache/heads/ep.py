"""`ep`: efficient probing, multi-query cross-attention with no key projection and a value projection split across
the queries (Psomas et al., ICLR 2026)."""

from __future__ import annotations

import torch
from torch import nn

from embedcache.errors import ConfigError
from embedcache.heads.base import ProbeHead, TokenBatch, make_linear


def default_num_queries(width: int) -> int:
    """EP's 32 queries when they divide the value width, else the largest of 16, 8, 4, 2, 1 that does."""
    return next(queries for queries in (32, 16, 8, 4, 2, 1) if width % queries == 0)


class EfficientProbingHead(ProbeHead):
    """Efficient probing (EP): Psomas et al., "Attention, Please! Revisiting Attentive Probing Through the Lens of
    Efficiency", ICLR 2026 (arXiv 2506.10178; code billpsomas/efficient-probing).

    Q learnable queries [Q, D] (init randn * 0.02) attend over the raw tokens, which serve as keys with no key
    projection (one head, logits scaled by D^-1/2; padding masked). One value projection W_v: D -> D / d_out without
    bias is split across the queries: query q pools its own slice of D / (d_out Q) value channels with its own
    attention, and the Q slices are concatenated into one [B, D / d_out] vector, then Linear(D / d_out, C).
    The "Unmute the Patch Tokens" configuration of ep is not known, so the defaults are EP's own: Q = 32
    (the largest of 16, 8, 4, 2, 1 dividing D / d_out when 32 does not), d_out = 1, one head, no biases in the
    attention. EP's code puts a non-affine BatchNorm before the classifier of every probe it compares, linear
    included (MAE's linear-probing recipe); embedcache's heads have none, so neither has this one.
    Parameters: D^2 / d_out + Q D + (D / d_out) C + C (1,019,663 for D = 768, C = 527, Q = 32, d_out = 1).
    """

    kind = "ep"

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        has_prefix: bool = False,
        num_queries: int | None = None,
        d_out: int = 1,
        generator: torch.Generator | None = None,
    ):
        super().__init__(num_classes, embed_dim, has_prefix)
        if d_out < 1 or embed_dim % d_out:
            raise ConfigError(f"ep head: d_out={d_out} must be >= 1 and divide embed_dim={embed_dim}")
        width = embed_dim // d_out
        num_queries = default_num_queries(width) if num_queries is None else num_queries
        if num_queries < 1 or width % num_queries:
            raise ConfigError(
                f"ep head: num_queries={num_queries} must be >= 1 and divide the value width "
                f"embed_dim / d_out = {width}; choose a divisor, e.g. {default_num_queries(width)}"
            )
        self.num_queries = num_queries
        self.d_out = d_out
        self.width = width
        self._options = {"num_queries": num_queries, "d_out": d_out}
        self.queries = nn.Parameter(torch.randn(num_queries, embed_dim, generator=generator) * 0.02)
        self.value = make_linear(embed_dim, width, False, generator)
        self.fc = make_linear(width, num_classes, True, generator)

    def attend(self, batch: TokenBatch) -> torch.Tensor:
        """The pooled vector [B, D / d_out]: each query's attention pools its own slice of the value projection.

        Computed in token space, as `attentive`: with no bias, sum_t a_qt (W_v^q x_t) = W_v^q (sum_t a_qt x_t), so
        the projection touches Q context vectors per clip instead of all T tokens.
        """
        self._check_dim(batch)
        tokens = batch.clean  # [B, T, D]; padding is zero
        queries = self.queries.to(tokens.dtype) * self.embed_dim**-0.5
        scores = torch.einsum("qd,btd->bqt", queries, tokens)  # [B, Q, T]
        # A clip with no real token would give softmax over nothing (NaN): let it see its zeroed padding, then zero it.
        visible = batch.mask | batch.has_tokens.logical_not().unsqueeze(-1)
        scores = scores.masked_fill(~visible[:, None, :], float("-inf"))
        context = torch.einsum("bqt,btd->bqd", scores.softmax(dim=-1), tokens)  # [B, Q, D]
        value = self.value.weight.view(self.num_queries, self.width // self.num_queries, self.embed_dim)
        pooled = torch.einsum("bqd,qwd->bqw", context, value.to(tokens.dtype)).reshape(tokens.shape[0], self.width)
        return torch.where(batch.has_tokens.unsqueeze(-1), pooled, torch.zeros_like(pooled))

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        return self.fc(self.attend(batch))
