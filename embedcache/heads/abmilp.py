"""`abmilp`: attention-based multiple-instance pooling (Ilse et al. 2018), the selective aggregation of "Beyond
[cls]" (ICCV 2025): a scalar score per token, softmax over the tokens, a weighted average, then one linear layer."""

from __future__ import annotations

import torch

from embedcache.errors import ConfigError
from embedcache.heads.base import ProbeHead, TokenBatch, make_linear

SCORERS = ("gated", "tanh", "linear")


class ABMILPHead(ProbeHead):
    """AbMILP: Ilse, Tomczak, Welling, "Attention-based Deep Multiple Instance Learning", ICML 2018, used as a
    probe in Przewięźlikowski et al., "Beyond [cls]: Exploring the true potential of Masked Image Modeling
    representations", ICCV 2025 (arXiv 2412.03215; code gmum/beyond_cls).

    Each real token x_t gets a score s_t; a_t = softmax over the real tokens; the pooled vector sum_t a_t x_t (the
    raw tokens, no value projection) goes to Linear(D, C). scorer="gated" (default) is Ilse et al.'s gated
    attention, s_t = w . (tanh(V x_t) * sigmoid(U x_t)) with V, U: D -> L and w: L -> 1, each with a bias as in
    their code, L = `hidden` = 128 as there; scorer="tanh" is their plain attention w . tanh(V x_t); scorer="linear"
    is the recipe in the Beyond [cls] README (a depth-1 scorer, s_t = w . x_t + b). "Unmute the Patch Tokens" does
    not say which form it used. Beyond [cls] puts a non-affine BatchNorm before its classifier (MAE's linear-probe
    recipe, for every probe); embedcache's heads have none.
    Parameters: gated 2 (L D + L) + L + 1 + D C + C (602,256 for D = 768, C = 527, L = 128); tanh L D + 2 L + 1 +
    D C + C; linear D + 1 + D C + C.
    """

    kind = "abmilp"

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        has_prefix: bool = False,
        scorer: str = "gated",
        hidden: int = 128,
        generator: torch.Generator | None = None,
    ):
        super().__init__(num_classes, embed_dim, has_prefix)
        if scorer not in SCORERS:
            raise ConfigError(f"abmilp head: scorer={scorer!r} is not known: choose one of {', '.join(SCORERS)}")
        if hidden < 1:
            raise ConfigError(f"abmilp head: hidden={hidden} must be >= 1")
        self.scorer = scorer
        self.hidden = hidden
        self._options = {"scorer": scorer, "hidden": hidden}
        if scorer == "linear":
            self.attention_w = make_linear(embed_dim, 1, True, generator)
        else:
            self.attention_v = make_linear(embed_dim, hidden, True, generator)
            if scorer == "gated":
                self.attention_u = make_linear(embed_dim, hidden, True, generator)
            self.attention_w = make_linear(hidden, 1, True, generator)
        self.fc = make_linear(embed_dim, num_classes, True, generator)

    def token_scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """The score s_t of every token [B, T] for tokens [B, T, D] (before the softmax)."""
        if self.scorer == "linear":
            return self.attention_w(tokens).squeeze(-1)
        hidden = torch.tanh(self.attention_v(tokens))
        if self.scorer == "gated":
            hidden = hidden * torch.sigmoid(self.attention_u(tokens))
        return self.attention_w(hidden).squeeze(-1)

    def attend(self, batch: TokenBatch) -> torch.Tensor:
        """The pooled vector [B, D]; zeros for a clip with no real token."""
        self._check_dim(batch)
        tokens = batch.clean  # [B, T, D]; padding is zero
        scores = self.token_scores(tokens)
        # A clip with no real token would give softmax over nothing (NaN): let it see its zeroed padding, then zero it.
        visible = batch.mask | batch.has_tokens.logical_not().unsqueeze(-1)
        weights = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)
        pooled = torch.einsum("bt,btd->bd", weights.to(tokens.dtype), tokens)
        return torch.where(batch.has_tokens.unsqueeze(-1), pooled, torch.zeros_like(pooled))

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        return self.fc(self.attend(batch))
