"""`knn`: a weighted k-nearest-neighbour vote on pooled vectors, as DINO's k-NN evaluation; fitted, not trained."""

from __future__ import annotations

import torch
from torch import nn

from embedcache.errors import ConfigError
from embedcache.heads.base import ProbeHead, TokenBatch
from embedcache.heads.pooled import LabelledSplit, pool, pooled_width, resolve_pooling

# Votes are clipped to [VOTE_FLOOR, 1 - VOTE_FLOOR] before the logit / log, so that the logits stay finite.
VOTE_FLOOR = 1e-12


def vote_logits(votes: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Logits [B, C] whose sigmoid (multi-label) or softmax (multi-class) gives the votes [B, C] in [0, 1] back."""
    clipped = votes.clamp(VOTE_FLOOR, 1.0 - VOTE_FLOOR)
    return torch.logit(clipped) if multilabel else clipped.log()


class KNNHead(ProbeHead):
    """Weighted k-NN as DINO evaluates features: Caron et al., "Emerging Properties in Self-Supervised Vision
    Transformers", ICCV 2021 (the weighted vote of Wu et al., "Unsupervised Feature Learning via Non-Parametric
    Instance Discrimination", CVPR 2018).

    `fit_data` stores every training clip's pooled vector and labels (buffers neighbours_ [N, D] float32 and
    neighbour_labels_ [N, C] uint8); nothing is trained, so lr and weight decay are ignored (a probe grid gives the
    head one configuration). A clip's k nearest training clips by cosine similarity s_i vote with weights
    w_i = exp(s_i / temperature); its score for class c is sum_i w_i y_ic / sum_i w_i: per class on multi-label data
    (the weighted vote per class), a distribution over the classes on multi-class data. The head returns the logit
    (or log) of that score, so the bank's sigmoid (or softmax) gives it back. Defaults are DINO's: k = 20,
    temperature = 0.07; k is capped at N. Pooling as `linear` (cls if the encoder has one, else the mean).
    Computed in float64. Parameters: 0 (it keeps N (D + C) values).
    """

    kind = "knn"
    uses_optimiser = False

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        has_prefix: bool = False,
        pooling: str = "auto",
        k: int = 20,
        temperature: float = 0.07,
        generator: torch.Generator | None = None,  # accepted like every head's; a k-NN draws nothing
    ):
        super().__init__(num_classes, embed_dim, has_prefix)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"knn head: k={k!r} must be a whole number >= 1")
        if not isinstance(temperature, int | float) or not temperature > 0:
            raise ConfigError(f"knn head: temperature={temperature!r} must be a number > 0")
        self.pooling = resolve_pooling(pooling, has_prefix)
        self.k = k
        self.temperature = float(temperature)
        self._options = {"pooling": self.pooling, "k": k, "temperature": self.temperature}
        width = pooled_width(self.pooling, embed_dim)
        self.register_buffer("neighbours_", torch.zeros(0, width))
        self.register_buffer("neighbour_labels_", torch.zeros(0, num_classes, dtype=torch.uint8))
        self.register_buffer("multilabel_", torch.tensor(True))

    def fit_data(self, train: LabelledSplit, valid: LabelledSplit | None) -> None:
        """Keep the training split's pooled vectors and labels (valid is not needed)."""
        device = self.neighbours_.device
        self.neighbours_ = torch.from_numpy(train.pooled(self.pooling)).to(device)
        self.neighbour_labels_ = torch.from_numpy(train.labels.astype("uint8")).to(device)
        self.multilabel_ = torch.tensor(bool(train.multilabel), device=device)

    def votes(self, batch: TokenBatch) -> torch.Tensor:
        """The weighted vote [B, C] (float64) of each clip's k nearest training clips."""
        self._check_dim(batch)
        if self.neighbours_.shape[0] == 0:
            raise ConfigError("knn head: not fitted; HeadBank.fit calls fit_data with the training split")
        with torch.autocast(batch.tokens.device.type, enabled=False):
            queries = nn.functional.normalize(pool(batch, self.pooling).double(), dim=-1)
            keys = nn.functional.normalize(self.neighbours_.double(), dim=-1)
            nearest, where = torch.matmul(queries, keys.t()).topk(min(self.k, keys.shape[0]), dim=1)  # [B, k]
            # exp(s / T) / sum exp(s / T): softmax is the same normalised weight, without overflow.
            weights = torch.softmax(nearest / self.temperature, dim=1)
            return torch.einsum("bk,bkc->bc", weights, self.neighbour_labels_[where].double())

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        return vote_logits(self.votes(batch), bool(self.multilabel_)).float()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The stored neighbours have the training split's size, unknown when the head is built from its config.
        for name in ("neighbours_", "neighbour_labels_"):
            if prefix + name in state_dict:
                current = getattr(self, name)
                setattr(self, name, current.new_empty(state_dict[prefix + name].shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
