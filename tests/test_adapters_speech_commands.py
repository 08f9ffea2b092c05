"""`embedcache manifest speechcommands`: the official v2 layout (word folders + validation/testing lists), 35 words
or 12 classes, on a tiny generated copy."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from embedcache.datasets import find_bad_rows, read_manifest
from embedcache.datasets.speech_commands import WORDS_10, WORDS_35
from embedcache_cli.main import main as cli_main

RATE = 16000


def write_wav(path: Path, samples: int = RATE // 10, value: float = 0.1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(samples, value, np.float32), RATE, subtype="PCM_16")
    return path


def speech_commands(root: Path, words=WORDS_35, noise_seconds=(10.5, 3.0)) -> Path:
    """Every word by 3 speakers (speaker 0 twice); speaker 1 is listed for validation, speaker 2 for test."""
    valid, test = [], []
    for word in words:
        for speaker, takes in ((0, 2), (1, 1), (2, 1)):
            for take in range(takes):
                name = f"{word}/{speaker:08x}_nohash_{take}.wav"
                write_wav(root / name)
                (valid if speaker == 1 else test if speaker == 2 else []).append(name)
    (root / "validation_list.txt").write_text("\n".join(valid) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    noise = root / "_background_noise_"
    noise.mkdir()
    for i, seconds in enumerate(noise_seconds):
        wave = np.linspace(-0.5, 0.5, int(seconds * RATE)).astype(np.float32)
        sf.write(noise / f"noise{i}.wav", wave, RATE, subtype="PCM_16")
    (root / "README.md").write_text("not a word")
    (root / "LICENSE").write_text("CC-BY-4.0")
    return root


def run(*args: str):
    return CliRunner().invoke(cli_main, ["manifest", "speechcommands", *args])


def test_35_words_use_the_official_lists(tmp_path: Path) -> None:
    root = speech_commands(tmp_path / "speech_commands_v0.02")
    result = run(str(root))
    assert result.exit_code == 0, result.output
    assert "140 clips, 35 labels (single-label); train 70, valid 35, test 35" in result.output
    assert "_background_noise_ left out" in result.output
    manifest = read_manifest(root / "manifest.csv")
    assert manifest.label_names == sorted(WORDS_35)
    by_id = {clip.clip_id: clip for clip in manifest.clips}
    assert by_id["yes/00000001_nohash_0.wav"].split == "valid"
    assert by_id["yes/00000002_nohash_0.wav"].split == "test"
    assert by_id["yes/00000000_nohash_1.wav"].split == "train"
    assert by_id["yes/00000000_nohash_1.wav"].labels == ("yes",)
    assert by_id["yes/00000000_nohash_1.wav"].path == root / "yes" / "00000000_nohash_1.wav"
    assert manifest.split_names() == ["train", "valid", "test"]
    assert not any("_background_noise_" in clip.clip_id for clip in manifest.clips)
    assert find_bad_rows(root / "manifest.csv", workers=1)[1] == []


def test_12_classes_map_other_words_to_unknown_and_cut_silence(tmp_path: Path) -> None:
    root = speech_commands(tmp_path / "sc")
    result = run(str(root), "--classes", "12")
    assert result.exit_code == 0, result.output
    # 140 word clips + floor(10.5) + floor(3.0) = 13 one-second silence clips.
    assert "153 clips, 12 labels (single-label)" in result.output
    assert "13 _silence_ clips of 1 s cut from _background_noise_" in result.output
    manifest = read_manifest(root / "manifest.csv")
    assert manifest.label_names == ["_silence_", "_unknown_", *WORDS_10]
    counts = {}
    for clip in manifest.clips:
        counts[(clip.labels[0], clip.split)] = counts.get((clip.labels[0], clip.split), 0) + 1
    assert counts[("yes", "train")] == 2 and counts[("yes", "valid")] == 1 and counts[("yes", "test")] == 1
    assert counts[("_unknown_", "train")] == 50 and counts[("_unknown_", "test")] == 25  # 25 other words
    # Each recording: first 80 % of its seconds train, next 10 % valid, rest test (10 s -> 8/1/1, 3 s -> 2/1/0).
    assert [counts.get(("_silence_", s), 0) for s in ("train", "valid", "test")] == [10, 2, 1]
    silence = [clip for clip in manifest.clips if clip.labels == ("_silence_",)]
    assert silence[0].clip_id == "_silence_/noise0_000.wav"
    wave, rate = sf.read(silence[1].path, dtype="float32")
    original, _ = sf.read(root / "_background_noise_" / "noise0.wav", dtype="float32")
    assert rate == RATE and len(wave) == RATE
    np.testing.assert_array_equal(wave, original[RATE:2 * RATE])
    assert find_bad_rows(root / "manifest.csv", workers=1)[1] == []
    # A 35-word manifest of the same folder ignores the _silence_ folder it wrote.
    assert "140 clips" in run(str(root), "--out", str(root / "m35.csv")).output


def test_fewer_words_than_the_official_35_are_noted(tmp_path: Path) -> None:
    root = speech_commands(tmp_path / "sc", words=("yes", "no", "marvin_2"))
    result = run(str(root))
    assert result.exit_code == 0, result.output
    assert "3 word folders, not the official 35 (missing: backward, bed," in result.output
    assert "extra: marvin_2)" in result.output


@pytest.mark.parametrize(("damage", "message"), [
    (lambda root: (root / "validation_list.txt").unlink(),
     "validation_list.txt: not found; Speech Commands v2 ships validation_list.txt beside the word folders"),
    (lambda root: (root / "testing_list.txt").write_text("yes/gone_nohash_0.wav\n"),
     "testing_list.txt: 1 listed file(s) are not in the word folders, e.g. yes/gone_nohash_0.wav"),
    (lambda root: (root / "testing_list.txt").write_text("yes/00000001_nohash_0.wav\n"),
     "yes/00000001_nohash_0.wav is in both validation_list.txt and testing_list.txt"),
])
def test_damaged_layouts_are_one_line(tmp_path: Path, damage, message: str) -> None:
    root = speech_commands(tmp_path / "sc", words=("yes", "no"))
    damage(root)
    result = run(str(root))
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and message in result.output and result.output.count("\n") == 1, \
        result.output


def test_missing_folders_and_bad_options_are_one_line(tmp_path: Path) -> None:
    result = run(str(tmp_path / "nope"))
    assert result.exit_code == 1 and result.output == f"error: {tmp_path / 'nope'}: folder not found\n"
    result = run(str(tmp_path))
    assert result.exit_code == 1 and "no word folders with .wav files" in result.output
    root = speech_commands(tmp_path / "sc", words=("yes", "no"), noise_seconds=())
    result = run(str(root), "--classes", "12")
    assert result.exit_code == 1
    assert "_background_noise_: no .wav files; the 12-class task cuts its _silence_ clips from them" in result.output
    result = run(str(root), "--out", str(root / "yes" / "m.csv"))
    assert result.exit_code == 1 and "write the manifest in" in result.output
    assert run(str(root), "--classes", "20").exit_code == 2  # click's own choice error
