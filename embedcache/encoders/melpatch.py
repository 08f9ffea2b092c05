"""`melpatch`: log-mel patches flattened into tokens; no weights, a real and deterministic baseline."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchaudio

from embedcache.encoders.base import Encoder, EncoderOutput
from embedcache.errors import ConfigError
from embedcache.events import TimeSteps


class MelPatch(Encoder):
    """Log-mel spectrogram cut into non-overlapping (patch_time x patch_freq) patches, each one token.

    Token (t, f) holds the log-mel values of frames [t*pt, (t+1)*pt) and bins [f*pf, (f+1)*pf),
    flattened time-major inside the patch, so D = pt * pf. One "layer" (index 0).
    """

    name = "melpatch"
    num_layers = 1
    num_prefix = 0
    supports_lengths = True

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 400,
        hop_length: int = 160,
        n_mels: int = 64,
        patch_time: int = 16,
        patch_freq: int = 16,
        log_offset: float = 1e-6,
    ):
        super().__init__()
        if n_mels % patch_freq:
            raise ConfigError(f"melpatch: n_mels={n_mels} must be a multiple of patch_freq={patch_freq}")
        self.sample_rate = sample_rate
        self.n_fft, self.hop_length, self.n_mels = n_fft, hop_length, n_mels
        self.patch_time, self.patch_freq = patch_time, patch_freq
        self.log_offset = log_offset
        self.embed_dim = patch_time * patch_freq
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, center=True, power=2.0
        )

    def config(self) -> dict:
        return {
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
            "patch_time": self.patch_time,
            "patch_freq": self.patch_freq,
            "log_offset": self.log_offset,
        }

    def frontend_config(self) -> dict:
        return {
            "kind": "log-mel",
            "implementation": "torchaudio.transforms.MelSpectrogram",
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
            "window": "hann",
            "center": True,
            "power": 2.0,
            "log": f"ln(mel + {self.log_offset})",
        }

    def clip_semantics(self) -> dict:
        return {
            "length": "any",
            "padding": "log-mel of each clip's real samples, zero-padded to the longest clip in the batch",
            "crop": "none",
            "chunking": "none",
            "mask": "not needed (each token holds only its own patch)",
        }

    def valid_tokens(self, num_real: int, num_total: int) -> int:
        """The tokens of the clip alone (whole patches of its own log-mel)."""
        n_time, n_freq = self.token_grid(num_total)
        return min(n_time, self.token_grid(num_real)[0]) * n_freq

    def time_steps(self) -> dict:
        """A step is one patch of `patch_time` centred STFT frames (n_fft samples each)."""
        return TimeSteps.of_patches(-(self.n_fft // 2), self.n_fft, self.hop_length, self.patch_time).to_dict()

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length + 1  # center=True

    def token_grid(self, num_samples: int) -> tuple[int, int]:
        return self.num_frames(num_samples) // self.patch_time, self.n_mels // self.patch_freq

    def forward(
        self, wave: torch.Tensor, layers: Sequence[int] = (0,), lengths: torch.Tensor | None = None
    ) -> EncoderOutput:
        if list(layers) != [0]:
            raise ConfigError(f"melpatch has a single layer (0); got layers {list(layers)}")
        n_time, n_freq = self.token_grid(wave.shape[-1])
        batch = wave.shape[0]
        if lengths is None:
            logmel = torch.log(self.mel(wave.float()) + self.log_offset)  # [B, M, frames]
        else:  # each clip's own frames (reflect-padded at its own end), zeros after
            logmel = torch.zeros(batch, self.n_mels, self.num_frames(wave.shape[-1]), device=wave.device)
            for row, length in enumerate(lengths.tolist()):
                own = torch.log(self.mel(wave[row : row + 1, : int(length)].float()) + self.log_offset)[0]
                logmel[row, :, : own.shape[-1]] = own
        logmel = logmel[:, :, : n_time * self.patch_time]
        # [B, M, F'] -> [B, n_freq, pf, n_time, pt] -> [B, n_time, n_freq, pt, pf]
        patches = logmel.reshape(batch, n_freq, self.patch_freq, n_time, self.patch_time)
        patches = patches.permute(0, 3, 1, 4, 2)
        tokens = patches.reshape(batch, n_time * n_freq, self.embed_dim)
        return EncoderOutput(layers={0: tokens}, prefix={}, grid=(n_time, n_freq))


def create_melpatch(checkpoint: str | None = None, random_init: bool = False, **options) -> MelPatch:
    """Factory for the registry; melpatch has no weights, so `checkpoint` must be None."""
    if checkpoint is not None:
        raise ConfigError("melpatch has no weights: drop --checkpoint")
    return MelPatch(**options)
