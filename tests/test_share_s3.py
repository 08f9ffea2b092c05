"""Stores on S3 (moto's server on 127.0.0.1): extract to it, read, verify, probe, copy and pack from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from s3_loopback import running_s3

from embedcache.errors import StoreError
from embedcache.extract import ExtractConfig, extract
from embedcache.probe import run_probe
from embedcache.store import TokenStore
from embedcache.store.pack import copy_store, pack_store
from embedcache.store.verify import verify_store
from embedcache_cli.main import main


@pytest.fixture(scope="module")
def s3():
    with running_s3("share-tests") as server:
        yield server


def _config(manifest, out, **kw) -> ExtractConfig:
    values = dict(encoder="melpatch", manifest=str(manifest), out=str(out), workers=0, progress=False, chunk_clips=2,
                  batch_size=2)
    values.update(kw)
    return ExtractConfig(**values)


def test_extract_to_s3_reads_back_equal_to_a_local_extract(s3, tiny_manifest, tmp_path):
    url = s3.url("extract/s.zarr")
    report = extract(_config(tiny_manifest, url))
    assert report.complete and report.clips_written == 12
    extract(_config(tiny_manifest, tmp_path / "local.zarr"))
    remote, local = TokenStore.open(url), TokenStore.open(tmp_path / "local.zarr")
    assert remote.read_only and remote.disk_nbytes() is None
    assert torch.equal(remote.read_tokens(0, 0, 12), local.read_tokens(0, 0, 12))
    np.testing.assert_array_equal(remote.labels, local.labels)
    assert list(remote.clip_ids) == list(local.clip_ids)
    assert verify_store(url).ok
    info = CliRunner().invoke(main, ["info", url, "--json"])
    assert info.exit_code == 0 and json.loads(info.output)["clips"] == 12
    again = extract(_config(tiny_manifest, url))
    assert again.clips_written == 0 and again.complete  # resume finds everything done
    extract(_config(tiny_manifest, url, dtype="float32", overwrite=True))
    assert TokenStore.open(url).dtype == "float32"


def test_probe_trains_from_s3(s3, tiny_manifest, tmp_path):
    url = s3.url("probe/s.zarr")
    extract(_config(tiny_manifest, url))
    config = {"train": {"epochs": 1, "batch_size": 4, "device": "cpu"}, "grid": {"lr": [1e-2], "weight_decay": [0]}}
    report = run_probe(url, ["linear"], tmp_path / "run", config=config)
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["store"] == url and metrics["view"]["store"] == url and metrics["view"]["clips"] == 12
    assert report.results[0].num_parameters > 0


def test_copy_and_pack_between_local_s3_and_zip_keep_the_bytes(s3, tiny_manifest, tmp_path):
    local = tmp_path / "s.zarr"
    extract(_config(tiny_manifest, local))
    url = s3.url("copy/s.zarr")
    report = copy_store(local, url)
    original = {str(p.relative_to(local)): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert report.objects == len(original)
    fs = s3.filesystem()
    prefix = f"{s3.bucket}/copy/s.zarr/"
    remote = {path.removeprefix(prefix): fs.cat_file(path) for path in fs.find(prefix)}
    assert remote == original
    copy_store(url, tmp_path / "back.zarr")
    pack_store(url, tmp_path / "s.zip")
    for path in (tmp_path / "back.zarr", tmp_path / "s.zip"):
        assert torch.equal(TokenStore.open(path).read_tokens(0, 0, 12), TokenStore.open(local).read_tokens(0, 0, 12))
    result = CliRunner().invoke(main, ["copy", str(local), url])
    assert result.exit_code == 1 and "a store is already there" in result.output


def test_damage_on_s3_is_named_and_reads_touch_only_their_chunks(s3, tiny_manifest, tmp_path):
    url = s3.url("damage/s.zarr")
    extract(_config(tiny_manifest, url, encoder="vit", random_init=True, layers="all"))
    fs = s3.filesystem()
    key = f"{s3.bucket}/damage/s.zarr/tokens/layer_1/c/4/0/0"
    data = bytearray(fs.cat_file(key))
    data[5] ^= 0xFF
    fs.pipe_file(key, bytes(data))
    fs.rm_file(f"{s3.bucket}/damage/s.zarr/tokens/layer_0/c/5/0/0")
    store = TokenStore.open(url)
    assert store.read_tokens(1, 0, 8).shape == (8, 48, 64)  # only chunks 0..3 are fetched
    with pytest.raises(StoreError, match=r"chunk tokens/layer_1/c/4/0/0 is damaged"):
        store.read_tokens(1, 8, 10)
    with pytest.raises(StoreError, match=r"chunk tokens/layer_0/c/5/0/0 is missing"):
        store.read_tokens(0, 10, 12)
    problems = {p.key: p.what for p in verify_store(url).problems}
    assert set(problems) == {"tokens/layer_1/c/4/0/0", "tokens/layer_0/c/5/0/0"}


def test_a_hostile_s3_store_is_refused_and_a_prefix_with_other_objects_is_never_mixed_into(s3, tiny_manifest,
                                                                                            tmp_path):
    local = tmp_path / "s.zarr"
    extract(_config(tiny_manifest, local))
    url = s3.url("hostile/s.zarr")
    copy_store(local, url)
    fs = s3.filesystem()
    fs.pipe_file(f"{s3.bucket}/hostile/s.zarr/a/../../x", b"SECRET")  # an object key is any text on S3
    (tmp_path / "w").mkdir()
    copied = CliRunner().invoke(main, ["copy", url, str(tmp_path / "w" / "out.zarr")])
    assert copied.exit_code == 1 and "'a/../../x'" in copied.output and "outside the destination" in copied.output
    assert sorted(p.name for p in tmp_path.rglob("x")) == [] and not (tmp_path / "w" / "out.zarr").exists()
    fs.pipe_file(f"{s3.bucket}/mine/notes.txt", b"mine")
    mixed = CliRunner().invoke(main, ["copy", str(local), s3.url("mine"), "--overwrite"])
    assert mixed.exit_code == 1 and "holds other objects" in mixed.output
    assert fs.find(f"{s3.bucket}/mine") == [f"{s3.bucket}/mine/notes.txt"]
    fs.rm_file(f"{s3.bucket}/hostile/s.zarr/a/../../x")
    itself = CliRunner().invoke(main, ["copy", url, url + "/", "--overwrite"])
    assert itself.exit_code == 1 and "is the same store" in itself.output and verify_store(url).ok
