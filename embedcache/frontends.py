"""Feature front ends (waveform -> normalised spectrogram), each configured by a small dataclass an encoder carries."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio
from torchaudio.compliance import kaldi

from embedcache.errors import ConfigError

_KALDI_WINDOWS = ("hanning", "povey", "hamming", "rectangular", "blackman")


@dataclass(frozen=True)
class KaldiFbankConfig:
    """Kaldi-compatible log-mel filterbank (torchaudio.compliance.kaldi.fbank) plus the model's normalisation.

    Output features are `(fbank - mean) / (std * std_factor)`, laid out [B, frames, num_mel_bins] (time first).
    `target_frames` pads (zeros in the log domain, before normalisation, at the end) or crops to a fixed length;
    None keeps every frame.
    """

    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window_type: str = "hanning"
    # BEATs multiplies the float waveform by 2**15 (int16 scale); the others feed it as is.
    waveform_scale: float = 1.0
    # AudioMAE/AST/EAT subtract each clip's waveform mean before framing.
    remove_waveform_mean: bool = True
    htk_compat: bool = True
    mean: float = -4.2677393
    std: float = 4.5689974
    std_factor: float = 2.0
    target_frames: int | None = 1024

    def __post_init__(self):
        if self.window_type not in _KALDI_WINDOWS:
            raise ConfigError(f"kaldi fbank: window_type {self.window_type!r} is not one of {_KALDI_WINDOWS}")
        if self.target_frames is not None and self.target_frames < 1:
            raise ConfigError(
                f"kaldi fbank: target_frames must be positive or None, got {self.target_frames}"
            )

    @property
    def window_samples(self) -> int:
        return round(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def hop_samples(self) -> int:
        return round(self.sample_rate * self.frame_shift_ms / 1000)

    def frame_samples(self) -> tuple[int, int, int]:
        """(first frame's first sample, samples per frame, hop): snip_edges frames start at sample 0."""
        return 0, self.window_samples, self.hop_samples

    def raw_frames(self, num_samples: int) -> int:
        """Frames kaldi produces for `num_samples` (snip_edges=True), before padding/cropping."""
        if num_samples < self.window_samples:
            return 0
        return 1 + (num_samples - self.window_samples) // self.hop_samples

    def num_frames(self, num_samples: int) -> int:
        """Frames the model sees for `num_samples`, after padding/cropping to `target_frames`."""
        return self.target_frames if self.target_frames is not None else self.raw_frames(num_samples)

    def describe(self) -> dict:
        """JSON-able description recorded in the store's provenance."""
        return {
            "kind": "kaldi-fbank",
            "implementation": "torchaudio.compliance.kaldi.fbank",
            **dataclasses.asdict(self),
        }


def beats_fbank_config() -> KaldiFbankConfig:
    """BEATs: waveform x 2^15, povey window, no mean removal, (x - 15.41663) / (2 * 6.55582), any length."""
    return KaldiFbankConfig(
        window_type="povey",
        waveform_scale=2.0**15,
        remove_waveform_mean=False,
        htk_compat=False,
        mean=15.41663,
        std=6.55582,
        target_frames=None,
    )


def audioset_fbank_config(target_frames: int | None = 1024) -> KaldiFbankConfig:
    """AudioMAE / AST: mean removed, hanning, htk_compat, 128 bins, AudioSet stats (-4.2677393, 4.5689974)."""
    return KaldiFbankConfig(target_frames=target_frames)


def eat_fbank_config(target_frames: int | None = 1024) -> KaldiFbankConfig:
    """EAT / SSLAM: the AudioMAE fbank normalised with EAT's rounded AudioSet stats (-4.268, 4.569)."""
    return KaldiFbankConfig(mean=-4.268, std=4.569, target_frames=target_frames)


# ASiT's pre-training input (main_ASiT.py --num_frames): 37 time patches of 16 frames.
ASIT_FRAMES = 592


def asit_fbank_config(target_frames: int | None = ASIT_FRAMES) -> KaldiFbankConfig:
    """ASiT: the AudioMAE/AST fbank at 32 kHz (800-sample frames, 320-sample hop, mel up to 16 kHz), 592 frames."""
    return KaldiFbankConfig(sample_rate=32000, target_frames=target_frames)


def clip_lengths(wave: torch.Tensor, lengths: torch.Tensor | None) -> list[int]:
    """Each clip's real length in samples: `lengths` [B], or the whole padded width when None."""
    if lengths is None:
        return [wave.shape[-1]] * wave.shape[0]
    values = [int(n) for n in lengths.tolist()]
    if len(values) != wave.shape[0] or min(values) < 1 or max(values) > wave.shape[-1]:
        raise ConfigError(
            f"lengths {values[:8]} do not fit a waveform batch of shape {tuple(wave.shape)}: one per clip, 1..S"
        )
    return values


def pad_frames(rows: list[torch.Tensor], frames: int | None = None) -> torch.Tensor:
    """Stack per-clip features [frames_b, bins] into [B, frames, bins], zero-padding at the end."""
    frames = max(row.shape[0] for row in rows) if frames is None else frames
    return torch.stack([F.pad(row, (0, 0, 0, frames - row.shape[0])) for row in rows])


class KaldiFbank(torch.nn.Module):
    """Waveform batch [B, S] -> normalised Kaldi fbank [B, frames, num_mel_bins], one clip at a time like Kaldi."""

    def __init__(self, config: KaldiFbankConfig):
        super().__init__()
        self.config = config

    def clip_log_mel(self, clip: torch.Tensor) -> torch.Tensor:
        """Un-normalised, un-padded log-mel [raw_frames, num_mel_bins] of one clip [S] (the Kaldi output itself)."""
        cfg = self.config
        if clip.shape[-1] < cfg.window_samples:
            raise ConfigError(
                f"kaldi fbank: a clip of {clip.shape[-1]} samples is shorter than one "
                f"{cfg.frame_length_ms} ms frame ({cfg.window_samples} samples); give longer clips"
            )
        clip = clip.float() * cfg.waveform_scale
        if cfg.remove_waveform_mean:
            clip = clip - clip.mean()
        return kaldi.fbank(
            clip.unsqueeze(0),
            htk_compat=cfg.htk_compat,
            sample_frequency=cfg.sample_rate,
            use_energy=False,
            window_type=cfg.window_type,
            num_mel_bins=cfg.num_mel_bins,
            dither=0.0,
            frame_length=cfg.frame_length_ms,
            frame_shift=cfg.frame_shift_ms,
        )

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """Un-normalised, un-padded log-mel [B, raw_frames, num_mel_bins] of equal-length clips."""
        if wave.dim() != 2:
            raise ConfigError(f"kaldi fbank expects a waveform batch [B, S], got shape {tuple(wave.shape)}")
        return torch.stack([self.clip_log_mel(item) for item in wave])

    def features(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int]]:
        """Normalised features [B, frames, bins] of each clip's real samples, and each clip's real frame count.

        With `target_frames` every clip is zero-padded (in the log domain, before normalisation, as the official
        dataloaders pad) or cropped to it; without, clips are padded to the longest with zeros after normalisation
        (padding the caller masks).
        """
        cfg = self.config
        if wave.dim() != 2:
            raise ConfigError(f"kaldi fbank expects a waveform batch [B, S], got shape {tuple(wave.shape)}")
        rows, frames = [], []
        for item, length in zip(wave, clip_lengths(wave, lengths), strict=True):
            fbank = self.clip_log_mel(item[:length])
            if cfg.target_frames is not None:
                fbank = F.pad(fbank, (0, 0, 0, max(0, cfg.target_frames - fbank.shape[0])))[: cfg.target_frames]
            rows.append((fbank - cfg.mean) / (cfg.std * cfg.std_factor))
            frames.append(min(cfg.raw_frames(length), cfg.target_frames or cfg.raw_frames(length)))
        if cfg.target_frames is not None:
            return torch.stack(rows), frames
        return pad_frames(rows), frames

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.features(wave, lengths)[0]


@dataclass(frozen=True)
class MelDbConfig:
    """torchaudio MelSpectrogram (periodic Hann, center/reflect, power 2, HTK mel) -> dB with a top_db floor.

    top_db_scope "sample" floors each clip at its own max - top_db (4-D input, as ATST); "batch" uses one floor for
    the whole batch (3-D input, as Dasheng). `minmax` = (lo, hi) maps dB linearly to [-1, 1] (ATST); None keeps dB.
    Output is laid out [B, frames, n_mels] (time first), like the fbank.
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 60.0
    f_max: float = 7800.0
    top_db: float | None = 80.0
    top_db_scope: str = "sample"
    minmax: tuple[float, float] | None = (-79.6482, 50.6842)

    def __post_init__(self):
        if self.top_db_scope not in ("sample", "batch"):
            raise ConfigError(f"mel-dB: top_db_scope must be 'sample' or 'batch', got {self.top_db_scope!r}")

    @property
    def num_mel_bins(self) -> int:
        return self.n_mels

    def frame_samples(self) -> tuple[int, int, int]:
        """(first frame's first sample, samples per frame, hop): centred frames, the window's non-zero part."""
        return -(self.win_length // 2), self.win_length, self.hop_length

    def raw_frames(self, num_samples: int) -> int:
        """Frames for `num_samples` with center=True."""
        return 1 + num_samples // self.hop_length

    def num_frames(self, num_samples: int) -> int:
        return self.raw_frames(num_samples)

    @property
    def min_samples(self) -> int:
        """The reflect padding of a centred STFT needs more than n_fft // 2 samples."""
        return self.n_fft // 2 + 1

    def describe(self) -> dict:
        """JSON-able description recorded in the store's provenance."""
        fields = dataclasses.asdict(self)
        fields["minmax"] = list(self.minmax) if self.minmax is not None else None
        return {
            "kind": "mel-db",
            "implementation": "torchaudio.transforms.MelSpectrogram + AmplitudeToDB",
            "window": "hann (periodic)",
            "center": True,
            "power": 2.0,
            "mel_scale": "htk",
            **fields,
        }


def atst_mel_config() -> MelDbConfig:
    """ATST-Frame / ATST-Clip: 64 mels 60-7800 Hz, n_fft 1024, dB top_db 80 per clip, MinMax(-79.6482, 50.6842)."""
    return MelDbConfig()


class MelDb(torch.nn.Module):
    """Waveform batch [B, S] -> mel dB (optionally min-max scaled) [B, frames, n_mels]."""

    def __init__(self, config: MelDbConfig):
        super().__init__()
        self.config = config
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            win_length=config.win_length,
            hop_length=config.hop_length,
            n_mels=config.n_mels,
            f_min=config.f_min,
            f_max=config.f_max,
        )

    def _db(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, S] (equal lengths) -> [B, frames, n_mels]."""
        cfg = self.config
        power = self.mel(wave.float())  # [B, M, frames]
        db = 10.0 * torch.log10(power.clamp(min=1e-10))
        if cfg.top_db is not None:
            peak = db.amax(dim=(1, 2), keepdim=True) if cfg.top_db_scope == "sample" else db.amax()
            db = torch.maximum(db, peak - cfg.top_db)
        if cfg.minmax is not None:
            low, high = cfg.minmax
            db = (db - low) / (high - low) * 2 - 1
        return db.transpose(1, 2)

    def features(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int]]:
        """Features of each clip's real samples (reflect-padded at its own edges, floored at its own peak),
        zero-padded at the end to the longest clip, and each clip's real frame count."""
        if wave.dim() != 2:
            raise ConfigError(
                f"mel-dB front end expects a waveform batch [B, S], got shape {tuple(wave.shape)}"
            )
        sizes = clip_lengths(wave, lengths)
        if lengths is None or len(set(sizes)) == 1:
            features = self._db(wave[:, : sizes[0]])
            return features, [features.shape[1]] * wave.shape[0]
        rows = [self._db(item[None, :length])[0] for item, length in zip(wave, sizes, strict=True)]
        return pad_frames(rows), [row.shape[0] for row in rows]

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.features(wave, lengths)[0]


def dasheng_mel_config(
    n_fft: int = 512,
    win_length: int = 512,
    hop_length: int = 160,
    n_mels: int = 64,
    f_min: float = 0.0,
    f_max: float = 8000.0,
    top_db: float = 120.0,
) -> MelDbConfig:
    """Dasheng: 64 mels 0-8000 Hz, n_fft 512, dB with top_db 120 floored per clip, no scaling (BatchNorm follows).

    The official 3-D call floors the whole batch at once; per clip keeps a clip's features independent of its
    batch mates and equals the official output for batch size 1.
    """
    return MelDbConfig(
        n_fft=n_fft,
        win_length=win_length,
        hop_length=hop_length,
        n_mels=n_mels,
        f_min=f_min,
        f_max=f_max,
        top_db=top_db,
        top_db_scope="sample",
        minmax=None,
    )


@dataclass(frozen=True)
class WhisperLogMelConfig:
    """OpenAI Whisper's log-mel: |STFT|^2 (n_fft 400, hop 160, periodic Hann, center/reflect, last frame dropped)
    -> Slaney mel filters (librosa's, rebuilt with torchaudio) -> log10(max(x, 1e-10)) -> floor at max - 8
    -> (x + 4) / 4, on audio zero-padded to whole windows of `window_frames` frames (3000 = 30 s).

    The max is taken per clip (over all its windows, as `transcribe` does for one file), never across a batch.
    Output is laid out [B, n_mels, frames] (frequency first), as the encoder's Conv1d expects.
    """

    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    window_frames: int = 3000

    @property
    def window_samples(self) -> int:
        return self.window_frames * self.hop_length

    def frame_samples(self) -> tuple[int, int, int]:
        """(first frame's first sample, samples per frame, hop): centred frames."""
        return -(self.n_fft // 2), self.n_fft, self.hop_length

    def num_windows(self, num_samples: int) -> int:
        """How many encoder windows a clip of `num_samples` fills (at least one)."""
        return max(1, -(-num_samples // self.window_samples))

    def num_frames(self, num_samples: int) -> int:
        return self.num_windows(num_samples) * self.window_frames

    def describe(self) -> dict:
        """JSON-able description recorded in the store's provenance."""
        return {
            "kind": "whisper-log-mel",
            "implementation": "torch.stft + torchaudio.functional.melscale_fbanks(norm='slaney', mel_scale='slaney')",
            "window": "hann (periodic)",
            "center": True,
            "log": "log10(clamp(mel, 1e-10)); max(x, clip max - 8); (x + 4) / 4",
            **dataclasses.asdict(self),
        }


class WhisperLogMel(torch.nn.Module):
    """Waveform batch [B, S] -> Whisper log-mel [B, n_mels, num_windows * window_frames]."""

    def __init__(self, config: WhisperLogMelConfig):
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        filters = torchaudio.functional.melscale_fbanks(
            config.n_fft // 2 + 1, 0.0, config.sample_rate / 2, config.n_mels, config.sample_rate,
            norm="slaney", mel_scale="slaney",
        )
        self.register_buffer("filters", filters.T.contiguous(), persistent=False)  # [n_mels, n_fft // 2 + 1]

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if wave.dim() != 2:
            raise ConfigError(f"whisper log-mel expects a waveform batch [B, S], got shape {tuple(wave.shape)}")
        frames = cfg.num_frames(wave.shape[-1])
        # Zeros past the last window (one FFT more) so every kept frame sees what Whisper's 30 s zero pad gives.
        padded = F.pad(wave.float(), (0, frames * cfg.hop_length + cfg.n_fft - wave.shape[-1]))
        stft = torch.stft(padded, cfg.n_fft, cfg.hop_length, window=self.window, return_complex=True)
        power = stft[..., :-1].abs() ** 2  # [B, F, frames + extra]; Whisper drops the last frame
        log_spec = torch.clamp(self.filters @ power, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        return ((log_spec + 4.0) / 4.0)[..., :frames]
