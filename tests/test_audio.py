"""Audio decoding: formats, mono mixdown, resampling, crop/pad, and every kind of bad file."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from embedcache.audio import check_audio, decode_mono, fit_length, load_audio, load_segment
from embedcache.errors import BadInputError


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    """A 0.5-amplitude sine [S]."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(wave: np.ndarray, rate: int) -> float:
    """Frequency of the largest FFT bin."""
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def test_stereo_is_mixed_to_the_mean_of_channels(tmp_path: Path) -> None:
    left, right = tone(0.5, 16000, 440), tone(0.5, 16000, 1000) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    wave = load_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.shape == (8000,)
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-7)


def test_same_rate_is_not_resampled(tmp_path: Path) -> None:
    original = tone(0.25, 16000)
    path = tmp_path / "a.wav"
    sf.write(path, original, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, 16000), original)


def test_resampling_keeps_duration_and_pitch(tmp_path: Path) -> None:
    path = tmp_path / "cd.flac"
    sf.write(path, tone(1.0, 44100, 440.0), 44100)
    wave = load_audio(path, 16000)
    assert wave.shape == (16000,)
    assert wave.dtype == np.float32
    assert peak_frequency(wave, 16000) == pytest.approx(440.0, abs=1.0)
    # Amplitude survives the low-pass filter (0.5 peak sine, ignoring filter edges).
    assert np.abs(wave[1000:-1000]).max() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("suffix", ["flac", "ogg", "mp3"])
def test_compressed_formats_decode(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"a.{suffix}"
    sf.write(path, tone(1.0, 16000, 440.0), 16000)
    wave = load_audio(path, 16000)
    assert abs(len(wave) - 16000) <= 1152  # mp3 may add encoder delay/padding frames
    assert peak_frequency(wave, 16000) == pytest.approx(440.0, abs=2.0)
    assert check_audio(path) is None


def test_decode_mono_reports_the_native_rate(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    sf.write(path, tone(0.1, 22050), 22050)
    wave, rate = decode_mono(path)
    assert rate == 22050 and wave.shape == (2205,)


def test_fit_length_crops_from_the_start() -> None:
    wave = np.arange(10, dtype=np.float32)
    cropped, kept = fit_length(wave, 4)
    np.testing.assert_array_equal(cropped, [0, 1, 2, 3])
    assert kept == 4


def test_fit_length_pads_zeros_at_the_end() -> None:
    wave = np.arange(1, 4, dtype=np.float32)
    padded, kept = fit_length(wave, 6)
    np.testing.assert_array_equal(padded, [1, 2, 3, 0, 0, 0])
    assert kept == 3 and padded.dtype == np.float32


def test_fit_length_exact_and_invalid() -> None:
    wave = np.ones(5, dtype=np.float32)
    same, kept = fit_length(wave, 5)
    np.testing.assert_array_equal(same, wave)
    assert kept == 5
    with pytest.raises(ValueError, match="positive"):
        fit_length(wave, 0)


@pytest.mark.parametrize("rate", [16000, 44100, 22050, 8000])
def test_load_segment_equals_the_same_samples_of_the_whole_resampled_file(tmp_path: Path, rate: int) -> None:
    path = tmp_path / "a.wav"
    noise = np.random.default_rng(rate).standard_normal(rate * 7).astype(np.float32) * 0.1
    sf.write(path, noise, rate, subtype="FLOAT")
    whole = load_audio(path, 16000)
    for start, length in ((0, 16000), (12345, 50000), (100000, 80000), (len(whole) - 5000, 16000)):
        segment = load_segment(path, 16000, start, length)
        expected = whole[start : start + length]  # the last one runs past the end: shorter
        assert segment.shape == expected.shape and segment.dtype == np.float32
        np.testing.assert_allclose(segment, expected, atol=1e-6, rtol=0)


def write_bad_file(kind: str, folder: Path) -> Path:
    """One bad audio file of the given kind."""
    good = tone(1.0, 16000)
    if kind == "missing":
        return folder / "missing.wav"
    if kind == "empty":
        path = folder / "empty.wav"
        path.write_bytes(b"")
    elif kind == "zero_length":
        path = folder / "zero.wav"
        sf.write(path, np.zeros(0, np.float32), 16000)
    elif kind == "text":
        path = folder / "notes.wav"
        path.write_text("this is a text file renamed to .wav\n" * 20)
    elif kind in ("truncated_wav", "truncated_flac"):
        suffix = kind.split("_")[1]
        whole = folder / f"whole.{suffix}"
        sf.write(whole, good, 16000)
        path = folder / f"cut.{suffix}"
        path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    elif kind in ("nan", "inf"):
        path = folder / f"{kind}.wav"
        bad = good.copy()
        bad[100:103] = np.nan if kind == "nan" else np.inf
        sf.write(path, bad, 16000, subtype="FLOAT")
    else:
        raise AssertionError(kind)
    return path


BAD_FILES = {
    "missing": "missing file",
    "empty": "empty file",
    "zero_length": "zero-length",
    "text": "not audio",
    "truncated_wav": "truncated",
    "truncated_flac": "truncated",
    "nan": "3 NaN/inf samples",
    "inf": "3 NaN/inf samples",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_files_raise_with_file_and_reason(tmp_path: Path, kind: str) -> None:
    path = write_bad_file(kind, tmp_path)
    with pytest.raises(BadInputError) as caught:
        load_audio(path, 16000)
    assert str(path) in str(caught.value)
    assert BAD_FILES[kind] in str(caught.value)
    assert caught.value.problems == [(str(path), check_audio(path))]
    assert BAD_FILES[kind] in check_audio(path)


def test_truncated_wav_reports_declared_and_present_bytes(tmp_path: Path) -> None:
    path = write_bad_file("truncated_wav", tmp_path)
    # 16000 PCM_16 samples = 32000 data bytes after a 44-byte header; half the file keeps 16022 - 44 of them.
    assert check_audio(path) == "truncated WAV (header declares 32000 data bytes, file has 15978)"


def test_folder_is_not_audio(tmp_path: Path) -> None:
    assert check_audio(tmp_path) == "not a file"


def test_unreadable_file_is_a_reason_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.wav"
    sf.write(path, tone(0.1, 16000), 16000)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # Root ignores file modes, so simulate the open failing the way it does for other users.
    monkeypatch.setattr(sf, "SoundFile", refuse)
    assert check_audio(path) == "cannot read file (Permission denied)"
