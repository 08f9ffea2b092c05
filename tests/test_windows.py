"""Long recordings as windows (`extract --window/--hop`): the row plan, exact window tokens, recording-level metrics,
and the round trip through probe, verify, pack, export/import and append."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from click.testing import CliRunner

from embedcache import audio
from embedcache.encoders.melpatch import MelPatch
from embedcache.metrics import multilabel_metrics, pool_by_recording
from embedcache.rows import plan_clips, plan_windows, window_offsets
from embedcache.store import TokenStore
from embedcache.store.verify import verify_store
from embedcache_cli.main import main

RATE = 16000


def test_window_offsets_cover_every_sample_and_end_at_the_recording_end():
    assert window_offsets(12, 5, 5) == [0, 5, 7]  # the last window ends at 12
    assert window_offsets(10, 5, 5) == [0, 5]
    assert window_offsets(5, 5, 5) == [0] and window_offsets(3, 5, 5) == [0]
    assert window_offsets(12, 5, 2) == [0, 2, 4, 6, 7]
    plan = plan_windows(np.array([12, 3]), 5, 5)
    assert plan.clip.tolist() == [0, 0, 0, 1] and plan.offsets.tolist() == [0, 5, 7, 0]
    assert plan.lengths.tolist() == [5, 5, 5, 3] and not plan.lost.any() and plan.capacity == 5
    assert plan.row_ids(["a", "b"]) == ["a#0", "a#1", "a#2", "b#0"]


def test_clip_plan_crops_at_the_bound_and_counts_what_is_lost():
    plan = plan_clips(np.array([100, 250, 40]), limit=200, fixed_input=None)
    assert plan.capacity == 200 and plan.lengths.tolist() == [100, 200, 40] and plan.lost.tolist() == [0, 50, 0]
    fixed = plan_clips(np.array([100, 250]), limit=None, fixed_input=160)
    assert fixed.capacity == 160 and fixed.lost.tolist() == [0, 90]
    assert plan_clips(np.array([100, 250]), None, None).capacity == 250


def test_pooling_windows_takes_the_max_score_and_the_union_of_labels():
    ids, targets, scores = pool_by_recording(
        np.array(["b", "b", "a"]), np.array([[1, 0], [0, 0], [0, 1]], np.uint8),
        np.array([[0.1, 0.2], [0.5, 0.1], [0.3, 0.9]]),
    )
    assert ids.tolist() == ["b", "a"] and targets.tolist() == [[1, 0], [0, 1]]
    assert scores.tolist() == [[0.5, 0.2], [0.3, 0.9]]
    ids, targets, scores = pool_by_recording(
        np.array(["b", "b", "a"]), np.array([[1, 0], [0, 0], [0, 1]], np.uint8),
        np.array([[0.1, 0.2], [0.5, 0.1], [0.3, 0.9]]), reduce="mean",
    )
    assert ids.tolist() == ["b", "a"] and targets.tolist() == [[1, 0], [0, 1]]
    np.testing.assert_allclose(scores, [[0.3, 0.15], [0.3, 0.9]])


def write_recordings(folder: Path, seconds: list[float], first: int = 0) -> Path:
    """Recordings of tones (class low/high) in noise, a manifest with every split."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(first)
    splits = ["train", "valid", "test", "train", "train", "test", "valid", "train"]  # both labels in every split
    rows = ["clip_id,path,labels,split"]
    for i, length in enumerate(seconds):
        t = np.arange(round(length * RATE)) / RATE
        label = ["low", "high"][i % 2]
        wave = 0.05 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * (300 if label == "low" else 3000) * t)
        name = f"rec{first + i:02d}"
        soundfile.write(folder / f"{name}.wav", wave.astype(np.float32), RATE, subtype="FLOAT")
        rows.append(f"{name},{name}.wav,{label},{splits[i % 8]}")
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    return folder / "m.csv"


def extract_windows(manifest: Path, out: Path, *extra: str) -> TokenStore:
    result = CliRunner().invoke(main, ["extract", "--encoder", "melpatch", "--manifest", str(manifest), "--out",
                                       str(out), "--window", "2", "--hop", "1.5", "--workers", "0", "--no-progress",
                                       "--dtype", "float32", *extra])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("nothing cropped")
    return TokenStore.open(out)


@pytest.fixture
def windowed(tmp_path) -> tuple[Path, TokenStore]:
    manifest = write_recordings(tmp_path / "rec", [7.3, 1.2, 5.0, 3.1, 6.0, 2.0, 4.4, 8.0])
    return manifest, extract_windows(manifest, tmp_path / "w.zarr")


def test_window_rows_hold_the_tokens_of_that_stretch_of_audio_alone(windowed):
    manifest, store = windowed
    # rec00 is 7.3 s: windows at 0, 1.5, 3, 4.5 and one ending at 7.3 (5.3 s)
    rows = np.flatnonzero(store.recording_ids == "rec00")
    assert store.clip_ids[rows].tolist() == [f"rec00#{k}" for k in range(5)]
    assert (store.offsets[rows] / RATE).tolist() == pytest.approx([0, 1.5, 3.0, 4.5, 5.3])
    short = int(np.flatnonzero(store.recording_ids == "rec01")[0])  # 1.2 s: one short window, padded
    assert store.offsets[short] == 0 and store.num_samples[short] == round(1.2 * RATE)
    encoder = MelPatch()
    for row in (*rows, short):
        wave = audio.load_segment(manifest.parent / f"{store.recording_ids[row]}.wav", RATE, int(store.offsets[row]),
                                  2 * RATE)
        alone = encoder(torch.from_numpy(wave)[None], [0]).layers[0][0]
        tokens = store.read_tokens(0, int(row), int(row) + 1)[0]
        assert store.valid_tokens[row] == alone.shape[0]
        torch.testing.assert_close(tokens[: alone.shape[0]], alone, atol=1e-5, rtol=1e-5)
    assert store.grid == (12, 4)  # 2 s rows: 201 frames // 16
    assert store.labels[rows].tolist() == [[0, 1]] * 5  # the recording's weak label on every window
    assert set(store.split_codes[rows].tolist()) == {store.spec.split_names.index("train")}


def test_info_and_probe_report_windows_and_recording_level_map(windowed, tmp_path):
    _, store = windowed
    info = CliRunner().invoke(main, ["info", store.path])
    assert f"rows        {store.n_clips} windows of 2 s (hop 1.5 s) from 8 recordings; none cropped" in info.output
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["probe", store.path, "--head", "linear", "--out", str(run), "--epochs", "3",
                                       "--seeds", "1"])
    assert result.exit_code == 0, result.output
    assert "test recording mAP (%)" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["heads"][0]["test"]
    assert "recording_map" in test and test["recording_n_classes_scored"] == 2
    # The recording-level numbers are the mAPs of the test windows' scores (predictions.csv) max- and mean-pooled
    # per recording.
    with open(run / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = metrics["label_names"]
    recordings = np.array([row["recording_id"] for row in rows])
    targets = np.array([[int(row[f"true:{name}"]) for name in names] for row in rows], np.uint8)
    scores = np.array([[float(row[f"score:{name}"]) for name in names] for row in rows])
    for reduce, key in (("max", "recording_map"), ("mean", "recording_mean_map")):
        _, pooled_targets, pooled_scores = pool_by_recording(recordings, targets, scores, reduce)
        expected = multilabel_metrics(pooled_targets, pooled_scores)["map"]
        assert test[key] == pytest.approx(expected, abs=1e-6), key


def test_windows_survive_verify_pack_export_import_and_append(windowed, tmp_path):
    manifest, store = windowed
    assert verify_store(store.path).ok
    runner = CliRunner()
    zipped = tmp_path / "w.zip"
    assert runner.invoke(main, ["pack", store.path, str(zipped)]).exit_code == 0
    from_zip = TokenStore.open(zipped)
    assert from_zip.recording_ids.tolist() == store.recording_ids.tolist()
    assert from_zip.offsets.tolist() == store.offsets.tolist()
    h5 = tmp_path / "w.h5"
    assert runner.invoke(main, ["export", store.path, str(h5)]).exit_code == 0
    back = tmp_path / "back.zarr"
    assert runner.invoke(main, ["import", str(h5), str(back)]).exit_code == 0
    imported = TokenStore.open(back)
    assert imported.recording_ids.tolist() == store.recording_ids.tolist()
    assert imported.offsets.tolist() == store.offsets.tolist() and imported.is_windowed
    assert torch.equal(imported.read_tokens(0, 0, 3), store.read_tokens(0, 0, 3))
    # Append the windows of four more recordings.
    more = extract_windows(write_recordings(tmp_path / "more", [3.0, 9.5, 2.0, 4.0], first=20), tmp_path / "m.zarr")
    result = runner.invoke(main, ["append", str(back), more.path])
    assert result.exit_code == 0, result.output
    grown = TokenStore.open(back)
    assert grown.n_clips == store.n_clips + more.n_clips
    assert len(set(grown.recording_ids.tolist())) == 12
    assert grown.offsets[store.n_clips :].tolist() == more.offsets.tolist()
    assert verify_store(str(back)).ok


def test_window_settings_are_checked(tmp_path):
    manifest = write_recordings(tmp_path / "rec", [3.0, 4.0])
    base = ["extract", "--encoder", "melpatch", "--manifest", str(manifest), "--workers", "0", "--no-progress",
            "--out", str(tmp_path / "x.zarr")]
    runner = CliRunner()
    hop_only = runner.invoke(main, [*base, "--hop", "1"])
    assert hop_only.exit_code == 1 and "--hop needs --window" in hop_only.output
    both = runner.invoke(main, [*base, "--window", "2", "--max-seconds", "3"])
    assert both.exit_code == 1 and "exclude each other" in both.output
    tiny = runner.invoke(main, [*base, "--window", "0.05"])
    assert tiny.exit_code == 1 and "use a window of at least 0.150 s" in tiny.output


def test_two_shards_of_windows_fill_the_store_one_process_would(tmp_path):
    manifest = write_recordings(tmp_path / "rec", [7.3, 1.2, 5.0, 3.1, 6.0, 2.0])
    single = extract_windows(manifest, tmp_path / "one.zarr", "--chunk-clips", "2", "--batch-size", "2")
    sharded = tmp_path / "two.zarr"
    for shard in ("0/2", "1/2"):
        result = CliRunner().invoke(main, ["extract", "--encoder", "melpatch", "--manifest", str(manifest), "--out",
                                           str(sharded), "--window", "2", "--hop", "1.5", "--workers", "0",
                                           "--no-progress", "--dtype", "float32", "--chunk-clips", "2",
                                           "--batch-size", "2", "--shard", shard])
        assert result.exit_code == 0, result.output
    both = TokenStore.open(sharded)
    assert both.clip_ids.tolist() == single.clip_ids.tolist() and both.offsets.tolist() == single.offsets.tolist()
    assert torch.equal(both.read_tokens(0, 0, both.n_clips), single.read_tokens(0, 0, single.n_clips))
