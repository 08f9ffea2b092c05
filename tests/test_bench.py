"""Benchmarks: synthetic stores hold what they promise, and each benchmark's measured numbers are consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

if str(REPO_ROOT) not in sys.path:  # bench/ is a folder of scripts beside the package, run from the repository root
    sys.path.insert(0, str(REPO_ROOT))

from bench import bench_cache_vs_encoder, bench_head_bank, bench_scaling, bench_store_read  # noqa: E402
from bench.synthetic import (  # noqa: E402
    SyntheticSpec,
    class_directions,
    label_plan,
    synthetic_chunk,
    write_synthetic_store,
)
from embedcache.store import layout  # noqa: E402

SMALL = SyntheticSpec(n_clips=60, grid=(6, 4), embed_dim=16, n_classes=5, seed=3)


def test_label_plan_puts_every_class_in_every_split():
    labels, onsets, splits = label_plan(SMALL)
    assert labels.shape == (60, 5) and labels.sum(axis=1).min() >= 1
    assert np.bincount(splits).tolist() == [50, 5, 5]
    for split in range(3):
        assert labels[splits == split].sum(axis=0).min() >= 1
    assert ((onsets >= 0) == (labels > 0)).all()
    assert onsets.max() <= SMALL.grid[0] - SMALL.event_tokens


def test_synthetic_chunk_plants_each_event_at_its_token_and_is_reproducible():
    labels, onsets, _ = label_plan(SMALL)
    directions = class_directions(SMALL)
    tokens = synthetic_chunk(SMALL, directions, labels, onsets, 10, 20)
    assert tokens.shape == (10, 24, 16)
    assert torch.equal(tokens, synthetic_chunk(SMALL, directions, labels, onsets, 10, 20))
    n_freq = SMALL.grid[1]
    for row in range(10):
        for c in np.flatnonzero(labels[10 + row]):
            token = int(onsets[10 + row, c]) * n_freq + c % n_freq
            projections = tokens[row] @ directions[c]  # [T]
            assert int(projections.argmax()) in (token, token + n_freq)  # the event spans 2 time steps


def test_written_store_matches_the_generator_chunk_by_chunk(tmp_path):
    spec = SyntheticSpec(n_clips=30, grid=(4, 2), embed_dim=8, num_prefix=1, n_classes=3)
    store = write_synthetic_store(tmp_path / "s.zarr", spec, dtype="bfloat16", chunk_clips=7, write_threads=3)
    assert (store.n_clips, store.chunk_clips, store.num_prefix, store.dtype) == (30, 7, 1, "bfloat16")
    labels, onsets, splits = label_plan(spec)
    np.testing.assert_array_equal(store.labels, labels)
    expected = synthetic_chunk(spec, class_directions(spec), labels, onsets, 14, 21).to(torch.bfloat16)
    assert torch.equal(store.read_tokens(None, 14, 21), expected)
    assert store.split_names == ["train", "valid", "test"] and store.provenance["source"] == "synthetic"


def test_store_read_benchmark_compares_the_same_bytes(tmp_path):
    summary = bench_store_read.run(300, (4, 4), 32, 1, tmp_path,
                                   variants=[("float16", "none"), ("bfloat16", "zstd")])
    none, zstd = summary["results"]
    raw = 300 * 16 * 32 * 2
    assert none["raw_bytes"] == zstd["raw_bytes"] == raw
    assert (tmp_path / "read_float16_none_300.bin").stat().st_size == raw
    assert zstd["disk_bytes"] < none["disk_bytes"]  # zstd squeezes random float16/bfloat16 a little
    assert none["disk_vs_raw"] == round(none["disk_bytes"] / raw, 3)
    for result in (none, zstd):
        for mode in ("full_scan", "chunk_shuffled"):
            row = result[mode]
            assert row["ratio_store_vs_numpy"] == pytest.approx(row["store_s"] / row["numpy_fromfile_s"], rel=1e-2)


def test_raw_copy_holds_the_store_bytes(tmp_path):
    store = write_synthetic_store(tmp_path / "s.zarr", SMALL, chunk_clips=16)
    bench_store_read.write_raw_copy(store, tmp_path / "raw.bin")
    raw = np.fromfile(tmp_path / "raw.bin", dtype=np.float16).reshape(60, 24, 16)
    np.testing.assert_array_equal(raw, layout.to_stored(store.read_tokens(None, 0, 60), "float16"))


def test_head_bank_benchmark_reports_every_k_with_consistent_ratios(tmp_path):
    summary = bench_head_bank.run(80, (4, 2), 16, 4, 1, 32, ["linear"], [1, 3], "cpu", tmp_path, rounds=1)
    (bank,) = summary["head_bank"]
    assert [row["k"] for row in bank["results"]] == [1, 3]
    one, three = bank["results"]
    assert one["ratio_bank_vs_one_head"] == 1.0
    assert three["ratio_bank_vs_one_head"] == pytest.approx(three["bank_s"] / one["bank_s"], rel=1e-2)
    assert three["ratio_separate_vs_bank"] == pytest.approx(three["separate_s"] / three["bank_s"], rel=1e-2)
    assert [s.lr for s in bench_head_bank.bank_specs("linear", 4)] == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])


def test_scaling_rows_time_every_path(tmp_path):
    store = write_synthetic_store(tmp_path / "s.zarr", SMALL, chunk_clips=16)
    row = bench_scaling.epoch_row(store, "linear", 2, 16)
    for key in ("in_memory_epoch_s", "streaming_epoch_s", "tensor_epoch_s"):
        assert row[key] > 0
    bank = bench_scaling.bank_row(store, 3, 2, 16)
    separate = 3 * (bank["load_s"] + 2 * bank["one_head_epoch_s"])
    together = bank["load_s"] + 2 * bank["bank_epoch_s"]
    assert bank["ratio_separate_runs_vs_bank_from_parts"] == pytest.approx(separate / together, abs=2e-3)


def test_cache_vs_encoder_benchmark_trains_both_paths_on_the_train_clips(tmp_path):
    summary = bench_cache_vs_encoder.run(40, "melpatch", {}, "linear", 1, 16, "cpu", tmp_path)
    cached, uncached = summary["cached"], summary["uncached"]
    assert cached["clips_extracted"] == 40
    manifest = (tmp_path / "sample_40" / "manifest.csv").read_text().splitlines()[1:]
    assert uncached["train_clips"] == sum(line.rstrip().endswith(",train") for line in manifest)
    assert cached["total_s"] == pytest.approx(cached["extract_s"] + cached["load_s"] + cached["train_s"], abs=2e-3)
    assert summary["ratio_uncached_vs_cached"] == pytest.approx(uncached["total_s"] / cached["total_s"], rel=1e-2)


def test_gpu_entry_dry_runs_every_phase_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run(["bash", str(REPO_ROOT / "bench" / "gpu.sh"), "--tiny", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(out.read_text())
    phases = summary["phases"]
    assert list(phases) == ["extract_forward", "extract_store", "store_write", "protobin_30", "head_bank"]
    assert all("error" not in p and "skipped" not in p for p in phases.values()), phases
    assert phases["extract_forward"]["fp32_clips_per_s"] > 0 and phases["extract_store"]["bf16_clips_per_s"] > 0
    assert phases["store_write"]["tokens"] == 33 and phases["protobin_30"]["prototypes"] == 24
    assert phases["head_bank"]["protobin"]["ratio_bank_vs_one"] > 0
    assert summary["tiny"] is True and summary["peak_gpu_gb"] is None


def test_gpu_entry_refuses_full_sizes_without_cuda(tmp_path, monkeypatch, capsys):
    from bench import gpu

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the full run would start")
    monkeypatch.setattr(sys, "argv", ["bench.gpu", "--out", str(tmp_path / "x.json")])
    assert gpu.main() == 2
    assert "pass --tiny" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_clip_lengths_benchmark_compares_the_designs_on_the_same_clips(tmp_path):
    from bench import bench_clip_lengths

    summary = bench_clip_lengths.run(8, tmp_path, rounds=1, batch_size=4, options={})
    designs = summary["designs"]
    assert summary["lengths_s"]["max"] == 30.0 and summary["lengths_s"]["min"] >= 0.3
    longest, windows, crop, unmasked = (designs[name] for name in bench_clip_lengths.DESIGNS)
    assert longest["row_seconds"] == 30.0 and longest["lost_seconds"] == 0.0 and longest["rows"] == 8
    assert windows["row_seconds"] == 10.0 and windows["rows"] > 8 and windows["lost_seconds"] == 0.0
    assert crop["lost_seconds"] == pytest.approx(sum(max(0.0, s - 10.0) for s in
                                                     bench_clip_lengths.fsd50k_like_lengths(8)), abs=0.01)
    # The encoder without lengths sees only equal-length runs and stores the same rows.
    assert unmasked["valid_token_share"] == longest["valid_token_share"] and unmasked["grid"] == longest["grid"]
    assert longest["disk_vs_rows_to_longest"] == 1.0
    from embedcache.store import TokenStore

    masked = TokenStore.open(tmp_path / "rows_to_longest.zarr")
    runs = TokenStore.open(tmp_path / "equal_length_batches.zarr")
    torch.testing.assert_close(masked.read_tokens(None, 0, 8).float(), runs.read_tokens(None, 0, 8).float(),
                               atol=2e-3, rtol=2e-3)  # float16 stores of the same float32 tokens


def test_plan_benchmark_times_both_plans_and_checks_they_agree(tmp_path):
    out = tmp_path / "plan.json"
    result = subprocess.run([sys.executable, "-m", "bench.bench_plan", "--sizes", "20000", "--scan-sizes", "20000",
                             "--rounds", "1", "--out", str(out)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())["results"]
    assert row["clips"] == 20000 and row["same_windows"] is True and row["scan_plan_s"] > 0


# -- int8 (issue 14) ----------------------------------------------------------------------------------------------
def test_synthetic_int8_store_holds_the_generator_tokens_quantised(tmp_path):
    spec = SyntheticSpec(n_clips=20, grid=(4, 2), embed_dim=8, num_prefix=1, n_classes=3)
    store = write_synthetic_store(tmp_path / "s8.zarr", spec, dtype="int8", chunk_clips=6)
    labels, onsets, _ = label_plan(spec)
    codes, scales = layout.quantize(synthetic_chunk(spec, class_directions(spec), labels, onsets, 6, 12))
    stored_codes, stored_scales = store.read_stored(None, 6, 12)
    assert torch.equal(stored_codes, codes) and torch.equal(stored_scales, scales)
    assert store.read_prefix(None, 0, 20).dtype == torch.float16 and store.read_prefix(None, 0, 20).shape == (20, 1, 8)


def test_int8_gemm_benchmark_checks_exactness_and_compares_the_same_shape():
    from bench import bench_int8_gemm

    row = bench_int8_gemm.measure_shape("tiny", 4, 10, 32, 8, repeats=1)
    assert row["int_mm_exact"] is True and row["forward_max_abs_difference"] < 1e-5
    assert row["gemm"]["ratio_float32_vs_int8"] > 0 and row["forward"]["ratio_float_vs_int8"] > 0


def test_int8_benchmark_compares_what_the_protocol_would_choose():
    from bench import bench_int8

    def runs(valid, test):  # {head: {lr: metrics}} of a quality() run over lrs 0.1 and 0.2
        return {"lrs": [0.1, 0.2], "heads": {"h": {lr: {"valid_map": v, "test_map": t} for lr, v, t in
                                                   zip([0.1, 0.2], valid, test)}}}

    same = bench_int8.compare(runs([0.5, 0.5], [0.60, 0.70]), runs([0.5, 0.4], [0.601, 0.65]))
    row = same["heads"]["h"]
    assert row["reference_lr"] == 0.1 and row["lr"] == 0.1  # the first of equals wins, as in probe.py
    assert row["diff_points"] == 0.1 and same["within_bar"] and row["diff_points_per_lr"] == {"0.1": 0.1, "0.2": -5.0}
    flipped = bench_int8.compare(runs([0.5, 0.6], [0.60, 0.70]), runs([0.5, 0.4], [0.60, 0.70]))
    assert not flipped["heads"]["h"]["same_lr"] and flipped["max_abs_diff_points"] == 10.0
    assert not flipped["within_bar"] and flipped["max_abs_diff_points_same_lr"] == 0.0


def test_int8_benchmark_probes_the_heads_it_is_given(tmp_path, monkeypatch):
    from bench import bench_int8

    asked = []

    def fake_run_probe(store, head_kinds, run, **options):
        asked.append(list(head_kinds))
        return SimpleNamespace(results=[SimpleNamespace(name=kind, valid={"map": 0.5}, test={"map": 0.5},
                                                        status="ok") for kind in head_kinds])

    monkeypatch.setattr(bench_int8, "run_probe", fake_run_probe)
    result = bench_int8.quality(SimpleNamespace(path="s.zarr"), tmp_path, 1, 1, [0.1, 0.2], ["simpool", "abmilp"])
    assert asked == [["simpool", "abmilp"]] * 2 and sorted(result["heads"]) == ["abmilp", "simpool"]


def test_int8_seed_pairs_reads_the_ledgers_and_pairs_seeds(tmp_path):
    from bench import int8_seed_pairs

    def ledger(dtype, lr, rows):  # rows: (head, seed, valid, test)
        folder = tmp_path / "runs" / f"loc-vit-{dtype}" / f"lr{lr:g}"
        folder.mkdir(parents=True)
        lines = ["head,lr,seed,valid,test_map,status"] + [f"{h},{lr},{s},{v},{t},ok" for h, s, v, t in rows]
        (folder / "ledger.csv").write_text("\n".join(lines) + "\n")

    ledger("float16", 0.1, [("p", 0, 0.5, 0.60), ("p", 1, 0.5, 0.62)])
    ledger("float16", 0.2, [("p", 0, 0.4, 0.90), ("p", 1, 0.4, 0.90)])  # lower valid: not chosen
    ledger("int8", 0.1, [("p", 0, 0.5, 0.61), ("p", 1, 0.5, 0.65)])
    ledger("int8", 0.2, [("p", 0, 0.4, 0.10), ("p", 1, 0.4, 0.10)])
    (row,) = int8_seed_pairs.collect(tmp_path)["loc-vit"].values()
    assert row["lr"] == 0.1 and "float32_minus_float16" not in row
    assert row["int8_minus_float16"] == {"mean_points": 2.0, "standard_error": 1.0, "seeds": 2}  # diffs 1 and 3
