"""What every probe head reads (a masked token batch) and what every probe head offers (the ProbeHead base)."""

from __future__ import annotations

import abc
import itertools
import math
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from embedcache.errors import ConfigError

if TYPE_CHECKING:
    from embedcache.heads.pooled import LabelledSplit


class TokenBatch:
    """A batch of cached tokens with its validity mask, and the pooled quantities many heads share.

    tokens: [B, T, D] float; mask: [B, T] bool, True for a real token (None: all real);
    prefix: [B, P, D] (cls etc.) or None. Every derived quantity is computed on first use and cached, so a bank of
    heads reading the same batch pays for it once. Padding tokens never reach any derived quantity.
    codes: for an int8 store, the int8 codes [B, T, D] the tokens were dequantised from (token = codes x its
    positive scale), so a head can compute a cosine on them directly (the scale cancels); None otherwise.
    """

    def __init__(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
                 codes: torch.Tensor | None = None):
        if tokens.dim() != 3:
            raise ValueError(f"TokenBatch: tokens must be [B, T, D], got shape {tuple(tokens.shape)}")
        batch, length, dim = tokens.shape
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.bool, device=tokens.device)
        if mask.shape != (batch, length):
            raise ValueError(f"TokenBatch: mask must be [B, T] = {(batch, length)}, got {tuple(mask.shape)}")
        if prefix is not None and (prefix.dim() != 3 or prefix.shape[0] != batch or prefix.shape[2] != dim):
            raise ValueError(f"TokenBatch: prefix must be [B, P, D] with B={batch}, D={dim}, got {tuple(prefix.shape)}")
        if codes is not None and (codes.shape != tokens.shape or codes.dtype != torch.int8):
            raise ValueError(f"TokenBatch: codes must be int8 of the tokens' shape {tuple(tokens.shape)}, got "
                             f"{codes.dtype} {tuple(codes.shape)}")
        self.tokens = tokens
        self.mask = mask.to(torch.bool)
        self.prefix = prefix
        self.codes = codes

    @property
    def embed_dim(self) -> int:
        """D, the token width."""
        return self.tokens.shape[-1]

    @cached_property
    def counts(self) -> torch.Tensor:
        """Number of real tokens per clip [B] (long)."""
        return self.mask.sum(dim=1)

    @cached_property
    def has_tokens(self) -> torch.Tensor:
        """Whether a clip has at least one real token [B] (bool); all-padding rows pool to zeros."""
        return self.counts > 0

    @cached_property
    def clean(self) -> torch.Tensor:
        """Tokens with every padding position set to 0 [B, T, D], so no padding value (even inf/NaN) can leak."""
        if bool(self.mask.all()):
            return self.tokens
        return torch.where(self.mask.unsqueeze(-1), self.tokens, torch.zeros((), dtype=self.tokens.dtype,
                                                                             device=self.tokens.device))

    @cached_property
    def normalized(self) -> torch.Tensor:
        """L2-normalised tokens [B, T, D]; padding positions are zero vectors."""
        return nn.functional.normalize(self.clean, dim=-1)

    @cached_property
    def code_inverse_norms(self) -> torch.Tensor:
        """1 / ||codes|| per token [B, T] float32 (an all-zero token's codes give a zero cosine anyway); int8 only."""
        if self.codes is None:
            raise ValueError("TokenBatch: code_inverse_norms needs int8 codes (a batch from an int8 store)")
        return self.codes.float().square().sum(dim=-1).sqrt().clamp(min=1e-12).reciprocal()

    @cached_property
    def mean(self) -> torch.Tensor:
        """Mean over real tokens [B, D]; zeros for a clip with no real token."""
        total = self.clean.sum(dim=1)
        return total / self.counts.clamp(min=1).unsqueeze(-1).to(total.dtype)

    @cached_property
    def max(self) -> torch.Tensor:
        """Element-wise max over real tokens [B, D]; zeros for a clip with no real token."""
        return masked_max(self.tokens, self.mask)

    @cached_property
    def cls(self) -> torch.Tensor | None:
        """The first prefix token [B, D] (the cls token of encoders that have one), or None."""
        if self.prefix is None or self.prefix.shape[1] == 0:
            return None
        return self.prefix[:, 0]

    def step_mask(self, n_freq: int) -> torch.Tensor:
        """[B, n_time] bool: time steps (n_freq tokens each, time-major) holding at least one real token."""
        return self.mask.view(self.mask.shape[0], -1, n_freq).any(dim=2)

    def step_mean(self, n_freq: int) -> torch.Tensor:
        """[B, n_time, D]: each time step's tokens averaged over its real frequency tokens (zeros for padding)."""
        batch, length, dim = self.clean.shape
        counts = self.mask.view(batch, -1, n_freq).sum(dim=2, keepdim=True).clamp(min=1)
        return self.clean.view(batch, length // n_freq, n_freq, dim).sum(dim=2) / counts.to(self.clean.dtype)


def max_over_frequency(values: torch.Tensor, mask: torch.Tensor, n_freq: int) -> torch.Tensor:
    """Max over the frequency tokens of each time step: values [B, T, K] (time-major, T = n_time * n_freq) at
    positions where mask [B, T] is True -> [B, n_time, K]; 0 for a step with no real token."""
    batch, length, width = values.shape
    filled = values.masked_fill(mask.logical_not().unsqueeze(-1), -math.inf).view(batch, length // n_freq, n_freq,
                                                                                  width)
    best = filled.max(dim=2).values
    real = mask.view(batch, -1, n_freq).any(dim=2, keepdim=True)
    return torch.where(real, best, torch.zeros((), dtype=best.dtype, device=best.device))


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over dim 1 of values [B, T, K] at positions where mask [B, T] is True -> [B, K]; 0 where a row has none."""
    filled = values.masked_fill(mask.logical_not().unsqueeze(-1), -math.inf)
    best, _ = filled.max(dim=1)
    return torch.where(mask.any(dim=1, keepdim=True), best, torch.zeros((), dtype=best.dtype, device=best.device))


class ProbeHead(nn.Module, metaclass=abc.ABCMeta):
    """Base class: `forward(batch) -> logits [B, C]`, plus the plain-data config that rebuilds the head."""

    kind: str = "head"
    # False: the head has no optimiser parameters (knn, logreg). HeadBank then calls `fit_data` once instead of
    # training it by SGD, leaves it out of the optimiser and the summed loss, and its lr and weight decay mean nothing.
    uses_optimiser: ClassVar[bool] = True
    # Sound-event detection: a head that gives frames scores every token time step (`frame_logits`); one that also
    # trains on frames learns from per-step strong labels, the others from clip labels (weak), as in probe --task sed.
    gives_frames: ClassVar[bool] = False
    trains_on_frames: ClassVar[bool] = False

    def __init__(self, num_classes: int, embed_dim: int, has_prefix: bool = False):
        super().__init__()
        if num_classes < 1 or embed_dim < 1:
            raise ConfigError(
                f"{self.kind} head: num_classes={num_classes} and embed_dim={embed_dim} must both be >= 1"
            )
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.has_prefix = has_prefix
        self._options: dict = {}

    @property
    def config(self) -> dict:
        """Plain data that rebuilds this head with `heads.create(**config)` (random state excluded)."""
        return {
            "kind": self.kind,
            "num_classes": self.num_classes,
            "embed_dim": self.embed_dim,
            "has_prefix": self.has_prefix,
            **self._options,
        }

    @abc.abstractmethod
    def forward(self, batch: TokenBatch) -> torch.Tensor:
        """Logits [B, C] for a token batch."""

    def frame_logits(self, batch: TokenBatch, n_freq: int) -> torch.Tensor:
        """Logits [B, n_time, C] of every token time step (tokens time-major, n_freq per step); heads that give
        frames only."""
        raise NotImplementedError(f"{self.kind} head gives no frame scores; sound-event detection takes "
                                  "frame_linear or a prototype head")

    def auxiliary_loss(self) -> torch.Tensor:
        """A scalar added to the task loss; zero unless the head has a regulariser of its own."""
        reference = next(itertools.chain(self.parameters(), self.buffers()))  # knn, logreg: buffers only
        return reference.new_zeros(())

    def fit_data(self, train: LabelledSplit, valid: LabelledSplit | None) -> None:
        """Fit a head that takes no optimiser from whole splits (valid: to choose its own settings, or None).

        Its fitted state must live in registered buffers, so that state_dict / load_state_dict carry it.
        """
        raise NotImplementedError(f"{self.kind} head is trained by gradient descent; HeadBank does not call fit_data")

    def num_parameters(self) -> int:
        """Number of trainable parameter values."""
        return sum(parameter.numel() for parameter in self.parameters() if parameter.requires_grad)

    def _check_dim(self, batch: TokenBatch) -> None:
        if batch.embed_dim != self.embed_dim:
            raise ConfigError(
                f"{self.kind} head was built for embed_dim={self.embed_dim} but the tokens have D={batch.embed_dim}; "
                "build the head with the store's embed_dim"
            )


def init_linear(layer: nn.Linear, generator: torch.Generator | None) -> nn.Linear:
    """PyTorch's default nn.Linear init (kaiming-uniform weight, uniform bias), drawn from `generator`."""
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    if layer.bias is not None:
        bound = 1.0 / math.sqrt(layer.in_features)
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer


def make_linear(in_features: int, out_features: int, bias: bool, generator: torch.Generator | None) -> nn.Linear:
    """An nn.Linear initialised only from `generator`, leaving the global RNG untouched."""
    # skip_init builds on the meta device, so construction draws nothing from the global RNG.
    layer = nn.utils.skip_init(nn.Linear, in_features, out_features, bias=bias)
    return init_linear(layer, generator)
