"""`embedcache manifest hf`: Hugging Face data sets saved locally (save_to_disk, parquet, arrow), built here with
the `datasets` library; nothing is downloaded."""

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from embedcache.datasets import find_bad_rows, read_manifest
from embedcache_cli.main import main as cli_main

datasets = pytest.importorskip("datasets")
from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, Value  # noqa: E402

RATE = 8000
BIRDS = ["amerob", "bkcchi", "norcar", "houspa"]


def wave(seed: int, samples: int = 400) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, samples).astype(np.float32)


def wav_bytes(seed: int, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave(seed), RATE, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def list_of(feature):
    """Sequence(ClassLabel) in the installed datasets version (List since 4.0)."""
    return datasets.List(feature) if hasattr(datasets, "List") else datasets.Sequence(feature)


def embedded(rows: list[tuple[bytes, list[int], int]]) -> Dataset:
    """A BirdSet-like split: embedded audio bytes, a multi-label and a single-label ClassLabel column."""
    features = Features({"audio": {"bytes": Value("binary"), "path": Value("string")},
                         "ebird_code_multilabel": list_of(ClassLabel(names=BIRDS)),
                         "ebird_code": ClassLabel(names=BIRDS)})
    data = {"audio": [{"bytes": b, "path": None} for b, _, _ in rows],
            "ebird_code_multilabel": [labels for _, labels, _ in rows],
            "ebird_code": [single for _, _, single in rows]}
    # Casting to Audio is arrow-only: no audio codec needed to build the test set.
    return Dataset.from_dict(data, features=features).cast_column("audio", Audio(sampling_rate=RATE))


def birdset(root: Path) -> Path:
    splits = DatasetDict({
        "train": embedded([(wav_bytes(0), [0], 0), (wav_bytes(1), [1, 2], 1), (wav_bytes(2, "FLAC"), [2], 2)]),
        "valid": embedded([(wav_bytes(3), [0], 0)]),
        "test_5s": embedded([(wav_bytes(4), [0, 1], 0), (wav_bytes(5), [], -1)]),
    })
    splits.save_to_disk(str(root))
    return root


def hf(*args: str):
    return CliRunner().invoke(cli_main, ["manifest", "hf", *args])


def test_save_to_disk_with_embedded_audio_and_sequence_classlabel(tmp_path: Path) -> None:
    source = birdset(tmp_path / "birdset_hsn")
    out = tmp_path / "hsn" / "manifest.csv"
    result = hf(str(source), "--out", str(out), "--label-column", "ebird_code_multilabel",
                "--split-map", "train=train,test_5s=test")
    assert result.exit_code == 0, result.output
    assert "5 clips, 4 labels (multi-label); train 3, test 2" in result.output
    assert "split 'valid' left out (not in --split-map)" in result.output
    assert "5 embedded audio file(s) written under" in result.output
    manifest = read_manifest(out)
    assert manifest.label_names == BIRDS  # from the ClassLabel feature, unused names included
    assert [(c.clip_id, c.labels, c.split) for c in manifest.clips] == [
        ("train/0", ("amerob",), "train"),
        ("train/1", ("bkcchi", "norcar"), "train"),
        ("train/2", ("norcar",), "train"),
        ("test_5s/0", ("amerob", "bkcchi"), "test"),
        ("test_5s/1", (), "test"),
    ]
    assert manifest.clips[0].path == out.parent / "audio" / "train" / "train_0.wav"
    assert manifest.clips[2].path.suffix == ".flac"  # the bytes are written unchanged, with their own format
    assert manifest.clips[0].path.read_bytes() == wav_bytes(0)
    decoded, rate = sf.read(manifest.clips[3].path, dtype="float32")
    assert rate == RATE
    np.testing.assert_allclose(decoded, wave(4), atol=1 / 32768)
    assert find_bad_rows(out, workers=1)[1] == []
    # The single-label ClassLabel column of the same data (-1 = no label).
    result = hf(str(source), "--out", str(out), "--label-column", "ebird_code")
    assert result.exit_code == 0, result.output
    assert [c.labels for c in read_manifest(out).clips] == [("amerob",), ("bkcchi",), ("norcar",), ("amerob",),
                                                            ("amerob",), ()]
    assert read_manifest(out).split_names() == ["train", "valid", "test_5s"]

    # The same splits as parquet files: the ClassLabel names travel in the parquet schema's metadata.
    parquet = tmp_path / "hsn-parquet"
    parquet.mkdir()
    for split in ("train", "test_5s"):
        datasets.load_from_disk(str(source))[split].to_parquet(str(parquet / f"{split}-00000-of-00001.parquet"))
    result = hf(str(parquet), "--out", str(parquet / "manifest.csv"), "--label-column", "ebird_code_multilabel")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(parquet / "manifest.csv")
    assert manifest.label_names == BIRDS and manifest.split_names() == ["train", "test_5s"]
    assert manifest.clips[1].labels == ("bkcchi", "norcar")


def test_parquet_shards_with_audio_by_path_and_label_names(tmp_path: Path) -> None:
    audio = tmp_path / "set" / "wavs"
    audio.mkdir(parents=True)
    rows = []
    for i in range(5):
        sf.write(audio / f"{i}.wav", wave(i), RATE)
        rows.append({"audio": str(audio / f"{i}.wav"), "labels": [["dog"], ["cat", "dog"], [], ["bird"], ["cat"]][i],
                     "name": f"clip{i}"})
    data = tmp_path / "set" / "data"
    data.mkdir()
    for shard, (split, part) in enumerate((("train", rows[:2]), ("train", rows[2:4]), ("test", rows[4:]))):
        table = Dataset.from_list(part).cast_column("audio", Audio())
        name = f"{split}-{shard:05d}-of-00002.parquet" if split == "train" else "test-00000-of-00001.parquet"
        table.to_parquet(str(data / name))
    out = tmp_path / "set" / "manifest.csv"
    result = hf(str(data), "--out", str(out), "--label-column", "labels", "--id-column", "name")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert [(c.clip_id, c.labels, c.split) for c in manifest.clips] == [
        ("clip0", ("dog",), "train"), ("clip1", ("cat", "dog"), "train"), ("clip2", (), "train"),
        ("clip3", ("bird",), "train"), ("clip4", ("cat",), "test")]
    assert manifest.label_names == ["bird", "cat", "dog"]  # no ClassLabel: the names found, sorted
    assert manifest.clips[0].path == audio / "0.wav"  # referenced in place, not copied
    assert not (tmp_path / "set" / "audio").exists()
    # A manifest outside the folder holding the audio: refused with the fix, or copied with --copy-audio.
    elsewhere = tmp_path / "other" / "manifest.csv"
    result = hf(str(data), "--out", str(elsewhere), "--label-column", "labels")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "is outside" in result.output and "--copy-audio" in result.output
    result = hf(str(data), "--out", str(elsewhere), "--label-column", "labels", "--copy-audio")
    assert result.exit_code == 0, result.output
    copied = read_manifest(elsewhere).clips[1]
    assert copied.path == tmp_path / "other" / "audio" / "train" / "train_1.wav"
    assert copied.path.read_bytes() == (audio / "1.wav").read_bytes()
    # One shard file on its own is a split named after it.
    result = hf(str(data / "test-00000-of-00001.parquet"), "--out", str(out), "--label-column", "labels")
    assert result.exit_code == 0 and "1 clips, 1 labels (single-label); test 1" in result.output


def test_arrays_split_column_and_integer_labels(tmp_path: Path) -> None:
    rows = {"audio": [{"array": wave(i).tolist(), "sampling_rate": RATE} for i in range(4)],
            "label": [2, 0, 1, 2], "fold": ["1", "1", "2", "3"]}
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "esc"))
    out = tmp_path / "esc-manifest" / "manifest.csv"
    result = hf(str(tmp_path / "esc"), "--out", str(out), "--label-column", "label", "--split-column", "fold",
                "--split-map", "1=train", "--split-map", "2=valid")
    assert result.exit_code == 0, result.output
    assert "1 row(s) with fold '3' left out (not in --split-map)" in result.output
    manifest = read_manifest(out)
    assert [(c.clip_id, c.labels, c.split) for c in manifest.clips] == [
        ("train/0", ("2",), "train"), ("train/1", ("0",), "train"), ("train/2", ("1",), "valid")]
    assert manifest.label_names == ["0", "1", "2"]
    decoded, rate = sf.read(manifest.clips[1].path, dtype="float32")
    np.testing.assert_array_equal(decoded, wave(1))  # float WAV: the array exactly
    names = tmp_path / "names.txt"
    names.write_text("dog\nrooster\npig\n")
    result = hf(str(tmp_path / "esc"), "--out", str(out), "--label-column", "label", "--label-names", str(names))
    assert result.exit_code == 0, result.output
    assert [c.labels for c in read_manifest(out).clips] == [("pig",), ("dog",), ("rooster",), ("pig",)]
    # The arrow shard of a save_to_disk folder can be passed on its own.
    (shard,) = (tmp_path / "esc").glob("*.arrow")
    result = hf(str(shard), "--out", str(out), "--label-column", "label", "--split-map", "data=train")
    assert result.exit_code == 0, result.output
    assert "4 clips, 3 labels (single-label); train 4" in result.output


def test_unusable_audio_is_left_out_and_listed(tmp_path: Path) -> None:
    splits = DatasetDict({"train": Dataset.from_dict(
        {"audio": [{"bytes": wav_bytes(0), "path": None}, {"bytes": b"not audio at all", "path": None},
                   {"bytes": None, "path": str(tmp_path / "gone.wav")}],
         "label": ["a", "b", "a"]},
        features=Features({"audio": {"bytes": Value("binary"), "path": Value("string")}, "label": Value("string")}))})
    splits.save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "ds-manifest" / "m.csv"
    result = hf(str(tmp_path / "ds"), "--out", str(out), "--label-column", "label")
    assert result.exit_code == 0, result.output
    assert "2 row(s) left out" in result.output
    rows = list(csv.reader(open(out.with_name("m.left_out.csv"))))
    assert rows[0] == ["row", "reason"]
    assert rows[1] == ["train/1", "embedded audio bytes are in no format soundfile reads (wav, flac, ogg, mp3, aiff)"]
    assert rows[2] == ["train/2", f"audio file {tmp_path / 'gone.wav'} not found"]
    assert [c.clip_id for c in read_manifest(out).clips] == ["train/0"]


@pytest.mark.parametrize(("args", "message"), [
    (["lrauch/desed", "--label-column", "labels"], "lrauch/desed: no such local path, and it looks like a Hub "
                                                   "id or URL; embedcache never downloads"),
    (["hf://datasets/lrauch/spass", "--label-column", "labels"], "embedcache never downloads"),
    (["{tmp}/nope", "--label-column", "labels"], "nope: not found; pass a save_to_disk folder or .parquet/.arrow"),
    (["{tmp}/ds", "--label-column", "species"], "split 'train' has no column 'species' (columns: audio, "
                                                "ebird_code_multilabel, ebird_code); pass --label-column"),
    (["{tmp}/ds", "--label-column", "ebird_code", "--audio-column", "wav"], "has no column 'wav'"),
    (["{tmp}/ds", "--label-column", "ebird_code", "--split-map", "test=test"],
     "--split-map names split 'test', which {tmp}/ds does not have (splits: train, valid, test_5s)"),
    (["{tmp}/ds", "--label-column", "ebird_code", "--split-map", "train"], "--split-map 'train': write FROM=TO"),
    (["{tmp}/ds", "--label-column", "ebird_code", "--label-names", "{tmp}/two.txt"],
     "column 'ebird_code' has class index 2, but there are only 2 class names"),
    (["{tmp}/empty", "--label-column", "x"], "no dataset_dict.json/state.json (save_to_disk) and no .parquet/.arrow"),
    (["{tmp}/broken.parquet", "--label-column", "x"], "broken.parquet: not a readable parquet file"),
])
def test_bad_inputs_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    birdset(tmp_path / "ds")
    (tmp_path / "empty").mkdir()
    (tmp_path / "two.txt").write_text("a\nb\n")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    args = [arg.format(tmp=tmp_path) for arg in args]
    result = hf(*args, "--out", str(tmp_path / "m.csv"))
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert message.format(tmp=tmp_path) in result.output


def test_without_datasets_the_error_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    result = hf(str(tmp_path), "--out", str(tmp_path / "m.csv"), "--label-column", "x")
    assert result.exit_code == 1
    assert result.output == ('error: reading Hugging Face data sets needs the `datasets` package: '
                             'pip install "embedcache[hf]"\n')
