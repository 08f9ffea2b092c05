"""Audio decoding: any soundfile format to float32 mono at a target rate, with clear errors for bad files."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

from embedcache.errors import BadInputError

# Decoded samples beyond this are not audio (float files hold [-1, 1]; int16-scaled ones reach 32768): such values
# overflow the front ends' power spectra to inf.
MAX_ABS_SAMPLE = 1e6

# Target-rate samples decoded on each side of a segment before resampling (the sinc kernel spans a few dozen).
_RESAMPLE_MARGIN = 1024

# WAV writers that stream (unknown length) put one of these in the data chunk size.
_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode an audio file to float32 mono [S] at `sample_rate`; raises BadInputError naming the file."""
    wave, rate = decode_mono(path)
    if rate != sample_rate:
        wave = resample(wave, rate, sample_rate)
    return wave


def load_segment(path: str | Path, sample_rate: int, start: int, length: int) -> np.ndarray:
    """Samples [start, start + length) of the file at `sample_rate` (float32 mono; shorter at the file's end).

    Only that part is decoded. When the file has another rate, a margin around it is resampled and cut, which
    gives the samples of resampling the whole file (the resampling kernel is far shorter than the margin).
    """
    path = Path(path)
    try:
        reason = _file_problem(path)
    except OSError as error:
        reason = f"cannot read file ({error.strerror or error})"
    if reason is not None:
        raise BadInputError(f"{path}: {reason}", problems=[(str(path), reason)])
    try:
        with sf.SoundFile(path) as handle:
            rate, frames = handle.samplerate, handle.frames
            if rate == sample_rate:
                handle.seek(min(start, frames))
                data = handle.read(length, dtype="float32", always_2d=True)
                return data.mean(axis=1, dtype=np.float32)
            # Read from a native sample that maps onto a whole target sample, so the cut is exact.
            step = rate // math.gcd(rate, sample_rate)
            margin = _RESAMPLE_MARGIN * rate // sample_rate + step
            first = max(0, (start * rate // sample_rate - margin) // step * step)
            last = min(frames, -(-(start + length) * rate // sample_rate) + margin)
            handle.seek(first)
            data = handle.read(max(0, last - first), dtype="float32", always_2d=True).mean(axis=1, dtype=np.float32)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as error:
        raise BadInputError(f"{path}: cannot read ({_short(error)})", problems=[(str(path), _short(error))]) from None
    resampled = resample(data, rate, sample_rate)
    offset = first * sample_rate // rate
    return resampled[start - offset : start - offset + length].astype(np.float32, copy=False)


def resample(wave: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """torchaudio's band-limited sinc resampling of float32 [S] from `rate` to `sample_rate`."""
    import torch  # here, not at import time: manifests and the CLI's --help need no torch
    import torchaudio.functional

    return torchaudio.functional.resample(torch.from_numpy(wave), rate, sample_rate).numpy().astype(np.float32,
                                                                                                    copy=False)


def check_audio(path: str | Path) -> str | None:
    """The reason the file cannot be used (after a full decode), or None when it is fine."""
    try:
        decode_mono(path)
    except BadInputError as error:
        return error.problems[0][1]
    return None


def decode_mono(path: str | Path) -> tuple[np.ndarray, int]:
    """Fully decode a file at its own rate to float32 mono [S]; returns (wave, sample rate)."""
    path = Path(path)
    try:
        reason = _file_problem(path)
    except OSError as error:
        reason = f"cannot read file ({error.strerror or error})"
    if reason is None:
        try:
            with sf.SoundFile(path) as handle:
                rate, expected = handle.samplerate, handle.frames
                # MP3 frame counts can be estimates from the bitrate; other formats state them exactly.
                tolerance = 0.02 if handle.format == "MP3" else 0.0
                data = handle.read(dtype="float32", always_2d=True)  # [S, channels]
        except (sf.LibsndfileError, RuntimeError, ValueError) as error:
            reason = f"not audio, truncated or corrupt (libsndfile: {_short(error)})"
        except OSError as error:
            reason = f"cannot read file ({error.strerror or error})"
        else:
            reason = _decoded_problem(data, expected, tolerance)
    if reason is not None:
        raise BadInputError(f"{path}: {reason}", problems=[(str(path), reason)])
    return data.mean(axis=1, dtype=np.float32), rate


def fit_length(wave: np.ndarray, num_samples: int) -> tuple[np.ndarray, int]:
    """Crop from the start or zero-pad at the end to exactly `num_samples`; returns (wave, real samples kept)."""
    if num_samples <= 0:
        raise ValueError(f"fit_length: num_samples must be positive, got {num_samples}")
    kept = min(len(wave), num_samples)
    if len(wave) >= num_samples:
        return wave[:num_samples], kept
    padded = np.zeros(num_samples, dtype=wave.dtype)
    padded[:kept] = wave
    return padded, kept


def _file_problem(path: Path) -> str | None:
    """Problems visible before decoding: absent, not a file, empty, or a WAV shorter than its header says."""
    if not path.exists():
        return "missing file"
    if not path.is_file():
        return "not a file"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    return _wav_truncation(path)


def _wav_truncation(path: Path) -> str | None:
    """libsndfile silently reads a cut-off WAV, so compare the data chunk's declared size with the bytes present."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if handle.read(4) != b"RIFF":
            return None
        handle.seek(12)
        while True:
            header = handle.read(8)
            if len(header) < 8:
                return None
            chunk_id, chunk_size = header[:4], struct.unpack("<I", header[4:])[0]
            if chunk_id == b"data":
                available = size - handle.tell()
                if chunk_size not in _WAV_UNKNOWN_SIZES and chunk_size > available:
                    return f"truncated WAV (header declares {chunk_size} data bytes, file has {available})"
                return None
            # Chunks are padded to an even number of bytes.
            handle.seek(chunk_size + (chunk_size & 1), 1)


def _decoded_problem(data: np.ndarray, expected_frames: int, tolerance: float) -> str | None:
    """Problems with the decoded samples [S, channels]: none, fewer than the header promised, or not finite."""
    if data.shape[0] == 0:
        return "zero-length audio (0 samples)"
    if data.shape[0] < expected_frames * (1.0 - tolerance):
        return f"truncated (decoded {data.shape[0]} of {expected_frames} samples)"
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        return f"{bad} NaN/inf samples"
    peak = float(np.abs(data).max())
    if peak > MAX_ABS_SAMPLE:
        extreme = int(np.count_nonzero(np.abs(data) > MAX_ABS_SAMPLE))
        return (f"{extreme} sample(s) beyond ±{MAX_ABS_SAMPLE:g} (largest {peak:.3g}): not audio in [-1, 1]; "
                "rescale the file")
    return None


def _short(error: Exception) -> str:
    """The last line of a libsndfile message, without the file name it repeats."""
    text = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text
