"""`attentive` (mhca): learnable queries cross-attend to all tokens, as in the AIM / V-JEPA attentive probes."""

from __future__ import annotations

import torch
from torch import nn

from embedcache.errors import ConfigError
from embedcache.heads.base import ProbeHead, TokenBatch, make_linear


def default_num_heads(embed_dim: int) -> int:
    """The largest of 12, 8, 4, 2, 1 that divides D (12 for ViT-B's 768)."""
    return next(heads for heads in (12, 8, 4, 2, 1) if embed_dim % heads == 0)


class AttentiveHead(ProbeHead):
    """Multi-head cross-attention pooling, then one linear layer.

    Queries [Q, D] (init randn * 0.02) attend over the real tokens through K and V projections D -> D without bias
    (no query projection: the queries are learned directly), with `num_heads` heads; padding tokens are excluded by
    the attention mask. The Q attended vectors are averaged (as AIM's and Bird-MAE's `average_pool`) into one [B, D]
    vector, then Linear(D, C). `token_norm` adds a LayerNorm on the tokens before K and V. Parameters:
    2 D^2 + Q D + D C + C (+ 2 D with token_norm), 1,188,106 for D = 768, C = 10, Q = 1.
    """

    kind = "attentive"

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        has_prefix: bool = False,
        num_queries: int = 1,
        num_heads: int | None = None,
        token_norm: bool = False,
        generator: torch.Generator | None = None,
    ):
        super().__init__(num_classes, embed_dim, has_prefix)
        num_heads = default_num_heads(embed_dim) if num_heads is None else num_heads
        if num_queries < 1:
            raise ConfigError(f"attentive head: num_queries={num_queries} must be >= 1")
        if num_heads < 1 or embed_dim % num_heads:
            raise ConfigError(f"attentive head: num_heads={num_heads} must divide embed_dim={embed_dim}")
        self.num_queries = num_queries
        self.num_heads = num_heads
        self._options = {"num_queries": num_queries, "num_heads": num_heads, "token_norm": token_norm}
        self.norm = nn.LayerNorm(embed_dim) if token_norm else nn.Identity()
        self.key = make_linear(embed_dim, embed_dim, False, generator)
        self.value = make_linear(embed_dim, embed_dim, False, generator)
        self.queries = nn.Parameter(torch.randn(num_queries, embed_dim, generator=generator) * 0.02)
        self.fc = make_linear(embed_dim, num_classes, True, generator)

    def attend(self, batch: TokenBatch) -> torch.Tensor:
        """The pooled vector [B, D]: queries attend over the real tokens, averaged over queries.

        Same math as projecting every token through K and V, computed in token space instead: with no biases,
        q . (W_k x) = (W_k^T q) . x and sum_t a_t W_v x_t = W_v (sum_t a_t x_t), so the D x D projections touch
        H*Q vectors per clip instead of all T tokens (about D / (H*Q) times fewer multiply-adds).
        """
        self._check_dim(batch)
        tokens = self.norm(batch.clean)  # [B, T, D]; padding is zero
        dim = tokens.shape[-1]
        head_dim = dim // self.num_heads
        key_weight = self.key.weight.view(self.num_heads, head_dim, dim).to(tokens.dtype)  # [H, d, D]
        value_weight = self.value.weight.view(self.num_heads, head_dim, dim).to(tokens.dtype)
        queries = self.queries.view(self.num_queries, self.num_heads, head_dim).transpose(0, 1).to(tokens.dtype)
        token_queries = torch.einsum("hqd,hdD->hqD", queries, key_weight) / head_dim**0.5  # [H, Q, D]
        scores = torch.einsum("hqD,btD->bhqt", token_queries, tokens)  # [B, H, Q, T]
        # A clip with no real token would give softmax over nothing (NaN): let it see its zeroed padding, then zero it.
        visible = batch.mask | batch.has_tokens.logical_not().unsqueeze(-1)
        scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
        weights = scores.softmax(dim=-1)
        context = torch.einsum("bhqt,btD->bhqD", weights, tokens)  # [B, H, Q, D]
        attended = torch.einsum("bhqD,hdD->bqhd", context, value_weight)  # [B, Q, H, d]
        pooled = attended.reshape(tokens.shape[0], self.num_queries, dim).mean(dim=1)
        return torch.where(batch.has_tokens.unsqueeze(-1), pooled, torch.zeros_like(pooled))

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        return self.fc(self.attend(batch))
