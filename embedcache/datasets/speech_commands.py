"""Speech Commands v2 (one folder per word, validation_list.txt, testing_list.txt) -> single-label manifest, with
35 words or the 12-class variant (10 words + `_silence_` + `_unknown_`)."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf

from embedcache.datasets.adapters import by_split, existing_dir, manifest_path, write_manifest
from embedcache.datasets.manifest import Clip
from embedcache.errors import ConfigError

WORDS_35 = ("backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
            "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
            "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero")
WORDS_10 = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE, UNKNOWN = "_silence_", "_unknown_"
BACKGROUND = "_background_noise_"
# 12 classes: each background recording is cut into 1 s clips; its first 80 % go to train, next 10 % valid, last
# 10 % test (contiguous, so no second of noise is in two splits).
SILENCE_SECONDS = 1.0
SILENCE_SPLITS = ((0.8, "train"), (0.9, "valid"), (1.0, "test"))


def from_speech_commands(root: str | Path, out: str | Path | None = None, classes: int = 35) -> tuple[Path, list[str]]:
    """Speech Commands v2 -> manifest with the official train/valid/test lists; returns (path, notes to print).

    classes=35: one label per word folder, `_background_noise_` left out. classes=12: the 10 command words,
    every other word as `_unknown_` (all of them, not subsampled), and `_silence_` clips cut from
    `_background_noise_` into a `_silence_/` folder beside the manifest.
    """
    if classes not in (12, 35):
        raise ConfigError(f"--classes {classes}: Speech Commands has the 35-word and the 12-class task; give 35 or 12")
    root = existing_dir(root)
    manifest = manifest_path(root, out).absolute()
    if not root.is_relative_to(manifest.parent):
        raise ConfigError(f"{manifest}: write the manifest in {root} or a folder above it (manifest paths may not "
                          "leave the manifest's folder)")
    files = _word_files(root)
    valid = _read_list(root, "validation_list.txt", files)
    test = _read_list(root, "testing_list.txt", files)
    both = sorted(valid & test)
    if both:
        raise ConfigError(f"{root}: {both[0]} is in both validation_list.txt and testing_list.txt")
    words = sorted({name.split("/")[0] for name in files})
    notes = []
    missing = [word for word in WORDS_35 if word not in words]
    extra = [word for word in words if word not in WORDS_35]
    if missing or extra:
        notes.append(f"{len(words)} word folders, not the official 35 (missing: {', '.join(missing) or 'none'}; "
                     f"extra: {', '.join(extra) or 'none'})")
    clips = []
    for name in sorted(files):
        split = "valid" if name in valid else "test" if name in test else "train"
        word = name.split("/")[0]
        label = word if classes == 35 or word in WORDS_10 else UNKNOWN
        clips.append(Clip(name, root / name, (label,), split))
    if classes == 12:
        label_names = [SILENCE, UNKNOWN, *WORDS_10]
        silence = _cut_silence(root, manifest.parent / SILENCE)
        clips += silence
        notes.append(f"{len(silence)} {SILENCE} clips of {SILENCE_SECONDS:g} s cut from {BACKGROUND} "
                     f"(train/valid/test = first 80/10/10 % of each recording)")
    else:
        label_names = words
        if (root / BACKGROUND).is_dir():
            notes.append(f"{BACKGROUND} left out (35 words have no silence class; --classes 12 cuts it into "
                         f"{SILENCE} clips)")
    return write_manifest(manifest, by_split(clips), label_names), notes


def _word_files(root: Path) -> set[str]:
    """`word/file.wav` for every wav in a word folder (folders starting with `_` or `.` are not words)."""
    files = {f"{folder.name}/{path.name}"
             for folder in root.iterdir() if folder.is_dir() and folder.name[0] not in "_."
             for path in folder.glob("*.wav") if path.is_file()}
    if not files:
        raise ConfigError(f"{root}: no word folders with .wav files; is it the extracted speech_commands_v0.02 folder?")
    return files


def _read_list(root: Path, name: str, files: set[str]) -> set[str]:
    """The `word/file.wav` entries of a split list; each must name a file in a word folder."""
    path = root / name
    if not path.is_file():
        raise ConfigError(f"{path}: not found; Speech Commands v2 ships {name} beside the word folders "
                          "(pass the folder that holds them)")
    entries = {line.strip().replace("\\", "/") for line in path.read_text(encoding="utf-8").splitlines()
               if line.strip()}
    absent = sorted(entries - files)
    if absent:
        raise ConfigError(f"{path}: {len(absent)} listed file(s) are not in the word folders, e.g. {absent[0]}; "
                          "restore them or use the list that came with this copy")
    return entries


def _cut_silence(root: Path, out_dir: Path) -> list[Clip]:
    """1 s clips from each `_background_noise_` wav, written to out_dir, split by position in the recording."""
    folder = root / BACKGROUND
    recordings = sorted(folder.glob("*.wav")) if folder.is_dir() else []
    if not recordings:
        raise ConfigError(f"{folder}: no .wav files; the 12-class task cuts its {SILENCE} clips from them")
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = []
    for recording in recordings:
        wave, rate = sf.read(recording, dtype="float32", always_2d=True)
        step = int(round(SILENCE_SECONDS * rate))
        count = len(wave) // step
        for k in range(count):
            split = next(name for bound, name in SILENCE_SPLITS if k < round(bound * count))
            path = out_dir / f"{recording.stem}_{k:03d}.wav"
            sf.write(path, wave[k * step:(k + 1) * step], rate, subtype="PCM_16")
            clips.append(Clip(f"{SILENCE}/{path.name}", path, (SILENCE,), split))
    return clips
