"""Sound-event detection from the token cache (issue 14, part 2): strong labels read from DESED / URBAN-SED files and
kept in the store, mapped onto the encoder's token grid, a frame head and weakly trained prototype maps scored with
sed_scores_eval, the run's files, and the timeline figure."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner
from matplotlib.figure import Figure

from embedcache import sed
from embedcache.datasets import read_manifest
from embedcache.datasets.events import from_desed, from_urbansed, read_events
from embedcache.datasets.sample import build_tone_events
from embedcache.encoders.catalog import FAMILIES, parameters_on_meta
from embedcache.errors import BadInputError, ConfigError, StoreError
from embedcache.events import Events, TimeSteps, frame_targets, row_events, strong_rows
from embedcache.extract import ExtractConfig, extract
from embedcache.probe import run_probe
from embedcache.report import build_report, figures
from embedcache.report.evidence import Background
from embedcache.store import TokenStore
from embedcache.store.verify import verify_store
from embedcache_cli.main import main as cli

RATE = 16000
# melpatch with 4-frame x 32-bin patches: 40 ms time steps, two frequency tokens per step.
MELPATCH = {"patch_time": 4, "patch_freq": 32}
SED_CONFIG = {"task": "sed", "grid": {"lr": [1e-2], "weight_decay": [1e-4]},
              "train": {"epochs": 20, "batch_size": 16, "device": "cpu"}}


# -- strong labels on the token grid ---------------------------------------------------------------------------
def _built(name: str):
    with parameters_on_meta():
        return FAMILIES[name].build()


def _steps(targets: np.ndarray, code: int) -> list[int]:
    return np.flatnonzero(targets[:, code]).tolist()


@pytest.mark.parametrize(("family", "grid", "steps", "expected"), [
    # BEATs: kaldi fbank (snip edges), 25 ms = 400-sample frames every 160 samples, 16-frame patches, 128 bins / 16:
    # step t covers [2560 t, 2560 t + 15 * 160 + 400) = [2560 t, 2560 t + 2800).
    # Event A, 1.0-2.0 s = [16000, 32000): 2560 t < 32000 -> t <= 12; 2560 t + 2800 > 16000 -> t >= 6 (t = 5 ends
    # at 15600). Event B, 6.0-6.5 s = [96000, 104000): t <= 40 (102400 < 104000), t >= 37 (36 ends at 94960).
    # The window from 5 s (offset 80000, 5 s long) sees B at [16000, 24000): t >= 6, t <= 9 (23040 < 24000).
    ("beats", (62, 8), {"start": 0, "span": 2800, "stride": 2560}, {"A": range(6, 13), "B": range(37, 41),
                                                                    "B in window": range(6, 10)}),
    # Dasheng: centred mel frames of a 512-sample window every 160 samples, 4-frame full-band patches: step t
    # covers [640 t - 256, 640 t - 256 + 3 * 160 + 512) = [640 t - 256, 640 t + 736).
    # A: 640 t + 736 > 16000 -> t >= 24 (23 ends at 15456); 640 t - 256 < 32000 -> t <= 50 (50: 31744).
    # B: 640 t + 736 > 96000 -> t >= 149 (148: 95456); 640 t - 256 < 104000 -> t <= 162 (162: 103424).
    # B in the window, [16000, 24000): t >= 24, 640 t - 256 < 24000 -> t <= 37 (37: 23424).
    ("dasheng", (250, 1), {"start": -256, "span": 992, "stride": 640}, {"A": range(24, 51), "B": range(149, 163),
                                                                        "B in window": range(24, 38)}),
])
def test_strong_labels_map_to_the_time_steps_the_encoders_frames_cover(family, grid, steps, expected):
    encoder = _built(family)
    assert encoder.token_grid(10 * RATE) == grid
    assert encoder.time_steps() == steps
    time_steps = TimeSteps.from_dict(steps)
    events = Events(np.array(["rec", "rec"]), np.array([16000, 96000]), np.array([32000, 104000]),
                    np.array([0, 1], np.int32))
    # Row 0: the whole 10 s recording; row 1: its 5 s window from 5 s on (offsets shift the events).
    lengths = np.array([160000, 80000])
    rows = row_events(events, ["rec", "rec"], np.array([0, 80000]), lengths)
    assert rows == [[(16000, 32000, 0), (96000, 104000, 1)], [(16000, 24000, 1)]]
    whole = frame_targets(rows[:1], lengths[:1], time_steps, grid[0], 2)[0]
    window = frame_targets(rows[1:], lengths[1:], time_steps, encoder.token_grid(5 * RATE)[0], 2)[0]
    assert _steps(whole, 0) == list(expected["A"])
    assert _steps(whole, 1) == list(expected["B"])
    assert _steps(window, 0) == [] and _steps(window, 1) == list(expected["B in window"])


def test_strong_rows_are_those_with_events_or_no_label_and_boundaries_partition_the_row():
    events = Events(np.array(["a"]), np.array([0]), np.array([10]), np.array([0], np.int32))
    labels = np.array([[1, 0], [1, 0], [0, 0]], np.uint8)
    assert strong_rows(events, ["a", "b", "c"], labels).tolist() == [True, False, True]  # b: weak labels only
    steps = TimeSteps(0, 2800, 2560)
    bounds = steps.boundaries(3, 10000)
    assert bounds.tolist() == [0.0, 2680.0, 5240.0, 7800.0]  # centred strides: 1400 + 2560 t -+ 1280, from 0
    assert np.all(np.diff(steps.boundaries(62, 160000)) > 0)


def test_median_filter_and_event_detection():
    scores = np.array([[0.1], [0.9], [0.1], [0.8], [0.9], [0.7], [0.2]])
    assert sed.median_filter(scores, 3)[:, 0].tolist() == [0.1, 0.1, 0.8, 0.8, 0.8, 0.7, 0.2]
    assert sed.filter_steps(0.5, 0.04) == 13 and sed.filter_steps(0.0, 0.04) == 1 and sed.filter_steps(0.3, 0.16) == 3
    line = sed.Timeline("c", np.arange(8) * 0.5, sed.median_filter(scores, 3), 3.5, [])
    assert sed.detect_events(line, ["x"], 0.5) == [(1.0, 3.0, "x", 0.8)]  # steps 2-5, scored at their best


# -- events files and adapters ---------------------------------------------------------------------------------
def _wav(path: Path, seconds: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(int(seconds * RATE), np.float32), RATE, subtype="PCM_16")
    return path


def test_events_file_rows_are_checked_against_the_manifest(tmp_path):
    for name in ("a", "b"):
        _wav(tmp_path / "audio" / f"{name}.wav")
    (tmp_path / "manifest.csv").write_text("clip_id,path,labels,split\na,audio/a.wav,dog,train\n"
                                           "b,audio/b.wav,dog;cat,test\n")
    manifest = read_manifest(tmp_path / "manifest.csv")
    good = tmp_path / "good.tsv"
    good.write_text("filename\tonset\toffset\tevent_label\na.wav\t0.1\t0.5\tdog\nb\t0\t0.2\tdog\nb\t0.3\t0.9\tcat\n")
    events = read_events(good, manifest)
    assert [(e.clip, e.onset, e.offset, e.label) for e in events] == [(0, 0.1, 0.5, "dog"), (1, 0.0, 0.2, "dog"),
                                                                      (1, 0.3, 0.9, "cat")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("filename\tonset\toffset\tevent_label\nzzz\t0\t1\tdog\na\t0.5\t0.2\tdog\na\t0\t1\tbird\n"
                   "b\t0\t1\tdog\n")
    with pytest.raises(BadInputError) as caught:
        read_events(bad, manifest)
    reasons = dict(caught.value.problems)
    assert "neither a clip id" in reasons["bad.tsv line 2"] and "0 <= onset < offset" in reasons["bad.tsv line 3"]
    assert "not in the label vocabulary" in reasons["bad.tsv line 4"]
    assert "label(s) ['cat'] but no such event" in reasons["b"]


def test_desed_and_urbansed_adapters_write_manifest_labels_and_events(tmp_path):
    desed = tmp_path / "DESED"
    for folder, tsv, rows in (
        ("audio/train/synthetic21_train/soundscapes", "metadata/train/synthetic21_train/soundscapes.tsv",
         [("0.wav", 0.5, 1.5, "Dog"), ("0.wav", 1.0, 2.0, "Dog"), ("1.wav", 0.0, 1.0, "Speech")]),
        ("audio/validation/synthetic21_validation/soundscapes",
         "metadata/validation/synthetic21_validation/soundscapes.tsv", [("0.wav", 0.2, 0.4, "Speech")]),
        ("audio/validation/validation", "metadata/validation/validation.tsv", [("Y1.wav", 0.1, 0.9, "Dog")]),
    ):
        for name in {row[0] for row in rows}:
            _wav(desed / folder / name, 3.0)
        (desed / tsv).parent.mkdir(parents=True, exist_ok=True)
        (desed / tsv).write_text("filename\tonset\toffset\tevent_label\n"
                                 + "".join(f"{n}\t{a}\t{b}\t{c}\n" for n, a, b, c in rows))
    _wav(desed / "audio/validation/validation/unlisted.wav")
    path, left_out = from_desed(desed)
    manifest = read_manifest(path)
    assert [(c.clip_id, c.labels, c.split) for c in manifest.clips] == [
        ("train/0", ("Dog",), "train"), ("train/1", ("Speech",), "train"), ("valid/0", ("Speech",), "valid"),
        ("test/Y1", ("Dog",), "test")]
    assert left_out == [("test/unlisted.wav", "no row in validation.tsv")]
    with open(path.parent / "events.tsv", newline="") as handle:
        rows = [tuple(row) for row in csv.reader(handle, delimiter="\t")]
    # Overlapping events of one label are joined (scoring tools count them as one).
    assert rows[:3] == [("filename", "onset", "offset", "event_label"), ("train/0", "0.500000", "2.000000", "Dog"),
                        ("train/1", "0.000000", "1.000000", "Speech")]
    assert len(read_events(path.parent / "events.tsv", manifest)) == 4

    # An infinite offset is refused by the adapter with its line, as read_events refuses it.
    tsv = desed / "metadata/validation/validation.tsv"
    tsv.write_text("filename\tonset\toffset\tevent_label\nY1.wav\t0.1\tinf\tDog\n")
    with pytest.raises(ConfigError, match=r"validation.tsv line 2: onset 0.1 s and offset inf s: need 0 <= onset"):
        from_desed(desed)

    urban = tmp_path / "URBAN-SED"
    for folder in ("train", "validate", "test"):
        _wav(urban / "audio" / folder / f"soundscape_{folder}0.wav", 2.0)
        (urban / "annotations" / folder).mkdir(parents=True)
        (urban / "annotations" / folder / f"soundscape_{folder}0.txt").write_text(
            "0.25\t1.5\tsiren\n1.0\t1.75\tdog_bark\n")
    path = from_urbansed(urban)
    manifest = read_manifest(path)
    assert [c.split for c in manifest.clips] == ["train", "valid", "test"]
    assert manifest.label_names == ["dog_bark", "siren"] and manifest.clips[0].labels == ("dog_bark", "siren")
    assert len(read_events(path.parent / "events.tsv", manifest)) == 6


# -- a generated sound-event set, extracted and probed once --------------------------------------------------------
@pytest.fixture(scope="module")
def tone_run(tmp_path_factory):
    """Tone events at seeded onsets (build_tone_events), extracted with melpatch, probed with --task sed:
    frame_linear on the strong labels, protobin on the clip labels only."""
    root = tmp_path_factory.mktemp("sed")
    manifest = build_tone_events(root / "tones", n_clips=60)
    store = root / "tones.zarr"
    extract(ExtractConfig(encoder="melpatch", manifest=str(manifest), out=str(store), encoder_options=MELPATCH,
                          progress=False, workers=0))
    report = run_probe(store, ["frame_linear", "protobin"], root / "runs" / "sed", config=SED_CONFIG,
                       log=lambda _: None)
    return {"root": root, "manifest": manifest, "store": store, "report": report}


def test_extract_keeps_the_events_beside_the_tokens(tone_run):
    store = TokenStore.open(tone_run["store"])
    assert store.has_events and store.time_steps == TimeSteps(-200, 3 * 160 + 400, 640)
    assert store.provenance["fingerprint_fields"]["events_sha256"]
    events = store.events
    with open(tone_run["manifest"].parent / "events.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(events) == len(rows)
    first = rows[0]
    assert events.recording_ids[0] == first["filename"]
    assert events.onsets[0] == round(float(first["onset"]) * RATE)  # samples at the encoder's rate
    assert store.label_names[events.labels[0]] == first["event_label"]
    assert verify_store(tone_run["store"]).ok
    targets, strong = store.strong_targets(store.selected)
    assert strong.all() and targets.shape == (60, store.grid[0], 3)
    assert (targets.max(axis=1) == store.labels).all()  # every weak label has its steps, and only those


def test_convert_and_hdf5_export_import_keep_the_events(tone_run, tmp_path):
    source = TokenStore.open(tone_run["store"])
    converted = tmp_path / "int8.zarr"
    assert cli_ok(["convert", str(tone_run["store"]), str(converted), "--dtype", "int8", "--no-progress"])
    assert cli_ok(["export", str(tone_run["store"]), str(tmp_path / "s.h5")])
    assert cli_ok(["import", str(tmp_path / "s.h5"), str(tmp_path / "back.zarr")])
    for path in (converted, tmp_path / "back.zarr"):
        store = TokenStore.open(path)
        assert store.has_events and store.time_steps == source.time_steps and verify_store(path).ok
        for name in ("recording_ids", "onsets", "offsets", "labels"):
            assert np.array_equal(getattr(store.events, name), getattr(source.events, name)), (path, name)
        assert np.array_equal(store.strong_targets(store.selected)[0], source.strong_targets(source.selected)[0])
    report = run_probe(converted, ["frame_linear"], tmp_path / "run", config=SED_CONFIG, log=lambda _: None)
    assert (report.run_dir / "sed.csv").exists() and (report.run_dir / "event_predictions.csv").exists()


def test_predict_on_a_sed_run_gives_its_clip_scores_and_events_and_detects_events_in_new_audio(tone_run, tmp_path):
    run_dir = tone_run["report"].run_dir
    out = tmp_path / "p.csv"
    assert cli_ok(["predict", str(run_dir), str(tone_run["store"]), "--split", "test", "--out", str(out)])
    assert out.read_text() == (run_dir / "predictions.csv").read_text()  # sigmoid clip scores, as the run's

    def events_of(path):
        with open(path, newline="") as handle:
            return sorted((r["head"], r["seed"], r["clip_id"], r["onset"], r["offset"], r["label"]) for r in
                          csv.DictReader(handle))

    found = events_of(tmp_path / "p.events.csv")
    assert found and found == events_of(run_dir / "event_predictions.csv")
    assert {row[0] for row in found} == {"frame_linear", "protobin"}

    # New audio without any strong labels: extracted with the run's encoder, its events detected.
    fresh = build_tone_events(tmp_path / "fresh", n_clips=20, seed=7)
    with open(fresh.parent / "events.tsv", newline="") as handle:
        truth = {(row["filename"], row["event_label"]) for row in csv.DictReader(handle, delimiter="\t")}
    (fresh.parent / "events.tsv").unlink()
    assert cli_ok(["predict", str(run_dir), str(fresh), "--out", str(tmp_path / "new.csv")])
    detected = [row for row in events_of(tmp_path / "new.events.csv") if row[0] == "frame_linear"]
    assert truth and {(clip, label) for _, _, clip, _, _, label in detected} >= truth


def test_window_timelines_join_per_recording_averaging_where_windows_overlap():
    from types import SimpleNamespace

    events = Events(np.array(["r"]), np.array([8000]), np.array([24000]), np.array([0], np.int32))
    store = SimpleNamespace(sample_rate=16000, label_names=["a"], view_events=events,
                            recording_ids=np.array(["r", "r"]), offsets=np.array([0, 16000]))
    windows = [sed.Timeline("r#0", np.array([0.0, 1.0, 2.0]), np.array([[0.2], [0.4]]), 2.0, []),
               sed.Timeline("r#1", np.array([0.0, 1.0, 2.0]), np.array([[0.6], [0.8]]), 2.0, [])]
    (line,) = sed.recording_timelines(store, np.array([0, 1]), windows)
    assert line.clip_id == "r" and line.duration == 3.0 and line.truth == [(0.5, 1.5, "a")]
    assert line.timestamps.tolist() == [0.0, 1.0, 2.0, 3.0]
    np.testing.assert_allclose(line.scores[:, 0], [0.2, 0.5, 0.8])  # the overlap [1, 2) s: both windows, averaged


def test_sed_on_windows_scores_and_reports_events_per_recording(tmp_path):
    manifest = build_tone_events(tmp_path / "tones", n_clips=40)
    store_path = tmp_path / "windows.zarr"
    extract(ExtractConfig(encoder="melpatch", manifest=str(manifest), out=str(store_path), encoder_options=MELPATCH,
                          progress=False, workers=0, window=2.0, hop=1.0))
    store = TokenStore.open(store_path)
    assert store.is_windowed and store.has_events
    report = run_probe(store_path, ["frame_linear"], tmp_path / "run", config=SED_CONFIG, log=lambda _: None)
    with open(report.run_dir / "event_predictions.csv", newline="") as handle:
        found = list(csv.DictReader(handle))
    test_recordings = set(store.recording_ids[store.split_indices("test")].tolist())
    assert found and {row["clip_id"] for row in found} <= test_recordings  # recordings, not window rows
    assert max(float(row["offset"]) for row in found) > 2.0  # in the recording's time, past the first window
    (result,) = report.results
    assert result.test["event_f1"] > 0.8  # each tone found once per recording, not once per window holding it


def test_an_export_whose_events_were_edited_is_refused_in_one_line(tone_run, tmp_path):
    import h5py

    assert cli_ok(["export", str(tone_run["store"]), str(tmp_path / "s.h5")])
    with h5py.File(tmp_path / "s.h5", "r+") as handle:
        handle["events/labels"][0] = 99
    result = CliRunner().invoke(cli, ["import", str(tmp_path / "s.h5"), str(tmp_path / "back.zarr")])
    assert result.exit_code == 1 and "/events/labels: codes outside 0..2" in result.output, result.output
    assert not (tmp_path / "back.zarr").exists()


def cli_ok(args: list[str]) -> bool:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return True


def test_a_frame_head_finds_the_events_and_weak_protobin_maps_localise_them_above_chance(tone_run):
    report = tone_run["report"]
    run_dir = report.run_dir
    results = {result.name: result for result in report.results}
    frame, weak = results["frame_linear"], results["protobin"]
    # frame_linear learns from per-step labels and is chosen on frame mAP; protobin only ever sees clip labels.
    assert (frame.metric, weak.metric) == ("frame_map", "map")
    assert frame.test["event_f1"] > 0.8 and frame.test["psds1"] > 0.8
    with open(run_dir / "sed.csv", newline="") as handle:
        rows = {row["head"]: row for row in csv.DictReader(handle)}
    chance = [rows["chance:random"], rows["chance:prior"]]
    # Chance: frame scores that know nothing of the audio, uniform random or each class's training step rate.
    for key, margin in (("frame_map", 0.4), ("psds1", 0.4), ("segment_f1", 0.1)):
        best_chance = max(float(row[key]) for row in chance)
        assert weak.test[key] > best_chance + margin, (key, weak.test[key], best_chance)
        assert float(rows["protobin"][key]) == pytest.approx(weak.test[key])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"psds1", "psds2", "event_f1", "segment_f1"} <= set(metrics["heads"][0]["test"])
    with open(run_dir / "event_predictions.csv", newline="") as handle:
        predicted = list(csv.DictReader(handle))
    assert list(predicted[0]) == ["head", "seed", "clip_id", "onset", "offset", "label", "score"]
    assert {row["head"] for row in predicted} == {"frame_linear", "protobin"}
    assert all(0 <= float(row["onset"]) < float(row["offset"]) <= 5.0 for row in predicted)


def test_metrics_agree_with_sed_scores_eval_called_directly(tone_run):
    import sed_scores_eval
    from sed_scores_eval.base_modules.scores import create_score_dataframe

    store = TokenStore.open(tone_run["store"])
    rows = store.split_indices("test")
    # Scores that know the events, plus noise held for 10 steps at a time: every metric lands between 0 and 1.
    targets, _ = store.strong_targets(rows)
    noise = np.random.default_rng(3).random((len(rows), targets.shape[1] // 10 + 1, 3)).repeat(10, axis=1)
    scores = 0.5 * targets + 0.6 * noise[:, : targets.shape[1]]
    lines = sed.timelines(store, rows, scores, 0.0)
    ours = sed.sed_metrics(lines, store.label_names, threshold=0.6)
    # The library on its own reading of events.tsv (DESED's format), and on score tables built here.
    truth = sed_scores_eval.io.read_ground_truth_events(tone_run["manifest"].parent / "events.tsv")
    ids = [str(store.clip_ids[row]) for row in rows]
    truth = {clip: truth.get(clip, []) for clip in ids}
    tables, durations = {}, {}
    for i, (clip, row) in enumerate(zip(ids, rows, strict=True)):
        steps = int(store.valid_tokens[row]) // store.grid[1]
        # Step t covers [640 t - 200, 640 t + 680): its 40 ms cell is centred there, [640 t - 80, 640 t + 560).
        stamps = (640 * np.arange(steps + 1) - 80) / RATE
        stamps[0] = 0.0
        tables[clip] = create_score_dataframe(scores[i, :steps], stamps, store.label_names)
        durations[clip] = 5.0
    direct = {
        "psds1": sed_scores_eval.intersection_based.psds(
            scores=tables, ground_truth=truth, audio_durations=durations, dtc_threshold=0.7, gtc_threshold=0.7,
            cttc_threshold=None, alpha_ct=0.0, alpha_st=1.0, max_efpr=100.0)[0],
        "psds2": sed_scores_eval.intersection_based.psds(
            scores=tables, ground_truth=truth, audio_durations=durations, dtc_threshold=0.1, gtc_threshold=0.1,
            cttc_threshold=0.3, alpha_ct=0.5, alpha_st=1.0, max_efpr=100.0)[0],
        "event_f1": sed_scores_eval.collar_based.fscore(
            scores=tables, ground_truth=truth, threshold=0.6, onset_collar=0.2, offset_collar=0.2,
            offset_collar_rate=0.2)[0]["macro_average"],
        "segment_f1": sed_scores_eval.segment_based.fscore(
            scores=tables, ground_truth=truth, audio_durations=durations, threshold=0.6, segment_length=1.0,
        )[0]["macro_average"],
    }
    assert all(0.3 < ours[key] <= 1.0 for key in direct) and max(ours["psds1"], ours["event_f1"]) < 0.9, ours
    for key, value in direct.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key


def test_report_draws_true_and_predicted_timelines_over_the_spectrogram(tone_run, tmp_path):
    result = build_report(tone_run["report"].run_dir, tmp_path / "report", n_clips=3)
    drawn = [path for path in result.images if path.name.startswith("events_")]
    assert len(drawn) == 3 and all(path.stat().st_size > 0 for path in drawn)
    assert "true and predicted timelines" in (tmp_path / "report" / "report.html").read_text()


def test_event_timeline_figure_draws_one_lane_per_class_and_source():
    background = Background(np.random.default_rng(0).random((64, 500)), "spectrogram", 5.0, "log-mel of x.wav")
    truth = [(0.5, 1.5, "dog"), (2.0, 3.0, "cat")]
    predicted = {"frame_linear": [(0.45, 1.6, "dog", 0.9)], "protobin": [(1.9, 3.1, "cat", 0.6), (4.0, 4.5, "dog",
                                                                                                  0.55)]}
    figure = figures.event_timeline_figure("x", background, 5.0, ["dog", "cat"], truth, predicted)
    assert isinstance(figure, Figure)
    spectrum, timeline = figure.axes[:2]
    assert spectrum.images and spectrum.images[0].get_extent() == [0.0, 5.0, 0.0, 64.0]
    assert timeline.get_xlim() == (0.0, 5.0)
    labels = [tick.get_text() for tick in timeline.get_yticklabels()]
    assert labels == ["dog · true", "dog · frame_linear", "dog · protobin", "cat · true", "cat · frame_linear",
                      "cat · protobin"]
    lanes = dict(zip(labels, timeline.get_yticks(), strict=True))
    # Every true and predicted event is one bar from its onset, in its class and source's lane.
    bars = sorted((round(float(x), 2), round(float(y) + 0.35, 2)) for x, y in
                  (collection.get_paths()[0].vertices.min(axis=0) for collection in timeline.collections))
    assert bars == sorted([(0.5, lanes["dog · true"]), (2.0, lanes["cat · true"]), (0.45, lanes["dog · frame_linear"]),
                           (1.9, lanes["cat · protobin"]), (4.0, lanes["dog · protobin"])])
    dog_true = [c for c in timeline.collections if math.isclose(c.get_paths()[0].vertices.min(axis=0)[0], 0.5)]
    assert tuple(dog_true[0].get_facecolor()[0][:3]) == pytest.approx((0x22 / 255,) * 3)


# -- refusals ----------------------------------------------------------------------------------------------------
def test_task_sed_refuses_heads_without_frames_stores_without_events_and_a_missing_extra(tone_run, tmp_path,
                                                                                          monkeypatch):
    with pytest.raises(ConfigError, match="give no frame scores; use frame_linear"):
        run_probe(tone_run["store"], ["linear"], tmp_path / "a", config=SED_CONFIG, log=lambda _: None)
    plain = tmp_path / "plain.zarr"
    extract(ExtractConfig(encoder="melpatch", manifest=str(tone_run["manifest"]), out=str(plain),
                          events=None, progress=False, workers=0, encoder_options=MELPATCH, max_seconds=2.0))
    (tone_run["manifest"].parent / "events.tsv").rename(tmp_path / "moved.tsv")
    try:
        bare = tmp_path / "bare.zarr"
        extract(ExtractConfig(encoder="melpatch", manifest=str(tone_run["manifest"]), out=str(bare),
                              progress=False, workers=0, encoder_options=MELPATCH))
    finally:
        (tmp_path / "moved.tsv").rename(tone_run["manifest"].parent / "events.tsv")
    assert not TokenStore.open(bare).has_events and TokenStore.open(plain).has_events  # events.tsv is the default
    with pytest.raises(ConfigError, match="keeps no sound events.*events.tsv beside the manifest"):
        run_probe(bare, ["frame_linear"], tmp_path / "b", config=SED_CONFIG, log=lambda _: None)
    with pytest.raises(StoreError, match="keeps no sound events"):
        TokenStore.open(bare).strong_targets(np.arange(2))
    monkeypatch.setitem(__import__("sys").modules, "sed_scores_eval", None)
    result = CliRunner().invoke(cli, ["probe", str(tone_run["store"]), "--task", "sed", "--head", "frame_linear",
                                      "--out", str(tmp_path / "c"), "--epochs", "1", "--device", "cpu"])
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1].endswith("pip install 'embedcache[sed]'")
