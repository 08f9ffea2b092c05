"""Hostile and careless inputs to `extract` and the manifest reader: each is one clear line, nothing already written
is lost, nothing outside the dataset folder is read, no NaN/inf token is ever marked done."""

from __future__ import annotations

import csv
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import zarr
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from embedcache.datasets import find_bad_rows
from embedcache.encoders.melpatch import MelPatch
from embedcache.errors import EmbedcacheError
from embedcache.extract import ExtractConfig, extract
from embedcache.store import TokenStore, urls, writer
from embedcache_cli.main import main

RATE = 16000
HEADER = "clip_id,path,labels,split\n"


def tone(seconds: float = 0.5, scale: float = 0.3) -> np.ndarray:
    return (scale * np.sin(2 * np.pi * 440 * np.arange(round(seconds * RATE)) / RATE)).astype(np.float32)


def dataset(folder: Path, rows: list[str], files: tuple[str, ...] = ("a.wav", "b.wav")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        soundfile.write(folder / name, tone(), RATE, subtype="FLOAT")
    manifest = folder / "m.csv"
    manifest.write_text(HEADER + "".join(row + "\n" for row in rows))
    return manifest


def extract_args(manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--encoder", "melpatch", "--manifest", str(manifest), "--out", str(out), "--workers", "0",
            "--no-progress", *extra]


# -- manifests ------------------------------------------------------------------------------------------------


def test_a_comma_between_labels_is_a_bad_row_not_a_new_split(tmp_path):
    manifest = dataset(tmp_path / "d", ["a,a.wav,dog,cat,train", "b,b.wav,dog;cat,train"])
    result = CliRunner().invoke(main, ["manifest", "check", str(manifest)])
    assert result.exit_code == 1
    assert "a: 5 or more values but the header names fewer columns (extra ['train']); several labels are " \
           "separated by ';', not ','" in result.output
    good, bad = find_bad_rows(manifest, decode=False)
    assert [c.clip_id for c in good.clips] == ["b"] and good.split_names() == ["train"]


@pytest.mark.parametrize("field, value, reason", [
    ("path", 5, "path must be a string, got 5 (int); write it in quotes"),
    ("split", True, "split must be a string, got true (bool); write it in quotes"),
    ("clip_id", 1.5, "clip_id must be a string, got 1.5 (float); write it in quotes"),
    ("labels", {"dog": 1}, 'labels must be a string (\'a;b\') or a list of strings, got {"dog": 1}'),
    ("labels", ["dog", 3], 'labels must be a string (\'a;b\') or a list of strings, got ["dog", 3]'),
])
def test_jsonl_values_of_the_wrong_type_are_refused_not_coerced(tmp_path, field, value, reason):
    soundfile.write(tmp_path / "a.wav", tone(), RATE)
    row = {"clip_id": "a", "path": "a.wav", "labels": "dog", "split": "train", field: value}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    _, bad = find_bad_rows(tmp_path / "m.jsonl", decode=False)
    assert bad == [(str(row["clip_id"]) if field != "clip_id" else "1.5", reason)]


def test_a_symlink_leading_out_of_the_dataset_folder_is_refused_unless_trusted(tmp_path):
    outside = tmp_path / "private"
    outside.mkdir()
    soundfile.write(outside / "secret.wav", tone(), RATE)
    manifest = dataset(tmp_path / "d", ["a,a.wav,dog,train", "b,link.wav,dog,train", "c,inside.wav,dog,train"])
    (tmp_path / "d" / "link.wav").symlink_to(outside / "secret.wav")
    (tmp_path / "d" / "inside.wav").symlink_to(tmp_path / "d" / "a.wav")  # a link that stays inside is fine
    refused = CliRunner().invoke(main, extract_args(manifest, tmp_path / "s.zarr"))
    assert refused.exit_code == 1 and not (tmp_path / "s.zarr").exists()
    assert f"link.wav: a symlink leads outside the dataset root {tmp_path / 'd'} (to {outside / 'secret.wav'})" \
        in refused.output
    trusted = CliRunner().invoke(main, extract_args(manifest, tmp_path / "s.zarr", "--follow-symlinks"))
    assert trusted.exit_code == 0, trusted.output
    assert TokenStore.open(tmp_path / "s.zarr").clip_ids.tolist() == ["a", "b", "c"]


def test_finite_but_absurd_samples_are_a_bad_row(tmp_path):
    manifest = dataset(tmp_path / "d", ["a,a.wav,dog,train", "b,b.wav,dog,train"])
    loud = tone()
    loud[100] = 1e30
    soundfile.write(tmp_path / "d" / "b.wav", loud, RATE, subtype="FLOAT")
    result = CliRunner().invoke(main, extract_args(manifest, tmp_path / "s.zarr"))
    assert result.exit_code == 1 and not (tmp_path / "s.zarr").exists()
    assert "b: b.wav: 1 sample(s) beyond ±1e+06 (largest 1e+30): not audio in [-1, 1]; rescale the file" \
        in result.output


FUZZ = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(rows=st.lists(st.lists(st.text(max_size=12), min_size=0, max_size=7), max_size=6))
@example(rows=[["0", "\x00", "", "0"]])  # a NUL byte in a path once raised from os.path.realpath (CI, stop 15)
@example(rows=[["a", "x\ny.wav", "", "train"]])
def test_any_csv_gives_rows_or_reasons_and_never_a_path_outside_the_folder(tmp_path, rows):
    folder = tmp_path / "fuzz"
    folder.mkdir(exist_ok=True)
    path = folder / "m.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["clip_id", "path", "labels", "split"], *rows])
    try:
        manifest, bad = find_bad_rows(path, decode=False)
    except EmbedcacheError as error:  # a file-level problem, said in one line
        assert "\n" not in str(error).strip()
        return
    for clip in manifest.clips:
        assert Path(os.path.realpath(clip.path)).is_relative_to(folder.resolve())
        assert clip.clip_id and clip.split and isinstance(clip.labels, tuple)
    assert all(isinstance(name, str) and isinstance(reason, str) for name, reason in bad)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                           max_size=3), max_leaves=6)


@FUZZ
@given(objects=st.lists(st.dictionaries(st.sampled_from(["clip_id", "path", "labels", "split", "x"]),
                                        json_values), max_size=5))
def test_any_jsonl_gives_rows_or_reasons(tmp_path, objects):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(obj) + "\n" for obj in objects) or "\n")
    try:
        manifest, _ = find_bad_rows(path, decode=False)
    except EmbedcacheError as error:
        assert "\n" not in str(error).strip()
        return
    for clip in manifest.clips:
        assert isinstance(clip.clip_id, str) and isinstance(clip.split, str)
        assert all(isinstance(name, str) for name in clip.labels)


# -- the store extract writes ---------------------------------------------------------------------------------


class LoudMelPatch(MelPatch):
    """melpatch whose tokens for clip "b" are huge (inf in float16) or NaN: a broken encoder."""

    poison = float("nan")

    def forward(self, wave, layers=(0,), lengths=None):
        output = super().forward(wave, layers, lengths)
        tokens = output.layers[0].clone()
        tokens[wave.abs().amax(dim=1) > 0.5] = self.poison  # clip "b" is the loud one
        output.layers[0] = tokens
        return output


def create_nan(checkpoint=None, random_init=False, **options):
    return LoudMelPatch(**options)


def create_huge(checkpoint=None, random_init=False, **options):
    encoder = LoudMelPatch(**options)
    encoder.poison = 1e6  # finite in float32, inf in float16
    return encoder


@pytest.mark.parametrize("factory, dtype, what", [
    ("create_nan", "float32", "tokens of layer 0 hold NaN or inf in float32"),
    ("create_huge", "float16", "tokens of layer 0 hold NaN or inf in float16"),
])
def test_non_finite_tokens_are_never_marked_done(tmp_path, factory, dtype, what):
    manifest = dataset(tmp_path / "d", ["a,a.wav,dog,train", "b,b.wav,dog,train"])
    soundfile.write(tmp_path / "d" / "b.wav", tone(scale=0.9), RATE, subtype="FLOAT")
    out = tmp_path / "s.zarr"
    result = CliRunner().invoke(main, ["extract", "--encoder", f"test_hostile_inputs:{factory}", "--manifest",
                                       str(manifest), "--out", str(out), "--workers", "0", "--no-progress",
                                       "--dtype", dtype])
    assert result.exit_code == 1
    assert f"b: {what}; nothing of chunk 0 was marked done" in result.output
    assert not zarr.open_group(str(out), mode="r")["chunk_done"][:].any()
    good = CliRunner().invoke(main, [*extract_args(manifest, tmp_path / "ok.zarr"), "--dtype", dtype])
    assert good.exit_code == 0 and torch.isfinite(TokenStore.open(tmp_path / "ok.zarr").read_tokens(0, 0, 2)).all()


def test_a_creation_killed_before_its_attributes_resumes_with_the_same_command(tmp_path, monkeypatch):
    manifest = dataset(tmp_path / "d", ["a,a.wav,dog,train", "b,b.wav,dog,test"])
    out = tmp_path / "s.zarr"

    class Killed(BaseException):
        """Stands for kill -9 after the arrays were created and before the root attributes were written."""

    def killed(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(writer, "write_row_arrays", killed)
        with pytest.raises(Killed):
            extract(ExtractConfig(encoder="melpatch", manifest=str(manifest), out=str(out), workers=0,
                                  progress=False))
    assert (out / "zarr.json").is_file() and "embedcache" not in json.loads((out / "zarr.json").read_text()).get(
        "attributes", {})
    again = CliRunner().invoke(main, extract_args(manifest, out))
    assert again.exit_code == 0, again.output
    fresh = CliRunner().invoke(main, extract_args(manifest, tmp_path / "fresh.zarr"))
    assert fresh.exit_code == 0
    assert torch.equal(TokenStore.open(out).read_tokens(0, 0, 2), TokenStore.open(tmp_path / "fresh.zarr")
                       .read_tokens(0, 0, 2))


def test_extract_never_writes_into_or_deletes_a_folder_that_is_not_a_store(tmp_path):
    manifest = dataset(tmp_path / "d", ["a,a.wav,dog,train"])
    mine = tmp_path / "my_folder"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for extra in ((), ("--overwrite",)):
        result = CliRunner().invoke(main, extract_args(manifest, mine, *extra))
        assert result.exit_code == 1, result.output
        assert f"{mine}: is a folder with other files in it, not a token store; choose a new or empty --out" \
            in result.output
        assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    # A Zarr group of someone else's is not replaced either.
    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w").create_array("x", shape=(2,), dtype="int8")
    result = CliRunner().invoke(main, extract_args(manifest, other, "--overwrite"))
    assert result.exit_code == 1 and "is a Zarr group but not an embedcache token store" in result.output
    assert "x" in zarr.open_group(str(other), mode="r")


def test_an_unwritable_destination_is_one_line(tmp_path, monkeypatch):
    manifest = dataset(tmp_path / "d", ["a,a.wav,dog,train"])

    def denied(url, mode="r"):
        if mode == "w-":
            raise PermissionError(errno.EACCES, "Permission denied", str(url))
        return original(url, mode)

    original = urls.open_group
    monkeypatch.setattr(urls, "open_group", denied)
    result = CliRunner().invoke(main, extract_args(manifest, tmp_path / "ro" / "s.zarr"))
    assert result.exit_code == 1
    assert f"{tmp_path / 'ro' / 's.zarr'}: cannot write there (Permission denied); choose a writable --out" \
        in result.output
