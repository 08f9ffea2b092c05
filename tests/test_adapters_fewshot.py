"""`embedcache manifest fewshot`: multi-label-aware k-shot sampling of the train split (BirdSet protocol)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from embedcache.datasets import read_manifest
from embedcache_cli.main import main as cli_main

HEADER = ["clip_id", "path", "labels", "split"]


def write_manifest_csv(root: Path, rows: list[list[str]], labels: list[str]) -> Path:
    """A manifest (audio files need not exist: fewshot reads rows only) and labels.txt."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows)
    (root / "labels.txt").write_text("".join(f"{name}\n" for name in labels))
    return root / "manifest.csv"


def soundscape_manifest(root: Path, seed: int = 0) -> Path:
    """300 train clips with 0-3 of 6 species (species 0 rare: 5 clips), then valid and test soundscapes."""
    rng = np.random.default_rng(seed)
    species = [f"sp{i}" for i in range(6)]
    rates = np.array([0.0, 0.05, 0.1, 0.2, 0.4, 0.6])
    rows = []
    for i in range(300):
        present = [species[c] for c in np.flatnonzero(rng.random(6) < rates)]
        if i < 5:
            present = ["sp0", *present]
        rows.append([f"train{i}", f"audio/train{i}.ogg", ";".join(present), "train"])
    rows.insert(7, ["valid0", "audio/valid0.ogg", "sp1;sp4", "valid"])  # other splits may come anywhere
    rows += [[f"test{i}", f"audio/test{i}.ogg", "sp3" if i % 2 else "", "test"] for i in range(4)]
    return write_manifest_csv(root, rows, species)


def fewshot(*args: str):
    return CliRunner().invoke(cli_main, ["manifest", "fewshot", *args])


def test_every_class_gets_k_positives_or_all_it_has(tmp_path: Path) -> None:
    source = soundscape_manifest(tmp_path)
    result = fewshot(str(source), "--shots", "16", "--seed", "3", "--out", str(tmp_path / "hsn16.csv"))
    assert result.exit_code == 0, result.output
    original = read_manifest(source)
    few = read_manifest(tmp_path / "hsn16.csv")
    train = [c for c in few.clips if c.split == "train"]
    matrix = np.array([[name in c.labels for name in few.label_names] for c in train])
    available = np.array([[name in c.labels for name in original.label_names] for c in original.clips
                          if c.split == "train"]).sum(axis=0)
    selected = matrix.sum(axis=0)
    assert available[0] == 5 and selected[0] == 5  # fewer than k: all of them
    assert all(selected[c] >= 16 for c in range(1, 6))  # at least k each
    assert len(train) <= 16 * 6 and not any(len(c.labels) == 0 for c in train)
    record = json.loads((tmp_path / "hsn16.split.json").read_text())
    assert record["classes"]["sp0"] == {"available": 5, "selected": 5}
    assert {name: v["selected"] for name, v in record["classes"].items()} == dict(
        zip(few.label_names, selected.tolist(), strict=True))
    assert record["shots"] == 16 and record["seed"] == 3 and record["source_sha256"] == original.sha256
    assert "counts once for every label" in record["counting"]
    over = sum(selected[c] > 16 for c in range(6))
    assert (f"16-shot train: {len(train)} of 300 clips; 5 classes have 16+ positives ({over} more than 16 through "
            "co-occurring labels), 1 fewer (all they have: sp0 5)") in result.output
    # Valid and test rows are copied as they were, in their places.
    source_rows = [row for row in csv.reader(open(source)) if row[3] != "train"]
    few_rows = [row for row in csv.reader(open(tmp_path / "hsn16.csv")) if row[3] != "train"]
    assert few_rows == source_rows
    kept = [c.clip_id for c in few.clips]
    assert [c.clip_id for c in original.clips if c.clip_id in set(kept)] == kept  # the source's order


def test_a_selected_clip_counts_for_all_its_labels(tmp_path: Path) -> None:
    # a is rarest: t0 {a, b} is taken for it and already gives b its one shot, so t1 {b} is never needed.
    source = write_manifest_csv(tmp_path, [["t0", "t0.wav", "a;b", "train"], ["t1", "t1.wav", "b", "train"],
                                           ["t2", "t2.wav", "c", "train"], ["t3", "t3.wav", "b;c", "train"],
                                           ["v0", "v0.wav", "b", "valid"]], ["a", "b", "c"])
    chosen = set()
    for seed in range(8):
        result = fewshot(str(source), "--shots", "1", "--seed", str(seed), "--out", str(tmp_path / "one.csv"))
        assert result.exit_code == 0, result.output
        ids = [c.clip_id for c in read_manifest(tmp_path / "one.csv").clips]
        assert ids[0] == "t0" and ids[-1] == "v0" and len(ids) == 3 and "t1" not in ids
        chosen.add(ids[1])
    assert chosen == {"t2", "t3"}  # the seed decides between c's two clips


def test_deterministic_for_a_seed_and_default_out(tmp_path: Path) -> None:
    source = soundscape_manifest(tmp_path)
    assert fewshot(str(source), "--shots", "8", "--seed", "1").exit_code == 0
    default = tmp_path / "manifest.8shot-seed1.csv"
    first = default.read_bytes()
    assert fewshot(str(source), "--shots", "8", "--seed", "1").exit_code == 0
    assert default.read_bytes() == first
    assert fewshot(str(source), "--shots", "8", "--seed", "2").exit_code == 0
    assert (tmp_path / "manifest.8shot-seed2.csv").read_bytes() != first
    assert (tmp_path / "labels.txt").read_text() == "".join(f"sp{i}\n" for i in range(6))


@pytest.mark.parametrize(("args", "message"), [
    (["{tmp}/nope.csv"], "nope.csv: manifest not found"),
    (["{tmp}/manifest.csv", "--split", "training"], "no clips in split 'training' (splits: train, valid, test); "
                                                    "pass --split NAME"),
    (["{tmp}/manifest.csv", "--shots", "0"], "--shots 0: give a positive number of clips per class"),
    (["{tmp}/manifest.csv", "--out", "{tmp}/manifest.csv"], "that is the source manifest"),
])
def test_bad_inputs_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    soundscape_manifest(tmp_path)
    result = fewshot(*[arg.format(tmp=tmp_path) for arg in args])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert message in result.output
