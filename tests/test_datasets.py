"""Manifests (CSV/JSONL, vocabulary, bad rows, full-decode checks), layout adapters and the manifest CLI."""

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from embedcache.datasets import (
    Clip,
    find_bad_rows,
    from_audioset,
    from_class_folders,
    from_esc50,
    from_fsd50k,
    read_manifest,
    write_manifest,
)
from embedcache.errors import BadInputError, ConfigError
from embedcache_cli.main import main as cli_main


def write_wav(path: Path, seconds: float = 0.1, rate: int = 8000, value: float = 0.1) -> Path:
    """A tiny constant-valued wav file (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(int(seconds * rate), value, np.float32), rate)
    return path


def write_csv(path: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    """A CSV file with an optional header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


HEADER = ["clip_id", "path", "labels", "split"]


# ---- manifests -------------------------------------------------------------------------------------------------


def test_csv_manifest_round_trip(tmp_path: Path) -> None:
    write_wav(tmp_path / "audio" / "a.wav")
    write_wav(tmp_path / "audio" / "b.wav")
    write_wav(tmp_path / "c.wav")
    path = write_csv(tmp_path / "m.csv", [
        ["a", "audio/a.wav", "dog", "train"],
        ["b", "audio/b.wav", "cat; dog", "valid"],
        ["c", "./c.wav", "", "train"],
    ], HEADER)
    manifest = read_manifest(path)
    assert [c.clip_id for c in manifest.clips] == ["a", "b", "c"]
    assert manifest.clips[0] == Clip("a", tmp_path.resolve() / "audio" / "a.wav", ("dog",), "train")
    assert manifest.clips[2].path == tmp_path.resolve() / "c.wav"
    assert manifest.label_names == ["cat", "dog"]  # sorted when there is no vocabulary file
    np.testing.assert_array_equal(manifest.label_matrix(), [[0, 1], [1, 1], [0, 0]])
    assert manifest.label_matrix().dtype == np.uint8
    assert manifest.split_names() == ["train", "valid"]
    assert manifest.is_multilabel()
    assert manifest.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest.source == path.resolve()


def test_single_label_manifest_is_not_multilabel(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", [["a", "a.wav", "x", "test"], ["b", "b.wav", "y", "train"]], HEADER)
    manifest = read_manifest(path)
    assert not manifest.is_multilabel()
    assert manifest.split_names() == ["test", "train"]


def test_jsonl_manifest_accepts_lists_and_strings(tmp_path: Path) -> None:
    lines = [
        {"clip_id": "a", "path": "a.flac", "labels": ["x", "y"], "split": "train"},
        {"clip_id": 7, "path": "sub/b.wav", "labels": "y", "split": "test"},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    manifest = read_manifest(path)
    assert [(c.clip_id, c.labels, c.split) for c in manifest.clips] == [("a", ("x", "y"), "train"),
                                                                         ("7", ("y",), "test")]
    np.testing.assert_array_equal(manifest.label_matrix(), [[1, 1], [0, 1]])


def test_labels_txt_beside_the_manifest_fixes_order_and_enters_the_hash(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", [["a", "a.wav", "zebra", "train"], ["b", "b.wav", "ant", "train"]], HEADER)
    (tmp_path / "labels.txt").write_text("zebra\n\nant\nbee\n")
    manifest = read_manifest(path)
    assert manifest.label_names == ["zebra", "ant", "bee"]
    np.testing.assert_array_equal(manifest.label_matrix(), [[1, 0, 0], [0, 1, 0]])
    expected = hashlib.sha256(path.read_bytes() + (tmp_path / "labels.txt").read_bytes()).hexdigest()
    assert manifest.sha256 == expected


def test_explicit_labels_path_wins(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", [["a", "a.wav", "ant", "train"]], HEADER)
    (tmp_path / "labels.txt").write_text("zebra\n")
    vocab = tmp_path / "other.txt"
    vocab.write_text("bee\nant\n")
    assert read_manifest(path, vocab).label_names == ["bee", "ant"]


def test_duplicate_vocabulary_entry_is_a_config_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", [["a", "a.wav", "ant", "train"]], HEADER)
    (tmp_path / "labels.txt").write_text("ant\nant\n")
    with pytest.raises(ConfigError, match="listed twice"):
        read_manifest(path)


def test_bad_rows_are_listed_together(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("dog\ncat\n")
    path = write_csv(tmp_path / "m.csv", [
        ["a", "a.wav", "dog", "train"],            # line 2: good
        ["b", "b.wav", "cow", "train"],            # line 3: unknown label
        ["a", "a2.wav", "dog", "train"],           # line 4: duplicate id
        ["", "c.wav", "dog", "train"],             # line 5: empty clip id
        ["d", "../outside.wav", "dog", "train"],   # line 6: escapes the root
        ["e", "/etc/passwd", "dog", "train"],      # line 7: absolute
        ["f", "x/../../y.wav", "dog", "train"],    # line 8: escapes after normalisation
        ["g", "x/../g.wav", "cat", "valid"],       # line 9: good (stays inside)
        ["h", "h.wav", "dog"],                     # line 10: missing column
    ], HEADER)
    with pytest.raises(BadInputError) as caught:
        read_manifest(path)
    problems = dict(caught.value.problems)
    assert list(problems) == ["b", "a", "row 5", "d", "e", "f", "h"]
    assert "unknown label(s) 'cow'" in problems["b"]
    assert problems["a"] == "duplicate clip id (first on row 2)"
    assert problems["row 5"] == "empty clip_id"
    assert "escapes the dataset root" in problems["d"]
    assert "absolute path" in problems["e"]
    assert "escapes the dataset root" in problems["f"]
    assert "missing column(s) split" in problems["h"]
    assert "7 bad row(s)" in str(caught.value)


def test_repeat_of_a_bad_rows_id_is_still_a_duplicate(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("dog\n")
    path = write_csv(tmp_path / "m.csv", [["a", "a.wav", "cow", "train"], ["a", "b.wav", "dog", "train"]], HEADER)
    with pytest.raises(BadInputError) as caught:
        read_manifest(path)
    assert [name for name, _ in caught.value.problems] == ["a", "a"]
    assert caught.value.problems[1][1] == "duplicate clip id (first on row 2)"


def test_header_without_required_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", [["a", "a.wav", "train"]], ["clip_id", "path", "split"])
    with pytest.raises(BadInputError, match="header lacks column"):
        read_manifest(path)


def test_manifest_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")
    odd = tmp_path / "m.txt"
    odd.write_text("clip_id,path,labels,split\n")
    with pytest.raises(ConfigError, match="use .csv or .jsonl"):
        read_manifest(odd)
    empty = write_csv(tmp_path / "e.csv", [], HEADER)
    with pytest.raises(BadInputError, match="no rows"):
        read_manifest(empty)


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"clip_id": "a", "path": "a.wav", "labels": "", "split": "train"}\n[1, 2]\n{broken\n')
    with pytest.raises(BadInputError) as caught:
        read_manifest(path)
    assert [name for name, _ in caught.value.problems] == ["row 2", "row 3"]


def make_mixed_dataset(root: Path) -> Path:
    """A manifest with good clips and one row for every kind of bad input."""
    write_wav(root / "good1.wav")
    write_wav(root / "good2.wav", value=0.2)
    write_wav(root / "stereo.wav")
    (root / "empty.wav").write_bytes(b"")
    sf.write(root / "zero.wav", np.zeros(0, np.float32), 8000)
    (root / "text.wav").write_text("not audio at all\n" * 10)
    whole = write_wav(root / "whole.flac", seconds=1.0)
    (root / "cut.flac").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    wav = write_wav(root / "whole.wav", seconds=1.0)
    (root / "cut.wav").write_bytes(wav.read_bytes()[:3000])
    nan = np.full(800, 0.1, np.float32)
    nan[10] = np.nan
    sf.write(root / "nan.wav", nan, 8000, subtype="FLOAT")
    (root / "labels.txt").write_text("dog\ncat\n")
    return write_csv(root / "m.csv", [
        ["good1", "good1.wav", "dog", "train"],
        ["missing", "missing.wav", "dog", "train"],
        ["empty", "empty.wav", "dog", "train"],
        ["zero", "zero.wav", "cat", "train"],
        ["text", "text.wav", "cat", "train"],
        ["cutflac", "cut.flac", "cat", "valid"],
        ["cutwav", "cut.wav", "cat", "valid"],
        ["nan", "nan.wav", "dog", "valid"],
        ["unknown", "good1.wav", "cow", "valid"],
        ["good1", "good2.wav", "dog", "valid"],
        ["escape", "../good1.wav", "dog", "test"],
        ["good2", "good2.wav", "cat;dog", "test"],
    ], HEADER)


EXPECTED_BAD = [
    ("missing", "missing.wav: missing file"),
    ("empty", "empty.wav: empty file (0 bytes)"),
    ("zero", "zero.wav: zero-length audio (0 samples)"),
    ("text", "text.wav: not audio, truncated or corrupt"),
    ("cutflac", "cut.flac: "),
    ("cutwav", "cut.wav: truncated WAV"),
    ("nan", "nan.wav: 1 NaN/inf samples"),
    ("unknown", "unknown label(s) 'cow'"),
    ("good1", "duplicate clip id (first on row 2)"),
    ("escape", "escapes the dataset root"),
]


@pytest.mark.parametrize("workers", [1, 2])
def test_find_bad_rows_decodes_everything_and_never_raises(tmp_path: Path, workers: int) -> None:
    path = make_mixed_dataset(tmp_path)
    good, bad = find_bad_rows(path, workers=workers)
    assert [c.clip_id for c in good.clips] == ["good1", "good2"]
    assert good.label_names == ["dog", "cat"]
    np.testing.assert_array_equal(good.label_matrix(), [[1, 0], [1, 1]])
    assert [name for name, _ in bad] == [name for name, _ in EXPECTED_BAD]
    for (_, reason), (_, expected) in zip(bad, EXPECTED_BAD, strict=True):
        assert expected in reason
    assert "truncated" in dict(bad)["cutflac"]
    assert good.sha256 == read_manifest_hash(path)


def read_manifest_hash(path: Path) -> str:
    """sha256 of a manifest plus the labels.txt beside it."""
    return hashlib.sha256(path.read_bytes() + (path.parent / "labels.txt").read_bytes()).hexdigest()


def test_find_bad_rows_on_a_clean_manifest(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav")
    path = write_csv(tmp_path / "m.csv", [["a", "a.wav", "x", "train"]], HEADER)
    good, bad = find_bad_rows(path)
    assert bad == [] and len(good) == 1


# ---- adapters --------------------------------------------------------------------------------------------------


def test_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name, count in (("dog", 10), ("cat", 20), ("bird", 4)):
        for i in range(count):
            write_wav(root / name / f"{i:02d}.wav")
    write_wav(root / "cat" / "nested" / "deep.flac")
    (root / "README.txt").write_text("not a class")
    (root / "empty_class").mkdir()
    (root / "dog" / "notes.txt").write_text("not audio")
    out = from_class_folders(root)
    assert out == root / "manifest.csv"
    assert (root / "labels.txt").read_text() == "bird\ncat\ndog\n"
    manifest = read_manifest(out)
    assert len(manifest) == 35
    assert manifest.split_names() == ["train", "valid", "test"]
    assert "cat/nested/deep.flac" in [c.clip_id for c in manifest.clips]
    counts = {(label, split): 0 for label in ("bird", "cat", "dog") for split in ("train", "valid", "test")}
    for clip in manifest.clips:
        counts[(clip.labels[0], clip.split)] += 1
    # Per-class cuts at round(0.7 n) and round(0.85 n).
    assert [counts[("dog", s)] for s in ("train", "valid", "test")] == [7, 2, 1]
    assert [counts[("cat", s)] for s in ("train", "valid", "test")] == [15, 3, 3]
    assert [counts[("bird", s)] for s in ("train", "valid", "test")] == [3, 0, 1]
    first = out.read_bytes()
    assert from_class_folders(root, seed=0).read_bytes() == first
    assert from_class_folders(root, seed=1).read_bytes() != first
    assert find_bad_rows(out)[1] == []


def test_class_folders_rejects_bad_ratios_and_empty_roots(tmp_path: Path) -> None:
    write_wav(tmp_path / "a" / "x.wav")
    with pytest.raises(ConfigError, match="summing to 1"):
        from_class_folders(tmp_path, split_ratios=(0.5, 0.2, 0.2))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no class folders with audio"):
        from_class_folders(tmp_path / "empty")


def test_esc50(tmp_path: Path) -> None:
    root = tmp_path / "ESC-50-master"
    meta = [
        ["1-100032-A-0.wav", "1", "0", "dog", "True", "100032", "A"],
        ["1-100038-A-14.wav", "1", "14", "chirping_birds", "False", "100038", "A"],
        ["2-100648-A-43.wav", "2", "43", "car_horn", "False", "100648", "A"],
        ["5-9032-A-0.wav", "5", "0", "dog", "True", "9032", "A"],
    ]
    columns = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    write_csv(root / "meta" / "esc50.csv", meta, columns)
    for row in meta:
        write_wav(root / "audio" / row[0])
    manifest = read_manifest(from_esc50(root))
    assert (root / "labels.txt").read_text().split() == ["dog", "chirping_birds", "car_horn"]  # target order
    assert [(c.clip_id, c.labels, c.split) for c in manifest.clips] == [
        ("1-100032-A-0", ("dog",), "fold1"),
        ("1-100038-A-14", ("chirping_birds",), "fold1"),
        ("2-100648-A-43", ("car_horn",), "fold2"),
        ("5-9032-A-0", ("dog",), "fold5"),
    ]
    assert manifest.clips[2].path == root / "audio" / "2-100648-A-43.wav"
    assert find_bad_rows(root / "manifest.csv")[1] == []


def test_esc50_without_meta(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="esc50.csv: not found"):
        from_esc50(tmp_path)


def test_fsd50k(tmp_path: Path) -> None:
    root = tmp_path / "FSD50K"
    truth = root / "FSD50K.ground_truth"
    write_csv(truth / "vocabulary.csv", [
        ["0", "Accelerating_and_revving_and_vroom", "/m/07q2z82"],
        ["1", "Guitar", "/m/0342h"],
        ["2", "Music", "/m/04rlf"],
    ])
    write_csv(truth / "dev.csv", [
        ["16399", "Accelerating_and_revving_and_vroom", "/m/07q2z82", "val"],
        ["64760", "Guitar,Music", "/m/0342h,/m/04rlf", "train"],
    ], ["fname", "labels", "mids", "split"])
    write_csv(truth / "eval.csv", [["37199", "Music", "/m/04rlf"]], ["fname", "labels", "mids"])
    for name in ("64760", "16399"):
        write_wav(root / "FSD50K.dev_audio" / f"{name}.wav")
    write_wav(root / "FSD50K.eval_audio" / "37199.wav")
    manifest = read_manifest(from_fsd50k(root))
    assert manifest.label_names == ["Accelerating_and_revving_and_vroom", "Guitar", "Music"]
    # dev.csv lists the val clip first; the manifest groups train, valid, test.
    assert [(c.clip_id, c.labels, c.split) for c in manifest.clips] == [
        ("64760", ("Guitar", "Music"), "train"),
        ("16399", ("Accelerating_and_revving_and_vroom",), "valid"),
        ("37199", ("Music",), "test"),
    ]
    assert manifest.clips[2].path == root / "FSD50K.eval_audio" / "37199.wav"
    np.testing.assert_array_equal(manifest.label_matrix(), [[0, 1, 1], [1, 0, 0], [0, 0, 1]])
    assert manifest.split_names() == ["train", "valid", "test"]
    assert find_bad_rows(root / "manifest.csv")[1] == []


def test_fsd50k_label_outside_the_vocabulary(tmp_path: Path) -> None:
    truth = tmp_path / "FSD50K.ground_truth"
    write_csv(truth / "vocabulary.csv", [["0", "Music", "/m/04rlf"]])
    write_csv(truth / "dev.csv", [["1", "Guitar", "/m/0342h", "train"]], ["fname", "labels", "mids", "split"])
    write_csv(truth / "eval.csv", [], ["fname", "labels", "mids"])
    with pytest.raises(ConfigError, match="Guitar"):
        from_fsd50k(tmp_path)


def write_audioset(root: Path) -> tuple[dict[str, Path], Path, Path]:
    """A fake AudioSet download: two segment CSVs, the class index, and some of the audio."""
    meta = root / "meta"
    meta.mkdir(parents=True)
    (meta / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n'
        '2,/m/04rlf,"Music"\n'
    )
    header = ("# Segments csv created Sun Mar  5 10:54:31 2017\n"
              "# num_ytids=4, num_segs=4, num_unique_labels=3, num_positive_labels=5\n"
              "# YTID, start_seconds, end_seconds, positive_labels\n")
    (meta / "balanced_train_segments.csv").write_text(header + (
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/05zppz"\n'
        '--ZhevVpy1s, 50.000, 60.000, "/m/04rlf"\n'
        '--aE2O5G5WE, 0.000, 10.000, "/m/09x0r"\n'
        '--aaILOrkII, 200.000, 210.000, "/m/04rlf,/m/09x0r"\n'
    ))
    (meta / "eval_segments.csv").write_text(header + (
        '--4gqARaEJE, 0.000, 10.000, "/m/04rlf"\n'
        '--BfvyPmVMo, 20.000, 30.000, "/m/0bad1d"\n'
        'broken line\n'
    ))
    audio = root / "audio"
    write_wav(audio / "balanced" / "--PJHxphWEs_30.000.flac")
    write_wav(audio / "balanced" / "--ZhevVpy1s_50.wav")
    write_wav(audio / "balanced" / "Y--aE2O5G5WE.wav")
    write_wav(audio / "eval" / "--4gqARaEJE.ogg")
    segments = {"train": meta / "balanced_train_segments.csv", "test": meta / "eval_segments.csv"}
    return segments, meta / "class_labels_indices.csv", audio


def test_audioset(tmp_path: Path) -> None:
    segments, indices, audio = write_audioset(tmp_path)
    out, left_out = from_audioset(segments, indices, audio, tmp_path / "manifest.csv")
    manifest = read_manifest(out)
    assert manifest.label_names == ["Speech", "Male speech, man speaking", "Music"]
    assert [(c.clip_id, c.labels, c.split) for c in manifest.clips] == [
        ("--PJHxphWEs_30", ("Speech", "Male speech, man speaking"), "train"),
        ("--ZhevVpy1s_50", ("Music",), "train"),
        ("--aE2O5G5WE_0", ("Speech",), "train"),
        ("--4gqARaEJE_0", ("Music",), "test"),
    ]
    assert manifest.clips[0].path == audio / "balanced" / "--PJHxphWEs_30.000.flac"
    assert manifest.clips[2].path == audio / "balanced" / "Y--aE2O5G5WE.wav"
    assert left_out == [
        ("--aaILOrkII_200", f"no audio file for --aaILOrkII in {audio}"),
        ("--BfvyPmVMo_20", f"unknown label id(s) /m/0bad1d (not in {indices})"),
        ("eval_segments.csv line 6", "malformed segment line"),
    ]
    assert find_bad_rows(out)[1] == []


def test_adapter_refuses_a_manifest_outside_the_audio_root(tmp_path: Path) -> None:
    segments, indices, audio = write_audioset(tmp_path / "as")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ConfigError, match="write the manifest inside the dataset folder"):
        from_audioset(segments, indices, audio, tmp_path / "elsewhere" / "manifest.csv")


def test_write_manifest_refuses_unknown_labels(tmp_path: Path) -> None:
    clip = Clip("a", tmp_path / "a.wav", ("dog",), "train")
    with pytest.raises(ConfigError, match="not in the vocabulary"):
        write_manifest(tmp_path / "m.csv", [clip], ["cat"])


# ---- CLI -------------------------------------------------------------------------------------------------------


def test_cli_check_lists_every_bad_row_and_fails(tmp_path: Path) -> None:
    path = make_mixed_dataset(tmp_path)
    result = CliRunner().invoke(cli_main, ["manifest", "check", str(path), "--workers", "1"])
    assert result.exit_code == 1
    for name, reason in EXPECTED_BAD:
        assert f"{name}: " in result.output and reason in result.output
    assert "2 good clip(s), 10 bad row(s)" in result.output


def test_cli_folders_and_clean_check(tmp_path: Path) -> None:
    for name in ("a", "b"):
        for i in range(5):
            write_wav(tmp_path / name / f"{i}.wav")
    runner = CliRunner()
    result = runner.invoke(cli_main, ["manifest", "folders", str(tmp_path), "--ratios", "0.6,0.2,0.2"])
    assert result.exit_code == 0, result.output
    assert "10 clips, 2 labels (single-label); train 6, valid 2, test 2" in result.output
    result = runner.invoke(cli_main, ["manifest", "check", str(tmp_path / "manifest.csv")])
    assert result.exit_code == 0, result.output
    assert "10 good clip(s), 0 bad row(s)" in result.output


def test_cli_audioset_writes_the_left_out_list(tmp_path: Path) -> None:
    segments, indices, audio = write_audioset(tmp_path)
    args = ["manifest", "audioset", "--class-indices", str(indices), "--audio-dir", str(audio),
            "--out", str(tmp_path / "as.csv")]
    for split, path in segments.items():
        args += ["--segments", f"{split}={path}"]
    result = CliRunner().invoke(cli_main, args)
    assert result.exit_code == 0, result.output
    assert "3 segment(s) left out" in result.output
    rows = list(csv.reader(open(tmp_path / "as.left_out.csv")))
    assert rows[0] == ["segment", "reason"] and rows[1][0] == "--aaILOrkII_200" and len(rows) == 4


def test_cli_bad_segments_option(tmp_path: Path) -> None:
    segments, indices, audio = write_audioset(tmp_path)
    result = CliRunner().invoke(cli_main, ["manifest", "audioset", "--segments", "nosplit", "--class-indices",
                                           str(indices), "--audio-dir", str(audio), "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 1
    assert "write SPLIT=CSV" in result.output
