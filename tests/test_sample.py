"""The bundled recordings and the deterministic multi-label sample-set builder."""

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from embedcache.datasets import build_sample_set, find_bad_rows, read_manifest
from embedcache.datasets.sample import SOURCES_DIR
from embedcache.errors import ConfigError

CLIP_SECONDS = 4.0
N_CLIPS = 40


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small build shared by the read-only checks below."""
    out = tmp_path_factory.mktemp("sample")
    build_sample_set(out, n_clips=N_CLIPS, clip_seconds=CLIP_SECONDS, seed=0)
    return out


def read_events(folder: Path) -> list[dict[str, str]]:
    """Rows of events.csv."""
    with open(folder / "events.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def all_bytes(folder: Path) -> dict[str, bytes]:
    """Relative path -> file bytes for every file under folder."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bundled_sources_are_small_licensed_and_complete() -> None:
    total = sum(p.stat().st_size for p in SOURCES_DIR.parent.rglob("*") if p.is_file() and "sample" not in p.parts)
    assert total < 5 * 1024 * 1024
    with open(SOURCES_DIR / "classes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    attribution = (SOURCES_DIR / "LICENSE-ATTRIBUTION.md").read_text()
    assert "CC0" in attribution and "sonic-pi-samples" in attribution and "3.2.2~repack-8" in attribution
    for row in rows:
        info = sf.info(SOURCES_DIR / row["file"])
        assert (info.samplerate, info.channels) == (16000, 1)
        assert info.duration == pytest.approx(float(row["seconds"]), abs=1e-3)
        if row["role"] == "event":
            assert info.duration <= 1.5
        assert f"| {row['file']} |" in attribution and "freesound.org" in row["source"]
    assert {row["role"] for row in rows} == {"event", "background"}


def test_manifest_splits_and_labels(sample_dir: Path) -> None:
    manifest = read_manifest(sample_dir / "manifest.csv")
    assert len(manifest) == N_CLIPS
    assert manifest.split_names() == ["train", "valid", "test"]
    assert [sum(c.split == s for c in manifest.clips) for s in ("train", "valid", "test")] == [28, 6, 6]
    assert manifest.label_names == ["bass_drum", "snare", "tabla", "cymbal", "vinyl_scratch", "electronic_blip"]
    assert "ambient" not in manifest.label_names  # the background bed is never a label
    assert manifest.is_multilabel()
    matrix = manifest.label_matrix()
    assert set(matrix.sum(axis=1)) <= {1, 2, 3} and matrix.sum(axis=1).max() >= 2
    for split in ("train", "valid", "test"):
        rows = [i for i, c in enumerate(manifest.clips) if c.split == split]
        assert matrix[rows].sum(axis=0).min() >= 1, f"{split} lacks a class"
    good, bad = find_bad_rows(sample_dir / "manifest.csv", workers=1)
    assert bad == [] and len(good) == N_CLIPS


def test_events_match_labels_and_are_short(sample_dir: Path) -> None:
    manifest = read_manifest(sample_dir / "manifest.csv")
    events = read_events(sample_dir)
    for clip in manifest.clips:
        labels = {e["label"] for e in events if e["clip_id"] == clip.clip_id}
        assert labels == set(clip.labels)
    for event in events:
        onset, offset = float(event["onset_s"]), float(event["offset_s"])
        assert 0.0 <= onset < offset <= CLIP_SECONDS
        assert offset - onset <= 1.5 + 1e-4  # times are written with 4 decimals


def test_events_stand_out_of_a_quiet_background(sample_dir: Path) -> None:
    events = read_events(sample_dir)
    inside, outside, coverage = [], [], []
    for clip_path in sorted((sample_dir / "audio").glob("*.flac")):
        wave, rate = sf.read(clip_path, dtype="float32")
        assert rate == 16000 and wave.shape == (CLIP_SECONDS * rate,)
        mask = np.zeros(len(wave), bool)
        for event in (e for e in events if e["clip_id"] == clip_path.stem):
            # Only the first 50 ms of each event: one-shots decay, their attack is always loud.
            start = int(float(event["onset_s"]) * rate)
            mask[start: start + int(0.05 * rate)] = True
        inside.append(np.sqrt(np.mean(wave[mask] ** 2)))
        covered = np.zeros(len(wave), bool)
        for event in (e for e in events if e["clip_id"] == clip_path.stem):
            covered[int(float(event["onset_s"]) * rate): int(float(event["offset_s"]) * rate) + 1] = True
        outside.append(np.sqrt(np.mean(wave[~covered] ** 2)))
        coverage.append(covered.mean())
    # ~2 events of ~0.65 s in 4 s cover about a third of a clip: most of it is background only.
    assert np.mean(coverage) < 0.4
    level_db = 20 * np.log10(np.median(inside) / np.median(outside))
    assert level_db > 20.0
    assert 20 * np.log10(np.median(outside)) < -30.0


def test_event_recordings_are_disjoint_between_splits(sample_dir: Path) -> None:
    split_of = {c.clip_id: c.split for c in read_manifest(sample_dir / "manifest.csv").clips}
    sources: dict[str, set[str]] = {"train": set(), "valid": set(), "test": set()}
    for event in read_events(sample_dir):
        sources[split_of[event["clip_id"]]].add(event["source"])
    assert not sources["train"] & sources["valid"]
    assert not sources["train"] & sources["test"]
    assert not sources["valid"] & sources["test"]


def test_same_seed_gives_byte_identical_files(tmp_path: Path, sample_dir: Path) -> None:
    again = build_sample_set(tmp_path / "again", n_clips=N_CLIPS, clip_seconds=CLIP_SECONDS, seed=0)
    assert again == tmp_path / "again" / "manifest.csv"
    assert all_bytes(tmp_path / "again") == all_bytes(sample_dir)
    other = build_sample_set(tmp_path / "other", n_clips=N_CLIPS, clip_seconds=CLIP_SECONDS, seed=1)
    assert (other.parent / "events.csv").read_bytes() != (sample_dir / "events.csv").read_bytes()


def test_rebuild_removes_stale_clips_and_writes_wav(tmp_path: Path) -> None:
    build_sample_set(tmp_path, n_clips=45, clip_seconds=2.0)
    manifest = read_manifest(build_sample_set(tmp_path, n_clips=40, clip_seconds=2.0, audio_format="wav"))
    files = sorted(p.name for p in (tmp_path / "audio").iterdir())
    assert files == [f"clip_{i:04d}.wav" for i in range(40)]
    assert sf.info(manifest.clips[0].path).format == "WAV"


def test_default_size_and_too_few_clips(tmp_path: Path) -> None:
    manifest = read_manifest(build_sample_set(tmp_path))
    assert [sum(c.split == s for c in manifest.clips) for s in ("train", "valid", "test")] == [84, 18, 18]
    assert sf.info(manifest.clips[0].path).duration == 5.0
    with pytest.raises(ConfigError, match="n_clips >= 40"):
        build_sample_set(tmp_path / "tiny", n_clips=20)
    with pytest.raises(ConfigError, match="audio_format"):
        build_sample_set(tmp_path / "mp3", audio_format="mp3")
