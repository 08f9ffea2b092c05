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
        """The pooled vector [B, D]: queries attend over the real tokens, averaged over queries."""
        self._check_dim(batch)
        tokens = self.norm(batch.clean)  # [B, T, D]; padding is zero, so K and V stay finite there
        size, length, dim = tokens.shape
        head_dim = dim // self.num_heads
        keys = self.key(tokens).view(size, length, self.num_heads, head_dim).transpose(1, 2)  # [B, H, T, d]
        values = self.value(tokens).view(size, length, self.num_heads, head_dim).transpose(1, 2)
        queries = self.queries.view(1, self.num_queries, self.num_heads, head_dim).transpose(1, 2)
        queries = queries.expand(size, -1, -1, -1).to(keys.dtype)  # [B, H, Q, d]
        # A clip with no real token would give softmax over nothing (NaN): let it see its zeroed padding, then zero it.
        visible = batch.mask | batch.has_tokens.logical_not().unsqueeze(-1)
        attended = nn.functional.scaled_dot_product_attention(
            queries, keys, values, attn_mask=visible[:, None, None, :]
        )  # [B, H, Q, d]
        pooled = attended.transpose(1, 2).reshape(size, self.num_queries, dim).mean(dim=1)
        return torch.where(batch.has_tokens.unsqueeze(-1), pooled, torch.zeros_like(pooled))

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        return self.fc(self.attend(batch))
