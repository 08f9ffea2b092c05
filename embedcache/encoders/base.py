"""The encoder contract: a waveform batch in, patch tokens per layer out, on a time x frequency grid."""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class EncoderOutput:
    """What one forward pass returns.

    layers: layer index -> patch tokens [B, T, D], T = n_time * n_freq in time-major order (t * n_freq + f).
    prefix: layer index -> prefix tokens (cls, distillation, ...) [B, P, D]; empty when the encoder has none.
    grid: (n_time, n_freq) of the patch tokens.
    """

    layers: dict[int, torch.Tensor]
    prefix: dict[int, torch.Tensor]
    grid: tuple[int, int]


class Encoder(torch.nn.Module, metaclass=abc.ABCMeta):
    """Base class for frozen encoders.

    Subclasses set `name`, `sample_rate`, `num_layers`, `embed_dim`, `num_prefix`, and implement `config`,
    `frontend_config`, `token_grid` and `forward`. Layer indices are 0-based block outputs (0 .. num_layers - 1);
    callers resolve "last"/negative indices with `resolve_layers` first.

    Clip lengths: `forward` takes a zero-padded batch and each clip's real length (`lengths`). An encoder that sets
    `supports_lengths = True` promises that clip b's first `valid_tokens(lengths[b], S)` tokens equal the tokens of
    that clip run alone through the official pipeline, whatever its batch mates; the rest are padding. Encoders that
    do not (user plug-ins) are given batches of equal-length clips only, so nothing is padded for them.
    """

    name: str = "encoder"
    sample_rate: int = 16000
    num_layers: int = 1
    embed_dim: int = 0
    num_prefix: int = 0
    supports_lengths: bool = False

    @abc.abstractmethod
    def config(self) -> dict:
        """JSON-able settings that rebuild this encoder (recorded in the store's provenance)."""

    @abc.abstractmethod
    def frontend_config(self) -> dict:
        """JSON-able description of the feature front end (recorded in the store's provenance)."""

    @abc.abstractmethod
    def token_grid(self, num_samples: int) -> tuple[int, int]:
        """(n_time, n_freq) of the patch tokens for a batch padded to `num_samples` samples."""

    @abc.abstractmethod
    def forward(
        self, wave: torch.Tensor, layers: Sequence[int], lengths: torch.Tensor | None = None
    ) -> EncoderOutput:
        """Tokens for a waveform batch [B, S] at `sample_rate` (clip b is wave[b, :lengths[b]]) for `layers`."""

    def time_steps(self) -> dict | None:
        """Which samples each token time step covers, as TimeSteps.to_dict() (embedcache.events): start, span and
        stride in samples; recorded in the store so strong labels map onto the grid. None: not known (plug-ins)."""
        return None

    def max_input_samples(self) -> int | None:
        """The most samples one clip's tokens can cover: a fixed-length model crops longer clips to this
        (official semantics); None when any length is encoded whole (attended or chunked)."""
        return None

    def min_samples(self) -> int:
        """The fewest samples that give at least one token."""
        for num_samples in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768):
            if self.token_grid(num_samples)[0] >= 1 and self.valid_tokens(num_samples, num_samples) >= 1:
                low = num_samples // 2
                while low + 1 < num_samples:  # bisect between the last too-short and the first long-enough length
                    mid = (low + num_samples) // 2
                    if self.token_grid(mid)[0] >= 1 and self.valid_tokens(mid, mid) >= 1:
                        num_samples = mid
                    else:
                        low = mid
                return num_samples
        raise ValueError(f"{self.name}: no clip up to 2 s gives a token")

    def clip_semantics(self) -> dict:
        """How this encoder fits a clip's length, as its official pipeline does (recorded in the provenance).

        Keys: length ("fixed" or "any"), padding (where, value, and whether before normalisation), crop, chunking,
        mask (whether padded positions are kept out of attention), batching.
        """
        return {
            "length": "any",
            "padding": "none: batches hold equal-length clips only (the encoder takes no real lengths)",
            "crop": "none",
            "chunking": "none",
            "mask": "not needed (no padding)",
        }

    def valid_tokens(self, num_real: int, num_total: int) -> int:
        """How many leading (time-major) tokens of a clip of `num_real` samples, in a batch padded to `num_total`,
        carry real audio: every time step that overlaps real samples counts."""
        n_time, n_freq = self.token_grid(num_total)
        if num_real >= num_total:
            return n_time * n_freq
        return min(n_time, math.ceil(n_time * num_real / num_total)) * n_freq


def resolve_layers(spec: str | Sequence[int], num_layers: int) -> list[int]:
    """Turn "last", "all", "-1,-4" or a list of ints into sorted, unique, non-negative layer indices."""
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "last":
            return [num_layers - 1]
        if text == "all":
            return list(range(num_layers))
        try:
            items = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ValueError(
                f"--layers {spec!r}: use 'last', 'all' or comma-separated integers like '-1,-4'"
            ) from None
    else:
        items = [int(i) for i in spec]
    if not items:
        raise ValueError("--layers is empty: use 'last', 'all' or integers like '-1,-4'")
    resolved = set()
    for index in items:
        absolute = index + num_layers if index < 0 else index
        if not 0 <= absolute < num_layers:
            raise ValueError(f"--layers: layer {index} does not exist; this encoder has layers 0..{num_layers - 1}")
        resolved.add(absolute)
    return sorted(resolved)
