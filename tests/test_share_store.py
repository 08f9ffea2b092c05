"""Sharing stores: pack/copy byte for byte, HDF5 export/import, subset views, appending clips and layers."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
import zarr
from click.testing import CliRunner

from embedcache.errors import ConfigError, StoreError
from embedcache.probe import run_probe
from embedcache.store import TokenStore, write_store
from embedcache.store.grow import append_store
from embedcache.store.hdf5 import export_hdf5, import_hdf5
from embedcache.store.pack import copy_store, pack_store
from embedcache.store.subset import Subset
from embedcache.store.verify import verify_store
from embedcache_cli.main import main

LABELS = ["dog", "bell", "siren"]
PROVENANCE = {"encoder": {"name": "melpatch", "config": {"n_mels": 64}, "checkpoint_sha256": None}, "dtype": "float16"}
PROBE = {"train": {"epochs": 2, "batch_size": 8, "device": "cpu"}, "grid": {"lr": [1e-2], "weight_decay": [1e-4]}}


def tokens_for(n: int, seed: int = 0, layers=(1, 3)) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 6, 8)).astype(np.float32)
    return {layer: base * (layer + 1) for layer in layers}


def make(path: Path, n: int = 20, first: int = 0, seed: int = 0, layers=(1, 3), dtype="float16", chunk_clips=3,
         splits=None, labels=None, provenance=None) -> TokenStore:
    tokens = tokens_for(n, seed, layers)
    labels = np.eye(3, dtype=np.uint8)[np.arange(first, first + n) % 3] if labels is None else labels
    splits = splits or (["train", "valid", "test", "train"] * n)[:n]
    return write_store(
        path, tokens, labels, LABELS, [f"clip{i:03d}" for i in range(first, first + n)], splits, (3, 2),
        prefix={layer: t[:, :1] + 1 for layer, t in tokens.items()}, dtype=dtype, chunk_clips=chunk_clips,
        valid_tokens=np.arange(n) % 7, provenance={**(provenance or PROVENANCE), "dtype": dtype},
    )


def raw_objects(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# -- pack / copy --------------------------------------------------------------------------------------------
def test_pack_and_copy_keep_every_object_byte_for_byte(tmp_path):
    make(tmp_path / "s.zarr")
    report = pack_store(tmp_path / "s.zarr", tmp_path / "s.zip")
    original = raw_objects(tmp_path / "s.zarr")
    assert report.objects == len(original) and report.bytes == sum(map(len, original.values()))
    import zipfile

    with zipfile.ZipFile(tmp_path / "s.zip") as archive:
        assert archive.namelist()[0] == "zarr.json"  # metadata first: a truncated zip still describes itself
        assert {name: archive.read(name) for name in archive.namelist()} == original
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
    copy_store(tmp_path / "s.zip", tmp_path / "back.zarr")
    assert raw_objects(tmp_path / "back.zarr") == original
    a, b = TokenStore.open(tmp_path / "s.zip"), TokenStore.open(tmp_path / "back.zarr")
    assert torch.equal(a.read_tokens(3, 0, 20), b.read_tokens(3, 0, 20)) and a.disk_nbytes() > 0
    result = CliRunner().invoke(main, ["info", str(tmp_path / "s.zip")])
    assert result.exit_code == 0 and "[complete]" in result.output


def test_pack_and_copy_refusals(tmp_path):
    make(tmp_path / "s.zarr")
    pack_store(tmp_path / "s.zarr", tmp_path / "s.zip")
    with pytest.raises(StoreError, match="already exists.*--overwrite"):
        pack_store(tmp_path / "s.zarr", tmp_path / "s.zip")
    with pytest.raises(StoreError, match="must be a local path ending in .zip"):
        pack_store(tmp_path / "s.zarr", tmp_path / "s.tar")
    copy_store(tmp_path / "s.zarr", tmp_path / "c.zarr")
    with pytest.raises(StoreError, match="a store is already there"):
        copy_store(tmp_path / "s.zarr", tmp_path / "c.zarr")
    copy_store(tmp_path / "s.zip", tmp_path / "c.zarr", overwrite=True)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    attrs = dict(group.attrs["embedcache"])
    group.attrs["embedcache"] = {**attrs, "status": "writing"}
    with pytest.raises(StoreError, match="incomplete.*finish the extract"):
        copy_store(tmp_path / "s.zarr", tmp_path / "d.zarr")
    with pytest.raises(StoreError, match="a .zip store is read-only"):
        write_store(tmp_path / "new.zip", tokens_for(3), np.eye(3, dtype=np.uint8), LABELS, list("abc"),
                    ["train"] * 3, (3, 2))


def test_cli_pack_copy_verify(tmp_path):
    make(tmp_path / "s.zarr")
    runner = CliRunner()
    packed = runner.invoke(main, ["pack", str(tmp_path / "s.zarr"), str(tmp_path / "s.zip")])
    assert packed.exit_code == 0 and "objects" in packed.output
    copied = runner.invoke(main, ["copy", str(tmp_path / "s.zip"), str(tmp_path / "c.zarr")])
    assert copied.exit_code == 0, copied.output
    verified = runner.invoke(main, ["verify", str(tmp_path / "c.zarr"), "--json"])
    assert verified.exit_code == 0 and json.loads(verified.output)["ok"] is True
    again = runner.invoke(main, ["copy", str(tmp_path / "s.zip"), str(tmp_path / "c.zarr")])
    assert again.exit_code == 1 and "a store is already there" in again.output


# -- HDF5 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_hdf5_round_trip_preserves_everything(tmp_path, dtype):
    store = make(tmp_path / "s.zarr", dtype=dtype, splits=["train"] * 10 + ["test"] * 10)
    export_hdf5(store.path, tmp_path / "s.h5", compression="gzip")
    with h5py.File(tmp_path / "s.h5", "r") as handle:
        tokens = handle["tokens/layer_3"]
        expected = {"bfloat16": np.uint16, "float16": np.float16, "float32": np.float32}[dtype]
        assert tokens.dtype == expected and tokens.shape == (20, 6, 8) and tokens.attrs["dtype"] == dtype
        assert handle.attrs["grid"].tolist() == [3, 2] and handle.attrs["label_names"].tolist() == LABELS
        assert handle["clip_ids"].asstr()[4] == "clip004" and handle["valid_tokens"][6] == 6
        assert json.loads(handle.attrs["embedcache"])["provenance"]["encoder"]["name"] == "melpatch"
    back = import_hdf5(tmp_path / "s.h5", tmp_path / "back.zarr")
    for layer in (1, 3):
        assert torch.equal(back.read_tokens(layer, 0, 20), store.read_tokens(layer, 0, 20))
        assert torch.equal(back.read_prefix(layer, 0, 20), store.read_prefix(layer, 0, 20))
    for name in ("labels", "valid_tokens", "num_samples", "split_codes", "clip_ids"):
        np.testing.assert_array_equal(getattr(back, name), getattr(store, name), err_msg=name)
    assert back.provenance == store.provenance and back.fingerprint == store.fingerprint
    assert back.grid == store.grid and back.split_names == store.split_names and back.spec == store.spec
    assert verify_store(back.path).ok


def test_hdf5_import_refuses_foreign_or_inconsistent_files(tmp_path):
    with h5py.File(tmp_path / "plain.h5", "w") as handle:
        handle["x"] = np.zeros(3)
    with pytest.raises(StoreError, match="not an embedcache HDF5 export"):
        import_hdf5(tmp_path / "plain.h5", tmp_path / "a.zarr")
    make(tmp_path / "s.zarr")
    export_hdf5(tmp_path / "s.zarr", tmp_path / "s.h5")
    with pytest.raises(StoreError, match="already exists"):
        export_hdf5(tmp_path / "s.zarr", tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r+") as handle:
        del handle["labels"]
        handle["labels"] = np.zeros((20, 2), np.uint8)
    with pytest.raises(StoreError, match=r"/labels has shape \[20, 2\], the layout promises \[20, 3\]"):
        import_hdf5(tmp_path / "s.h5", tmp_path / "b.zarr")
    with h5py.File(tmp_path / "s.h5", "r+") as handle:
        del handle["labels"]
        handle["labels"] = np.zeros((20, 3), np.float64)
    with pytest.raises(StoreError, match="/labels has dtype float64"):
        import_hdf5(tmp_path / "s.h5", tmp_path / "b.zarr")
    assert not (tmp_path / "b.zarr").exists()


def test_cli_export_import(tmp_path):
    make(tmp_path / "s.zarr")
    runner = CliRunner()
    exported = runner.invoke(main, ["export", str(tmp_path / "s.zarr"), str(tmp_path / "s.h5")])
    assert exported.exit_code == 0, exported.output
    imported = runner.invoke(main, ["import", str(tmp_path / "s.h5"), str(tmp_path / "i.zarr")])
    assert imported.exit_code == 0 and "imported 20 clips, layers [1, 3]" in imported.output


# -- subsets ------------------------------------------------------------------------------------------------
def test_subset_views_select_without_copying(tmp_path):
    make(tmp_path / "s.zarr")
    before = raw_objects(tmp_path / "s.zarr")
    view = TokenStore.open(tmp_path / "s.zarr", subset={"classes": ["dog", "siren"], "splits": ["train", "test"]})
    assert view.label_names == ["dog", "siren"] and view.split_names == ["train", "test"]
    # clip i has class i % 3 and split ["train","valid","test","train"][i % 4]; bell (1) clips are dropped
    expected = [i for i in range(20) if i % 3 != 1 and i % 4 != 1]
    assert view.selected.tolist() == expected
    assert view.split_indices("test").tolist() == [i for i in expected if i % 4 == 2]
    assert view.labels.shape == (20, 2) and view.labels[3].tolist() == [1, 0] and view.labels[2].tolist() == [0, 1]
    with pytest.raises(StoreError, match="no split 'valid' \\(it is outside this subset\\)"):
        view.split_indices("valid")
    ids = TokenStore.open(tmp_path / "s.zarr", subset="clip_ids=clip000,clip004,clip008")
    assert ids.split_indices("train").tolist() == [0, 4, 8] and ids.describe_view()["clips"] == 3
    assert raw_objects(tmp_path / "s.zarr") == before


def test_subset_parsing_and_refusals(tmp_path):
    (tmp_path / "ids.txt").write_text("clip001\n\nclip002\n")
    parsed = Subset.parse(f"splits=train, test;clip_ids=@{tmp_path / 'ids.txt'}")
    assert parsed == Subset(splits=("train", "test"), clip_ids=("clip001", "clip002"))
    assert Subset.from_value(parsed.to_dict()) == parsed
    with pytest.raises(ConfigError, match="use key=a,b"):
        Subset.parse("labels=dog")
    with pytest.raises(ConfigError, match="unknown key"):
        Subset.from_value({"class": ["dog"]})
    make(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="subset names classes that are not in the store: cat"):
        TokenStore.open(tmp_path / "s.zarr", subset={"classes": ["dog", "cat"]})
    with pytest.raises(StoreError, match="selects no clips"):
        TokenStore.open(tmp_path / "s.zarr", subset={"classes": ["dog"], "clip_ids": ["clip001"]})


def test_probe_on_a_subset_records_the_view(tmp_path):
    make(tmp_path / "s.zarr", n=48, chunk_clips=8)
    report = run_probe(tmp_path / "s.zarr", ["linear"], tmp_path / "run", config={
        **PROBE, "subset": {"classes": ["dog", "siren"]}})
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["view"]["subset"] == {"classes": ["dog", "siren"]} and metrics["view"]["classes"] == 2
    assert metrics["view"]["clips"] == 32 and len(metrics["view"]["fingerprint"]) == 64
    config = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    assert config["subset"] == {"classes": ["dog", "siren"]}
    per_class = (tmp_path / "run/per_class_ap.csv").read_text()
    assert "dog" in per_class and "bell" not in per_class
    assert report.results[0].test["accuracy"] >= 0.0
    result = CliRunner().invoke(main, ["probe", str(tmp_path / "s.zarr"), "--head", "linear", "--epochs", "1",
                                       "--out", str(tmp_path / "run2"), "--subset", "splits=train,valid,test;"
                                       "clip_ids=" + ",".join(f"clip{i:03d}" for i in range(40))])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run2/metrics.json").read_text())["view"]["clips"] == 40


# -- appending ------------------------------------------------------------------------------------------------
def test_append_clips_equals_one_store_of_all_clips(tmp_path):
    whole = make(tmp_path / "whole.zarr", n=17, splits=["train"] * 10 + ["test"] * 7)
    make(tmp_path / "a.zarr", n=10, splits=["train"] * 10)
    tokens = tokens_for(17)
    part = write_store(
        tmp_path / "b.zarr", {k: v[10:] for k, v in tokens.items()}, np.eye(3, dtype=np.uint8)[np.arange(10, 17) % 3],
        LABELS, [f"clip{i:03d}" for i in range(10, 17)], ["test"] * 7, (3, 2),
        prefix={k: v[10:, :1] + 1 for k, v in tokens.items()}, chunk_clips=4, valid_tokens=np.arange(17)[10:] % 7,
        provenance=PROVENANCE,
    )
    report = append_store(tmp_path / "a.zarr", part.path)
    assert report.mode == "clips" and report.clips_added == 7 and report.chunks_written == 3  # chunk 3 (9..11) redone
    grown = TokenStore.open(tmp_path / "a.zarr")
    for layer in (1, 3):
        assert torch.equal(grown.read_tokens(layer, 0, 17), whole.read_tokens(layer, 0, 17))
        assert torch.equal(grown.read_prefix(layer, 0, 17), whole.read_prefix(layer, 0, 17))
    for name in ("labels", "valid_tokens", "clip_ids", "split_codes"):
        np.testing.assert_array_equal(getattr(grown, name), getattr(whole, name), err_msg=name)
    assert grown.split_names == ["train", "test"] and grown.provenance["appended"][0]["clips"] == 7
    assert verify_store(grown.path).ok


def test_append_layers_then_refusals_name_the_field(tmp_path):
    make(tmp_path / "a.zarr", n=12, layers=(1,))
    make(tmp_path / "more.zarr", n=12, layers=(3, 5), chunk_clips=5)
    report = append_store(tmp_path / "a.zarr", tmp_path / "more.zarr")
    assert report.mode == "layers" and report.layers_added == [3, 5]
    grown = TokenStore.open(tmp_path / "a.zarr")
    expected = tokens_for(12)
    assert grown.layers == [1, 3, 5]
    assert torch.equal(grown.read_tokens(3, 0, 12), torch.from_numpy(tokens_for(12, layers=(3,))[3]).half())
    assert torch.equal(grown.read_tokens(1, 0, 12), torch.from_numpy(expected[1]).half())
    assert verify_store(grown.path).ok
    other_encoder = {**PROVENANCE, "encoder": {**PROVENANCE["encoder"], "config": {"n_mels": 128}}}
    make(tmp_path / "x.zarr", n=4, first=100, provenance=other_encoder)
    with pytest.raises(StoreError, match=r"provenance.encoder.config: \{'n_mels': 64\} vs \{'n_mels': 128\}"):
        append_store(tmp_path / "a.zarr", tmp_path / "x.zarr")
    make(tmp_path / "y.zarr", n=4, first=100, dtype="float32")
    with pytest.raises(StoreError, match=r"provenance.dtype: 'float16' vs 'float32'"):
        append_store(tmp_path / "a.zarr", tmp_path / "y.zarr")
    make(tmp_path / "z.zarr", n=4, first=10)
    with pytest.raises(StoreError, match=r"2 clip id\(s\) are already in"):
        append_store(tmp_path / "a.zarr", tmp_path / "z.zarr")
    make(tmp_path / "w.zarr", n=4, first=100, layers=(1,))
    with pytest.raises(StoreError, match=r"lacks layer\(s\) \[3, 5\]"):
        append_store(tmp_path / "a.zarr", tmp_path / "w.zarr")


def test_an_interrupted_append_resumes(tmp_path, monkeypatch):
    make(tmp_path / "a.zarr", n=10)
    make(tmp_path / "b.zarr", n=8, first=10)
    make(tmp_path / "whole.zarr", n=18)
    whole = TokenStore.open(tmp_path / "whole.zarr")
    from embedcache.store import grow

    calls = {"n": 0}
    real = grow._merge_rows

    def crash_in_the_second_chunk(*args):
        calls["n"] += 1
        if calls["n"] > 7:  # 5 writes per chunk (2 layers x tokens/prefix + valid tokens): chunk 3 done, 4 not
            raise OSError("simulated crash")
        return real(*args)

    monkeypatch.setattr(grow, "_merge_rows", crash_in_the_second_chunk)
    with pytest.raises(OSError, match="simulated crash"):
        append_store(tmp_path / "a.zarr", tmp_path / "b.zarr")
    with pytest.raises(StoreError, match="still being written"):
        TokenStore.open(tmp_path / "a.zarr")
    problems = {p.key for p in verify_store(tmp_path / "a.zarr").problems}
    assert "zarr.json:attributes.embedcache.growing" in problems
    make(tmp_path / "c.zarr", n=2, first=50)
    with pytest.raises(StoreError, match="was interrupted; re-run that append"):
        append_store(tmp_path / "a.zarr", tmp_path / "c.zarr")
    monkeypatch.setattr(grow, "_merge_rows", real)
    assert append_store(tmp_path / "a.zarr", tmp_path / "b.zarr").chunks_written == 2  # chunks 4 and 5 only
    grown = TokenStore.open(tmp_path / "a.zarr")
    # tokens_for(n, seed) differs with n, so compare against the two parts
    a, b = tokens_for(10), tokens_for(8)
    assert torch.equal(grown.read_tokens(3, 0, 18), torch.from_numpy(np.concatenate([a[3], b[3]])).half())
    np.testing.assert_array_equal(grown.clip_ids, whole.clip_ids)
    assert verify_store(grown.path).ok


def test_cli_append_and_its_refusal(tmp_path):
    make(tmp_path / "a.zarr", n=6)
    make(tmp_path / "b.zarr", n=4, first=6)
    runner = CliRunner()
    result = runner.invoke(main, ["append", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")])
    assert result.exit_code == 0 and "appended 4 clips" in result.output
    assert TokenStore.open(tmp_path / "a.zarr").n_clips == 10
    again = runner.invoke(main, ["append", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")])
    assert again.exit_code == 1 and "4 clip id(s) are already in" in again.output
