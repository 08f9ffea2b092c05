"""The bundled sample set: real CC0 one-shots mixed into multi-label clips with short, localized events."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from embedcache.audio import load_audio
from embedcache.datasets.adapters import SPLIT_NAMES, write_manifest
from embedcache.datasets.events import EVENTS_NAME, write_events_file
from embedcache.datasets.manifest import Clip
from embedcache.errors import ConfigError

REPO_DATA = Path(__file__).resolve().parents[2] / "data"
SOURCES_DIR = REPO_DATA / "sources"
DEFAULT_SAMPLE_DIR = REPO_DATA / "sample"
SPLIT_RATIOS = (0.7, 0.15, 0.15)
MAX_EVENTS = 3
# Levels in dBFS: events peak loud, the ambient bed sits far below them, the noise floor below that.
EVENT_PEAK_DB = (-9.0, -3.0)
BED_RMS_DB = (-42.0, -36.0)
NOISE_RMS_DB = -60.0
_FORMATS = {"flac": ("FLAC", "PCM_16"), "wav": ("WAV", "PCM_16")}


@dataclass
class SampleSources:
    """Decoded source recordings: event class -> waves [S] (class order from classes.csv), and background beds."""

    events: dict[str, list[tuple[str, np.ndarray]]]
    beds: list[tuple[str, np.ndarray]]


def read_sources(sample_rate: int, sources_dir: str | Path | None = None) -> SampleSources:
    """Load the recordings listed in classes.csv at `sample_rate`; the `background` role is never a label."""
    sources_dir = Path(sources_dir) if sources_dir is not None else SOURCES_DIR
    table = sources_dir / "classes.csv"
    if not table.is_file():
        raise ConfigError(f"{table}: not found; the sample recordings live in data/sources of the embedcache repo")
    events: dict[str, list[tuple[str, np.ndarray]]] = {}
    beds = []
    with open(table, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            wave = load_audio(sources_dir / row["file"], sample_rate)
            if row["role"] == "background":
                beds.append((row["file"], wave))
            else:
                events.setdefault(row["class"], []).append((row["file"], wave))
    if not events or not beds:
        raise ConfigError(f"{table}: needs event classes and at least one background bed")
    return SampleSources(events, beds)


def build_sample_set(
    out_dir: str | Path = DEFAULT_SAMPLE_DIR,
    n_clips: int = 120,
    clip_seconds: float = 5.0,
    sample_rate: int = 16000,
    seed: int = 0,
    audio_format: str = "flac",
    sources_dir: str | Path | None = None,
) -> Path:
    """Mix 1-3 one-shot events of different classes over a quiet ambient bed per clip; returns the manifest path.

    Writes audio/clip_NNNN.<format>, manifest.csv, labels.txt (event classes only), events.csv (onset/offset and
    source of every event) and the same events as events.tsv (DESED's format, which extract keeps as strong labels)
    into `out_dir`. Splits are train/valid/test 70/15/15 with every class in every split, and each
    split draws its events from its own source recordings, so no one-shot is shared between splits.
    Same arguments -> byte-identical files.
    """
    if audio_format not in _FORMATS:
        raise ConfigError(f"audio_format {audio_format!r}: use one of {', '.join(_FORMATS)}")
    sources = read_sources(sample_rate, sources_dir)
    classes = list(sources.events)
    sizes = _split_sizes(n_clips, len(classes))
    pools = _source_pools(sources.events, seed)
    num_samples = round(clip_seconds * sample_rate)

    out_dir = Path(out_dir).absolute()
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    for stale in sorted(audio_dir.glob("clip_*.*")):
        stale.unlink()  # a previous, larger build must not leave clips the manifest no longer lists

    clips, event_rows = [], []
    index = 0
    for split, size in zip(SPLIT_NAMES, sizes, strict=True):
        for position in range(size):
            rng = np.random.default_rng([seed, index])
            chosen = _choose_classes(classes, position, rng)
            wave, events = _mix_clip(chosen, pools[split], sources.beds, num_samples, rng)
            clip_id = f"clip_{index:04d}"
            path = audio_dir / f"{clip_id}.{audio_format}"
            file_format, subtype = _FORMATS[audio_format]
            sf.write(path, wave, sample_rate, format=file_format, subtype=subtype)
            labels = tuple(label for label in classes if label in chosen)
            clips.append(Clip(clip_id, path, labels, split))
            for label, source, onset, length in events:
                event_rows.append([clip_id, label, source, f"{onset / sample_rate:.4f}",
                                   f"{(onset + length) / sample_rate:.4f}"])
            index += 1

    with open(out_dir / "events.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["clip_id", "label", "source", "onset_s", "offset_s"])
        writer.writerows(event_rows)
    write_events_file(out_dir / EVENTS_NAME, [(clip_id, float(onset), float(offset), label)
                                              for clip_id, label, _, onset, offset in event_rows])
    return write_manifest(out_dir / "manifest.csv", clips, classes)


def _split_sizes(n_clips: int, n_classes: int) -> list[int]:
    """Clips per split (70/15/15); each split needs at least one clip per class."""
    train = math.floor(n_clips * SPLIT_RATIOS[0] + 0.5)
    valid = math.floor(n_clips * SPLIT_RATIOS[1] + 0.5)
    sizes = [train, valid, n_clips - train - valid]
    if min(sizes) < n_classes:
        needed = math.ceil(n_classes / SPLIT_RATIOS[1])
        raise ConfigError(f"n_clips={n_clips} is too small: every split must hold every one of the {n_classes} "
                          f"classes; use n_clips >= {needed}")
    return sizes


def _source_pools(events: dict[str, list[tuple[str, np.ndarray]]], seed: int) -> dict[str, dict[str, list]]:
    """split -> class -> that split's own source recordings (a seeded 70/15/15 cut, at least one each)."""
    rng = np.random.default_rng([seed, 2**31])  # apart from the per-clip streams [seed, index]
    pools: dict[str, dict[str, list]] = {split: {} for split in SPLIT_NAMES}
    for label, recordings in events.items():
        if len(recordings) < len(SPLIT_NAMES):
            raise ConfigError(f"class {label!r} has {len(recordings)} recording(s); each split needs its own, "
                              f"so list at least {len(SPLIT_NAMES)} in classes.csv")
        order = [recordings[i] for i in rng.permutation(len(recordings))]
        held_out = max(1, math.floor(len(recordings) * SPLIT_RATIOS[1] + 0.5))
        held_out = min(held_out, (len(recordings) - 1) // 2)
        pools["valid"][label] = order[:held_out]
        pools["test"][label] = order[held_out: 2 * held_out]
        pools["train"][label] = order[2 * held_out:]
    return pools


def _choose_classes(classes: list[str], position: int, rng: np.random.Generator) -> list[str]:
    """1-3 distinct classes; the first cycles through all classes so every split covers every class."""
    first = classes[position % len(classes)]
    others = [label for label in classes if label != first]
    extra = int(rng.integers(0, MAX_EVENTS))
    return [first] + [others[i] for i in rng.choice(len(others), size=extra, replace=False)]


def _mix_clip(
    chosen: list[str],
    pool: dict[str, list[tuple[str, np.ndarray]]],
    beds: list[tuple[str, np.ndarray]],
    num_samples: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[tuple[str, str, int, int]]]:
    """One clip [S]: bed + noise + events at random onsets; returns (wave, [(label, source, onset, length)])."""
    _, bed = beds[int(rng.integers(len(beds)))]
    repeats = math.ceil(2 * num_samples / len(bed)) + 1
    offset = int(rng.integers(len(bed)))
    background = np.tile(bed, repeats)[offset: offset + num_samples]
    rms = float(np.sqrt(np.mean(background.astype(np.float64) ** 2))) or 1.0
    wave = background * (_db(rng.uniform(*BED_RMS_DB)) / rms)
    wave = wave + rng.standard_normal(num_samples) * _db(NOISE_RMS_DB)
    events = []
    for label in chosen:
        source, event = pool[label][int(rng.integers(len(pool[label])))]
        event = event[:num_samples]
        peak = float(np.abs(event).max()) or 1.0
        onset = int(rng.integers(0, num_samples - len(event) + 1))
        wave[onset: onset + len(event)] += event * (_db(rng.uniform(*EVENT_PEAK_DB)) / peak)
        events.append((label, source, onset, len(event)))
    return np.clip(wave, -1.0, 1.0).astype(np.float32), events


def _db(level: float) -> float:
    """dB -> linear amplitude."""
    return 10.0 ** (level / 20.0)


# -- a sound-event detection set with known events -----------------------------------------------------------------
TONE_HZ = (440.0, 1250.0, 3100.0)


def build_tone_events(
    out_dir: str | Path,
    n_clips: int = 60,
    clip_seconds: float = 5.0,
    sample_rate: int = 16000,
    event_seconds: tuple[float, float] = (0.6, 2.0),
    tones_hz: tuple[float, ...] = TONE_HZ,
    seed: int = 0,
    noise_db: float = -50.0,
    distractors: int = 0,
) -> Path:
    """Clips of noise (RMS `noise_db` dBFS) with 1-2 tone events (class k: a tone at tones_hz[k] with two harmonics,
    10 ms fades, peak -14..-8 dBFS) at seeded onsets, and `distractors` unlabelled tones per clip at other pitches
    (at least 20 % away from every class tone): manifest.csv (weak labels), labels.txt and events.tsv (strong labels)
    in `out_dir`, splits 70/15/15. Two events of one clip have different classes; every split covers every class.
    Same arguments -> byte-identical files."""
    classes = [f"tone{round(hz)}" for hz in tones_hz]
    sizes = _split_sizes(n_clips, len(classes))
    num_samples = round(clip_seconds * sample_rate)
    out_dir = Path(out_dir).absolute()
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    clips, events, index = [], [], 0
    for split, size in zip(SPLIT_NAMES, sizes, strict=True):
        for position in range(size):
            rng = np.random.default_rng([seed, index, 7])
            chosen = [position % len(classes)] + ([int(rng.integers(len(classes)))] if rng.random() < 0.5 else [])
            chosen = list(dict.fromkeys(chosen))
            wave = rng.standard_normal(num_samples) * _db(noise_db)
            clip_id = f"tone_{index:04d}"
            for _ in range(distractors):
                hz = _distractor_pitch(rng, tones_hz)
                length = round(rng.uniform(*event_seconds) * sample_rate)
                onset = int(rng.integers(0, num_samples - length))
                wave[onset: onset + length] += _tone(hz, length, sample_rate) * _db(rng.uniform(-14, -8))
            for k in chosen:
                length = round(rng.uniform(*event_seconds) * sample_rate)
                onset = int(rng.integers(0, num_samples - length))
                wave[onset: onset + length] += _tone(tones_hz[k], length, sample_rate) * _db(rng.uniform(-14, -8))
                events.append((clip_id, onset / sample_rate, (onset + length) / sample_rate, classes[k]))
            path = out_dir / "audio" / f"{clip_id}.wav"
            sf.write(path, np.clip(wave, -1, 1).astype(np.float32), sample_rate, subtype="PCM_16")
            clips.append(Clip(clip_id, path, tuple(classes[k] for k in sorted(chosen)), split))
            index += 1
    write_events_file(out_dir / EVENTS_NAME, events)
    return write_manifest(out_dir / "manifest.csv", clips, classes)


def _distractor_pitch(rng: np.random.Generator, tones_hz: tuple[float, ...]) -> float:
    """A pitch between 200 Hz and 2.4 kHz (harmonics below 8 kHz) at least 20 % away from every class tone."""
    while True:
        hz = float(np.exp(rng.uniform(np.log(200.0), np.log(2400.0))))
        if all(abs(hz / tone - 1.0) >= 0.2 for tone in tones_hz):
            return hz


def _tone(hz: float, length: int, sample_rate: int) -> np.ndarray:
    """A tone with its 2nd and 3rd harmonics, peak 1, faded in and out over 10 ms."""
    time = np.arange(length) / sample_rate
    wave = sum(np.sin(2 * np.pi * hz * h * time) / h for h in (1, 2, 3))
    fade = min(length // 2, sample_rate // 100)
    ramp = np.ones(length)
    ramp[:fade], ramp[length - fade:] = np.linspace(0, 1, fade), np.linspace(1, 0, fade)
    return wave * ramp / np.abs(wave).max()
