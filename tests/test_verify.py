"""verify and the reader's refusals: damaged, missing and unsafe chunks are named by key, never read as zeros."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from embedcache.errors import StoreError
from embedcache.probe import run_probe
from embedcache.store import TokenStore, write_store
from embedcache.store.pack import pack_store
from embedcache.store.verify import nonfinite_per_clip, verify_store, zip_damage
from embedcache_cli.main import main

LABELS = ["dog", "bell", "siren"]
PROBE = {"train": {"epochs": 1, "batch_size": 8, "device": "cpu"}, "grid": {"lr": [1e-3], "weight_decay": [1e-4]}}


def make_store(path: Path, n: int = 24, dtype: str = "float16", prefix: bool = True) -> TokenStore:
    rng = np.random.default_rng(0)
    labels = np.eye(3, dtype=np.uint8)[np.arange(n) % 3]
    tokens = rng.standard_normal((n, 6, 8)).astype(np.float32) + 2 * labels[:, None, :] @ rng.standard_normal((3, 8))
    splits = ["train"] * (n // 2) + ["valid"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
    return write_store(
        path, {1: tokens, 3: tokens * 2}, labels, LABELS, [f"clip{i:02d}" for i in range(n)], splits, (3, 2),
        prefix={1: tokens[:, :1], 3: tokens[:, :1]} if prefix else None, dtype=dtype, chunk_clips=4,
        provenance={"layers": [1, 3], "dtype": dtype,
                    "encoder": {"name": "test", "embed_dim": 8, "num_prefix": int(prefix)}},
    )


def flip_byte(path: Path, offset: int = 12) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def edit_attrs(root: Path, change) -> None:
    meta = root / "zarr.json"
    doc = json.loads(meta.read_text())
    change(doc["attributes"]["embedcache"])
    meta.write_text(json.dumps(doc))


def test_a_clean_store_verifies_and_counts_every_chunk(tmp_path):
    make_store(tmp_path / "s.zarr")
    report = verify_store(tmp_path / "s.zarr")
    assert report.ok, report.problems
    # 2 layers x (tokens + prefix) x 6 chunks + valid_tokens 6 + one chunk each for num_samples, labels, splits,
    # clip_ids, recording_ids, offsets, lost_samples + 6 markers
    assert report.chunks_checked == 4 * 6 + 6 + 7 + 6
    assert report.arrays_checked == 4 + 9
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "s.zarr")])
    assert result.exit_code == 0 and "OK: 43 chunks in 13 arrays" in result.output


def test_flipped_byte_is_named_by_verify_the_reader_and_probe(tmp_path):
    store = tmp_path / "s.zarr"
    make_store(store)
    flip_byte(store / "tokens/layer_3/c/2/0/0")
    report = verify_store(store)
    assert [p.key for p in report.problems] == ["tokens/layer_3/c/2/0/0"]
    assert "crc32c checksum does not match" in report.problems[0].what
    opened = TokenStore.open(store)
    assert torch.equal(opened.read_tokens(3, 0, 8), opened.read_tokens(3, 0, 8))  # other chunks still read
    with pytest.raises(StoreError, match=r"chunk tokens/layer_3/c/2/0/0 is damaged.*embedcache verify"):
        opened.read_tokens(3, 4, 12)
    with pytest.raises(StoreError, match=r"tokens/layer_3/c/2/0/0 is damaged"):
        run_probe(store, ["linear"], tmp_path / "run", config=PROBE)
    result = CliRunner().invoke(main, ["verify", str(store)])
    assert result.exit_code == 1 and "tokens/layer_3/c/2/0/0: damaged" in result.output


def test_deleted_chunk_is_missing_not_zeros(tmp_path):
    store = tmp_path / "s.zarr"
    make_store(store)
    (store / "prefix/layer_3/c/5/0/0").unlink()
    (store / "valid_tokens/c/1").unlink()
    report = verify_store(store)
    assert sorted(p.key for p in report.problems) == ["prefix/layer_3/c/5/0/0", "valid_tokens/c/1"]
    assert all(p.what == "chunk missing" for p in report.problems)
    # plain zarr would hand back zeros for a missing chunk; the reader refuses
    assert not zarr.open_group(str(store), mode="r")["prefix/layer_3"][20:24].any()
    with pytest.raises(StoreError, match=r"chunk valid_tokens/c/1 is missing"):
        _ = TokenStore.open(store).valid_tokens
    with pytest.raises(StoreError, match=r"valid_tokens/c/1 is missing"):
        run_probe(store, ["linear"], tmp_path / "run", config=PROBE)


def test_truncated_zip_names_the_cut_entry_and_what_is_lost(tmp_path):
    make_store(tmp_path / "s.zarr")
    packed = tmp_path / "s.zip"
    pack_store(tmp_path / "s.zarr", packed)
    assert verify_store(packed).ok and zip_damage(packed) == []
    data = packed.read_bytes()
    cut_at = data.index(b"tokens/layer_3/c/3/0/0") + 60  # inside that entry's bytes
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[:cut_at])
    report = verify_store(cut)
    keys = [p.key for p in report.problems]
    assert keys[0] == str(cut) and "central directory is unreadable" in report.problems[0].what
    assert keys[1] == "tokens/layer_3/c/3/0/0" and "entry cut off" in report.problems[1].what
    assert {"tokens/layer_3/c/4/0/0", "tokens/layer_3/c/5/0/0"} <= set(keys[2:])
    assert "tokens/layer_3/c/2/0/0" not in keys  # entries before the cut survive
    with pytest.raises(StoreError, match=r"not a readable zip.*truncated or damaged"):
        run_probe(cut, ["linear"], tmp_path / "run", config=PROBE)
    assert CliRunner().invoke(main, ["verify", str(cut)]).exit_code == 1


def test_nan_and_inf_tokens_are_reported_per_chunk(tmp_path):
    store = tmp_path / "s.zarr"
    make_store(store, dtype="bfloat16", prefix=False)
    group = zarr.open_group(str(store), mode="r+")
    bits = group["tokens/layer_1"][9:10]
    bits[0, 2, 3] = 0x7FC0  # bfloat16 NaN
    group["tokens/layer_1"][9:10] = bits
    report = verify_store(store)
    assert [p.key for p in report.problems] == ["tokens/layer_1/c/2/0/0"]
    assert "1 clip(s) hold NaN/inf tokens (rows [9])" in report.problems[0].what
    assert verify_store(store, check_values=False).ok
    assert nonfinite_per_clip(np.array([[[1.0, np.inf]], [[0.0, 1.0]]], np.float16)).tolist() == [True, False]


def test_markers_status_counts_and_provenance_are_checked(tmp_path):
    store = tmp_path / "s.zarr"
    make_store(store)
    group = zarr.open_group(str(store), mode="r+")
    group["chunk_done"][4] = 0
    group["splits"][0] = 7
    group["clip_ids"][3] = "clip02"
    edit_attrs(store, lambda a: a["provenance"].update(layers=[1, 2, 3]))
    problems = {p.key: p.what for p in verify_store(store).problems}
    assert "completion marker is unset" in problems["chunk_done/c/4"]
    assert "codes >= 3" in problems["splits"]
    assert "1 duplicated clip id(s), e.g. ['clip02']" in problems["clip_ids"]
    layers = problems["zarr.json:attributes.embedcache.provenance.layers"]
    assert "records [1, 2, 3] but the store holds [1, 3]" in layers
    edit_attrs(store, lambda a: a.update(status="writing"))
    problems = {p.key: p.what for p in verify_store(store).problems}
    assert "1 of 6 chunks pending (first [4])" in problems["zarr.json:attributes.embedcache.status"]


def test_edited_settings_break_the_fingerprint(tmp_path):
    store = tmp_path / "s.zarr"
    fields = {"layers": [1, 3], "dtype": "float16", "compression": "zstd", "chunk_clips": 4, "num_samples": 16000}
    make_store(store)
    from embedcache.store.writer import fingerprint_of

    edit_attrs(store, lambda a: a.update(fingerprint=fingerprint_of(fields)) or a["provenance"].update(
        fingerprint_fields=fields, clip_policy={"num_samples": 16000}))
    assert verify_store(store).ok
    edit_attrs(store, lambda a: a["provenance"]["fingerprint_fields"].update(num_samples=8000))
    problems = {p.key: p.what for p in verify_store(store).problems}
    assert "settings were edited" in problems["zarr.json:attributes.embedcache.fingerprint"]
    assert "records 16000" in problems["zarr.json:attributes.embedcache.provenance.clip_policy.num_samples"]


@pytest.mark.parametrize("change,message", [
    (lambda doc: doc["codecs"].insert(0, {"name": "numcodecs.pickle", "configuration": {}}),
     "codec 'numcodecs.pickle' is not allowed"),
    (lambda doc: doc.update(data_type="object"), "data_type 'object' is not allowed"),
    (lambda doc: doc.update(storage_transformers=[{"name": "x"}]), "storage_transformers are not allowed"),
])
def test_unsafe_metadata_is_refused_before_any_chunk_is_decoded(tmp_path, change, message):
    store = tmp_path / "s.zarr"
    make_store(store)
    meta = store / "labels/zarr.json"
    doc = json.loads(meta.read_text())
    change(doc)
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match=f"refusing to open this store: labels/zarr.json: {message}"):
        TokenStore.open(store)
    report = verify_store(store)
    assert [p.key for p in report.problems] == ["labels/zarr.json"] and message in report.problems[0].what
    assert report.chunks_checked == 0
    with pytest.raises(StoreError, match="refusing to open"):
        run_probe(store, ["linear"], tmp_path / "run", config=PROBE)


def test_unsafe_array_hidden_in_an_extra_group_and_zarr_v2_are_refused(tmp_path):
    store = tmp_path / "s.zarr"
    make_store(store)
    extra = zarr.open_group(str(store / "extra"), mode="w")
    extra.create_array("evil", shape=(2,), dtype="uint8")
    meta = store / "extra/evil/zarr.json"
    doc = json.loads(meta.read_text())
    doc["codecs"].append({"name": "numcodecs.pickle"})
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="extra/evil/zarr.json: codec 'numcodecs.pickle'"):
        TokenStore.open(store)
    v2 = tmp_path / "v2.zarr"
    zarr.open_group(str(v2), mode="w", zarr_format=2).create_array("x", shape=(2,), dtype="uint8")
    with pytest.raises(StoreError, match="no token store there"):
        TokenStore.open(v2)
    assert "Zarr v2 metadata" in verify_store(v2).problems[0].what


def test_readers_open_read_only(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    opened = TokenStore.open(store.path)
    assert opened.read_only
    with pytest.raises(ValueError, match="read-only|read only"):
        opened.token_array(1)[0:1] = np.zeros((1, 6, 8), np.float16)
    packed = tmp_path / "s.zip"
    pack_store(store.path, packed)
    assert TokenStore.open(packed).read_only


def test_streaming_probe_also_stops_on_a_damaged_chunk(tmp_path):
    store = tmp_path / "s.zarr"
    make_store(store)
    flip_byte(store / "tokens/layer_3/c/1/0/0")
    streaming = {**PROBE, "train": {**PROBE["train"], "data_path": "streaming"}}
    with pytest.raises(StoreError, match=r"chunk tokens/layer_3/c/1/0/0 is damaged"):
        run_probe(store, ["linear"], tmp_path / "run", config=streaming)


def test_verify_lists_every_attribute_problem_by_key_where_the_reader_names_the_first(tmp_path):
    store = tmp_path / "s.zarr"
    make_store(store)
    edit_attrs(store, lambda a: (a["layout"].update(chunk_clips=0, split_names=[1], grid="3x2"),
                                 a.update(skipped="none", status="done")))
    keys = [p.key.removeprefix("zarr.json:attributes.embedcache.") for p in verify_store(store).problems]
    assert keys == ["status", "layout.grid", "layout.chunk_clips", "layout.split_names[0]", "skipped"]
    with pytest.raises(StoreError, match=r"embedcache\.status: 'done' is not one of writing, complete \(and 4 more"):
        TokenStore.open(store)
