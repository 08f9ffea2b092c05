"""The extract stage end to end: values, resume after kill -9, provenance refusal, shards, bad input, disk."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from helpers import kill_after_chunks

from embedcache import audio
from embedcache.encoders.melpatch import MelPatch
from embedcache.errors import BadInputError, StoreError
from embedcache.extract import ExtractConfig, align_batches, extract, shard_units
from embedcache.store import TokenStore
from embedcache_cli.main import main

TESTS = Path(__file__).resolve().parent


def _config(manifest, out, **kw) -> ExtractConfig:
    defaults = dict(encoder="melpatch", manifest=str(manifest), out=str(out), workers=0, progress=False,
                    chunk_clips=2, batch_size=2)
    defaults.update(kw)
    return ExtractConfig(**defaults)


def _store_arrays(path) -> dict:
    group = zarr.open_group(str(path), mode="r")
    names = ["tokens/layer_0", "valid_tokens", "num_samples", "labels", "splits", "chunk_done"]
    return {name: group[name][:] for name in names}


def test_melpatch_tokens_equal_a_direct_computation(tiny_manifest, tmp_path):
    report = extract(_config(tiny_manifest, tmp_path / "s.zarr", dtype="float32"))
    assert report.complete and report.clips_written == 12
    store = TokenStore.open(tmp_path / "s.zarr")
    assert store.grid == (6, 4) and store.num_tokens == 24 and store.embed_dim == 256  # 1 s: 101 frames // 16
    encoder = MelPatch()
    wave = audio.load_audio(tiny_manifest.parent / "audio/clip003.wav", 16000)
    assert len(wave) == 8000  # clip003 is half as long: alone it has 3 x 4 tokens, the rest of its row is zeros
    direct = encoder(torch.from_numpy(wave)[None], [0]).layers[0][0]
    stored = store.read_tokens(0, 3, 4)[0]
    assert direct.shape == (12, 256) and torch.allclose(stored[:12], direct, atol=1e-5)
    assert not stored[12:].any()
    # token (t=1, f=2) holds log-mel frames 16..31 of mel bins 32..47, time-major inside the patch
    logmel = torch.log(encoder.mel(torch.from_numpy(wave)) + 1e-6)
    expected = logmel[32:48, 16:32].T.reshape(-1)
    assert torch.allclose(stored[1 * 4 + 2], expected, atol=1e-5)
    assert store.valid_tokens[3] == 3 * 4 and store.valid_tokens[0] == 24
    assert store.label_names == ["high", "low", "mid"] and store.labels[5].tolist() == [1, 1, 0]  # clip 5 = low + high
    provenance = store.provenance
    assert provenance["encoder"]["name"] == "melpatch" and provenance["clip_policy"]["num_samples"] == 16000
    assert provenance["frontend"]["n_mels"] == 64 and len(provenance["manifest"]["sha256"]) == 64


def test_resume_after_kill_9_gives_identical_store(tiny_manifest, tmp_path):
    clean = tmp_path / "clean.zarr"
    extract(_config(tiny_manifest, clean, encoder="slow_encoder:create"))
    killed = tmp_path / "killed.zarr"
    command = [sys.executable, "-m", "embedcache_cli.main", "extract", "--encoder", "slow_encoder:create",
               "--manifest", str(tiny_manifest), "--out", str(killed), "--workers", "0", "--chunk-clips", "2",
               "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = kill_after_chunks(command, killed, 2, env=env)
    assert 2 <= done < 6, "the process should have been killed part-way"
    with pytest.raises(StoreError, match="still being written"):
        TokenStore.open(killed)
    report = extract(_config(tiny_manifest, killed, encoder="slow_encoder:create"))
    assert report.complete and report.clips_written <= 12 - 4
    a, b = _store_arrays(clean), _store_arrays(killed)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_restart_with_other_settings_refuses_and_overwrite_replaces(tiny_manifest, tmp_path):
    out = tmp_path / "s.zarr"
    extract(_config(tiny_manifest, out))
    with pytest.raises(StoreError, match=r"different settings.*differs in: dtype.*--overwrite"):
        extract(_config(tiny_manifest, out, dtype="float32"))
    assert TokenStore.open(out).dtype == "float16"  # untouched
    extract(_config(tiny_manifest, out, dtype="float32", overwrite=True))
    assert TokenStore.open(out).dtype == "float32"
    again = extract(_config(tiny_manifest, out, dtype="float32"))
    assert again.clips_written == 0 and again.complete  # nothing left to do


def test_shards_fill_one_store_identical_to_a_single_run(tiny_manifest, tmp_path):
    single = tmp_path / "single.zarr"
    extract(_config(tiny_manifest, single))
    sharded = tmp_path / "sharded.zarr"
    first = extract(_config(tiny_manifest, sharded, shard=(0, 2)))
    assert not first.complete
    second = extract(_config(tiny_manifest, sharded, shard=(1, 2)))
    assert second.complete and first.clips_written + second.clips_written == 12
    a, b = _store_arrays(single), _store_arrays(sharded)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_bad_rows_stop_before_anything_is_written(tiny_manifest, tmp_path):
    rows = tiny_manifest.read_text().splitlines()
    rows.append("ghost,audio/missing.wav,low,train")
    (tiny_manifest.parent / "audio/empty.wav").write_bytes(b"")
    rows.append("empty,audio/empty.wav,low,train")
    rows.append("clip000,audio/clip001.wav,low,train")  # duplicate id
    tiny_manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "s.zarr"
    with pytest.raises(BadInputError, match="3 bad row") as caught:
        extract(_config(tiny_manifest, out))
    reasons = dict(caught.value.problems)
    assert set(reasons) >= {"ghost", "empty"} and len(caught.value.problems) == 3
    assert not out.exists()
    report = extract(_config(tiny_manifest, out, skip_bad=True))
    store = TokenStore.open(out)
    assert store.n_clips == 12 and len(store.skipped) == 3 and report.complete
    assert {item["clip_id"] for item in store.skipped} >= {"ghost", "empty"}


def test_disk_full_is_refused_before_writing(tiny_manifest, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 10))
    with pytest.raises(StoreError, match="needs about .* GB .* free"):
        extract(_config(tiny_manifest, tmp_path / "s.zarr"))
    assert not (tmp_path / "s.zarr").exists()


def test_batches_align_with_chunks():
    assert align_batches(3, 2) == (4, 2)
    assert align_batches(5, 16) == (5, 20)
    assert align_batches(8, 8) == (8, 8)
    assert [list(shard_units(10, (i, 3))) for i in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def test_cli_extract_and_info(tiny_manifest, tmp_path):
    runner = CliRunner()
    out = tmp_path / "s.zarr"
    result = runner.invoke(main, ["extract", "--encoder", "melpatch", "--manifest", str(tiny_manifest),
                                  "--out", str(out), "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "12 clips extracted" in result.output
    info = runner.invoke(main, ["info", str(out)])
    assert info.exit_code == 0, info.output
    assert "grid 6 time x 4 freq" in info.output and "train" in info.output and "melpatch" in info.output
    bad = runner.invoke(main, ["extract", "--encoder", "nope", "--manifest", str(tiny_manifest), "--out",
                               str(tmp_path / "x.zarr")])
    assert bad.exit_code == 1 and "unknown encoder 'nope'" in bad.output


def test_random_vit_all_layers_with_prefix_tokens(tiny_manifest, tmp_path):
    out = tmp_path / "vit.zarr"
    extract(_config(tiny_manifest, out, encoder="vit", random_init=True, layers="all"))
    store = TokenStore.open(out)
    assert store.layers == [0, 1] and store.num_prefix == 1 and store.grid == (6, 8)
    assert store.provenance["encoder"]["random_init"] is True
    assert store.provenance["encoder"]["config"]["random_init"] is True
    first, last = store.read_tokens(0, 0, 12).float(), store.read_tokens(1, 0, 12).float()
    assert first.shape == (12, 48, 64) and not torch.allclose(first, last)
    assert torch.isfinite(store.read_prefix(1, 0, 12).float()).all()
    # half-length clips: tokens of time steps 3..5 are padding
    assert store.valid_tokens[3] == 3 * 8 and store.valid_tokens[0] == 48


def test_torchrun_two_cpu_processes_give_the_single_process_store(tiny_manifest, tmp_path):
    single = tmp_path / "single.zarr"
    extract(_config(tiny_manifest, single))
    both = tmp_path / "torchrun.zarr"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "embedcache", "extract", "--encoder", "melpatch", "--manifest", str(tiny_manifest),
               "--out", str(both), "--workers", "0", "--chunk-clips", "2", "--batch-size", "2", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("store complete") >= 1
    a, b = _store_arrays(single), _store_arrays(both)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_other_shards_take_shard_0s_verdict_without_decoding_again(tiny_manifest, tmp_path, monkeypatch):
    import embedcache.datasets.manifest as manifest_module

    (tiny_manifest.parent / "audio/empty.wav").write_bytes(b"")
    tiny_manifest.write_text(tiny_manifest.read_text() + "empty,audio/empty.wav,low,train\n")
    out = tmp_path / "s.zarr"
    first = extract(_config(tiny_manifest, out, shard=(0, 2), skip_bad=True))
    monkeypatch.setattr(manifest_module, "_check_all", lambda *a, **k: pytest.fail("shard 1 decoded every file"))
    second = extract(_config(tiny_manifest, out, shard=(1, 2), skip_bad=True))
    assert second.complete and first.clips_written + second.clips_written == 12
    assert [item["clip_id"] for item in TokenStore.open(out).skipped] == ["empty"]
