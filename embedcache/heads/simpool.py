"""`simpool`: SimPool attention pooling (Psomas et al., ICCV 2023), the global average as the query, then one
linear layer."""

from __future__ import annotations

import torch
from torch import nn

from embedcache.errors import ConfigError
from embedcache.heads.base import ProbeHead, TokenBatch, make_linear

# SimPool's epsilon: LayerNorm's, and the shift that keeps values positive before the power gamma.
EPS = 1e-6


class SimPoolHead(ProbeHead):
    """SimPool: Psomas, Kakogeorgiou, Karantzalos, Avrithis, "Keep It SimPool: Who Said Supervised Transformers
    Suffer from Attention Deficit?", ICCV 2023 (arXiv 2309.06891; code billpsomas/simpool).

    The real tokens pass a LayerNorm (eps 1e-6, affine): these are the keys and the values (no value projection).
    The query is the global average of the tokens; one head, logits scaled by D^-1/2, softmax over the real tokens;
    the pooled vector is the attention-weighted average of the normalised tokens, then Linear(D, C).

    projections=True (default) is the official module, as SimPool's code and EP's SimPool probe build it: query
    W_q u with u the average of the raw tokens, keys W_k LN(x_t), W_q and W_k D x D without bias. The
    configuration "Unmute the Patch Tokens" used is not known, so this follows the original. projections=False is
    the parameter-free form (query: the average of the normalised tokens, no W_q, W_k): its attention follows the
    average token, so it weights the background, not a short event (tests/test_heads_pooling.py measures it no
    better than mean pooling on planted events). `gamma` (None: off, the official default and EP's setting) pools
    values^gamma and takes the 1/gamma power, the values shifted by their minimum minus 1e-6 to be positive, plus a
    learnable scalar beta (init 0); SimPool suggests 2 for convolutional networks, and its self-supervised ViT
    recipe uses 1.25 with beta. The official code shifts by the minimum over the whole batch; here it is each
    clip's minimum over its real tokens, so a clip's vector never depends on the clips it is batched with.
    Parameters: 2 D^2 + 2 D + D C + C (1,586,447 for D = 768, C = 527); without projections 2 D + D C + C
    (406,799); plus 1 with gamma.
    """

    kind = "simpool"

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        has_prefix: bool = False,
        projections: bool = True,
        gamma: float | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__(num_classes, embed_dim, has_prefix)
        if gamma is not None and not (isinstance(gamma, int | float) and gamma > 0):
            raise ConfigError(f"simpool head: gamma={gamma!r} must be a number > 0, or null (off)")
        self.projections = bool(projections)
        self.gamma = None if gamma is None else float(gamma)
        self._options = {"projections": self.projections, "gamma": self.gamma}
        self.norm = nn.LayerNorm(embed_dim, eps=EPS)
        if self.projections:
            self.query = make_linear(embed_dim, embed_dim, False, generator)
            self.key = make_linear(embed_dim, embed_dim, False, generator)
        if self.gamma is not None:
            self.beta = nn.Parameter(torch.zeros(()))
        self.fc = make_linear(embed_dim, num_classes, True, generator)

    def attend(self, batch: TokenBatch) -> torch.Tensor:
        """The pooled vector [B, D]; zeros for a clip with no real token."""
        self._check_dim(batch)
        real = batch.mask.unsqueeze(-1)
        normed = torch.where(real, self.norm(batch.clean), 0.0)  # [B, T, D]; LN(padding) would be its bias
        if self.projections:
            # (W_q u) . (W_k k_t) = ((W_q u) W_k) . k_t: one D x D product per clip instead of one per token.
            query = self.query(batch.mean.to(normed.dtype)) @ self.key.weight.to(normed.dtype)
        else:
            query = normed.sum(dim=1) / batch.counts.clamp(min=1).unsqueeze(-1).to(normed.dtype)
        scores = torch.einsum("bd,btd->bt", query, normed) * self.embed_dim**-0.5
        # A clip with no real token would give softmax over nothing (NaN): let it see its zeroed padding, then zero it.
        visible = batch.mask | batch.has_tokens.logical_not().unsqueeze(-1)
        weights = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)
        if self.gamma is None:
            pooled = torch.einsum("bt,btd->bd", weights, normed)
        else:
            lowest = normed.masked_fill(~real, float("inf")).amin(dim=(1, 2), keepdim=True)
            # Padding is 1, not 0: 0 ** (gamma - 1) would turn its zero gradient into NaN for gamma < 1.
            shifted = torch.where(real, normed - lowest + EPS, 1.0) ** self.gamma
            pooled = torch.einsum("bt,btd->bd", weights, shifted) ** (1.0 / self.gamma) + self.beta
        return torch.where(batch.has_tokens.unsqueeze(-1), pooled, torch.zeros_like(pooled))

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        return self.fc(self.attend(batch))
