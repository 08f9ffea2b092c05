"""int8 token stores: the per-token round-trip bound, the loader moving int8, protobin's int8 GEMM, the same choice
and close scores as float16 on planted events, `convert` (resume after kill -9, verify, provenance), and every store
command (HDF5, append, verify) on int8 stores."""

from __future__ import annotations

import os
import sys

import h5py
import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from helpers import event_tokens, kill_after_chunks

from embedcache.errors import ConfigError, StoreError
from embedcache.extract import ExtractConfig, extract
from embedcache.heads import prototype
from embedcache.heads.base import TokenBatch
from embedcache.loader import SplitData
from embedcache.store import TokenStore, layout, write_store
from embedcache.store.convert import convert_store
from embedcache.store.grow import append_store
from embedcache.store.hdf5 import export_hdf5, import_hdf5
from embedcache.store.verify import verify_store
from embedcache.train import HeadBank, HeadSpec, TrainConfig, split_metrics
from embedcache_cli.main import main

LABELS = ["dog", "bell", "siren"]
# float16's rounding of the scale (up, by at most one step of 2^-10) on top of half a code step.
RELATIVE_BOUND = (1 + 2.0**-10) / (2 * layout.INT8_MAX)


def make(path, n=20, dtype="float16", chunk_clips=3, seed=0, first=0, splits=None, prefix=True, layers=(1, 3)):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 6, 8)).astype(np.float32) * rng.uniform(0.05, 20.0, (n, 6, 1)).astype(np.float32)
    tokens = {layer: base * (layer + 1) for layer in layers}
    labels = np.eye(3, dtype=np.uint8)[np.arange(first, first + n) % 3]
    return write_store(
        path, tokens, labels, LABELS, [f"clip{i:03d}" for i in range(first, first + n)],
        splits or (["train", "valid", "test", "train"] * n)[:n], (3, 2),
        prefix={layer: t[:, :1] + 1 for layer, t in tokens.items()} if prefix else None, dtype=dtype,
        chunk_clips=chunk_clips, valid_tokens=np.arange(n) % 7,
        provenance={"encoder": {"name": "melpatch", "config": {}}, "dtype": dtype},
    )


def stored(store, layer, n):
    """(codes, scales, prefix) of a store's first n rows, as stored."""
    return (*store.read_stored(layer, 0, n), store.read_prefix(layer, 0, n))


# -- the code itself ----------------------------------------------------------------------------------------
def test_int8_round_trip_error_is_bounded_per_token():
    generator = torch.Generator().manual_seed(0)
    # Tokens spanning float16's normal scale range, heavy tails, an all-zero token and a constant one.
    tokens = torch.randn(64, 50, 96, generator=generator) * torch.logspace(-2, 3, 64)[:, None, None]
    tokens[:, :5] = torch.distributions.StudentT(2.0).sample((64, 5, 96))
    tokens[0, 0], tokens[0, 1] = 0.0, -3.5
    codes, scales = layout.quantize(tokens)
    back = layout.dequantize(codes, scales)
    assert codes.dtype == torch.int8 and scales.dtype == torch.float16 and scales.shape == (64, 50)
    assert int(codes.min()) >= -127 and int(codes.max()) <= 127  # symmetric: -128 is never written
    error = (back - tokens).abs()
    assert (error <= scales.float().unsqueeze(-1) / 2 * (1 + 1e-6)).all()  # half a code step, every element
    absmax = tokens.abs().amax(dim=-1)
    relative = error.amax(dim=-1) / absmax.clamp(min=1e-30)
    assert (relative[absmax > 0] <= RELATIVE_BOUND).all() and float(relative.max()) > 0.9 / 254  # bound is tight
    assert float(scales[0, 0]) == 0.0 and not back[0, 0].any()
    assert (codes[0, 1] == -127).all()  # a constant token: one code, the scale carries its value
    assert (scales.float() * 127 >= absmax).all()  # scales rounded up: no code is ever clipped
    again = layout.quantize(back)  # re-quantising int8 tokens (convert, append, import) changes nothing
    assert torch.equal(again[0], codes) and torch.equal(again[1], scales)


def test_nan_inf_and_float16_overflow_are_refused_before_a_chunk_is_marked(tmp_path):
    tokens = np.random.default_rng(0).standard_normal((4, 6, 8)).astype(np.float32)
    for bad, value in ((1, np.nan), (2, np.inf), (3, 1e7)):  # 1e7 / 127 overflows a float16 scale
        broken = tokens.copy()
        broken[bad, 2, 3] = value
        with pytest.raises(StoreError, match=rf"c{bad}: tokens of layer 0 hold NaN or inf in int8; nothing of chunk"):
            write_store(tmp_path / f"s{bad}.zarr", {0: broken}, np.eye(3, dtype=np.uint8)[[0, 1, 2, 0]], LABELS,
                        ["c0", "c1", "c2", "c3"], ["train"] * 4, (3, 2), dtype="int8", chunk_clips=4)


def test_int8_store_layout_reads_and_a_plain_numpy_reader(tmp_path):
    reference = make(tmp_path / "f32.zarr", dtype="float32")
    store = make(tmp_path / "s.zarr", dtype="int8")
    assert store.format_version == 4 and store.dtype == "int8"
    group = zarr.open_group(str(store.path), mode="r")
    assert group["tokens/layer_1"].dtype == np.int8 and group["scales/layer_1"].shape == (20, 6)
    assert group["scales/layer_3"].dtype == np.float16
    # Prefix (cls) tokens stay float16: exactly a float16 store's, with no scales beside them.
    assert group["prefix/layer_3"].dtype == np.float16 and "prefix_scales" not in group
    for layer in (1, 3):
        exact = reference.read_tokens(layer, 0, 20)
        read = store.read_tokens(layer, 0, 20)  # dequantised, float32
        numpy_line = group[f"tokens/layer_{layer}"][:].astype(np.float32) * group[f"scales/layer_{layer}"][:][..., None]
        assert read.dtype == torch.float32 and np.array_equal(read.numpy(), numpy_line)
        codes, scales = store.read_stored(layer, 0, 20)
        assert codes.dtype == torch.int8 and torch.equal(scales, layout.quantize(exact)[1])
        assert ((read - exact).abs() <= scales.float().unsqueeze(-1) / 2 * (1 + 1e-6)).all()
        prefix = store.read_prefix(layer, 0, 20)
        assert prefix.dtype == torch.float16 and torch.equal(prefix, reference.read_prefix(layer, 0, 20).half())
    assert store.token_nbytes() == 20 * 6 * (8 + 2)  # codes and one float16 scale per token
    assert store.prefix_nbytes() == 20 * 1 * 8 * 2  # float16 prefix
    assert verify_store(store.path).ok


def test_verify_names_int8_damage(tmp_path):
    store = make(tmp_path / "s.zarr", dtype="int8", prefix=False)
    group = zarr.open_group(str(store.path), mode="r+")
    codes = group["tokens/layer_1"][0:3]
    codes[1, 0, 0] = -128
    group["tokens/layer_1"][0:3] = codes
    scales = group["scales/layer_3"][3:6]
    scales[2, 1] = -1.0
    group["scales/layer_3"][3:6] = scales
    problems = {p.key: p.what for p in verify_store(store.path).problems}
    assert "-128" in problems["tokens/layer_1/c/0/0/0"] and "rows [1]" in problems["tokens/layer_1/c/0/0/0"]
    assert "negative" in problems["scales/layer_3/c/1/0"] and "rows [5]" in problems["scales/layer_3/c/1/0"]
    zarr.open_group(str(store.path), mode="r+").create_array("scales/layer_9", shape=(20, 6), dtype="float16")
    assert "scales/layer_9" in {p.key for p in verify_store(store.path).problems}


# -- the loader moves int8; heads see float32 ---------------------------------------------------------------
@pytest.mark.parametrize("in_memory", [True, False])
def test_loader_keeps_int8_and_dequantises_in_the_batch(tmp_path, in_memory):
    store = make(tmp_path / "s.zarr", n=40, dtype="int8", chunk_clips=4)
    data = SplitData(store, "train", layer=3, in_memory=in_memory, window_chunks=2)
    assert data.nbytes == data.n_clips * (6 * (8 + 2) + 1 * 8 * 2)  # int8 + scales, float16 prefix
    served = 0
    for raw in data.batches(7, seed=1):
        assert raw.tokens.dtype == torch.int8 and raw.scales.dtype == torch.float16 and raw.quantized
        rows = data.indices[raw.positions]
        for i, row in enumerate(rows.tolist()):
            assert torch.equal(raw.float_tokens()[i], store.read_tokens(3, row, row + 1)[0])
            assert torch.equal(raw.float_prefix()[i], store.read_prefix(3, row, row + 1)[0])
        served += len(rows)
    assert served == data.n_clips
    stacked = SplitData(store, "train", layer="all", in_memory=in_memory)
    raw = next(iter(stacked.batches(5)))
    assert raw.tokens.shape[1:] == (2, 6, 8) and raw.scales.shape[1:] == (2, 6)
    row = int(stacked.indices[raw.positions[0]])
    assert torch.equal(raw.float_tokens(1)[0], store.read_tokens(3, row, row + 1)[0])


def test_protobin_int8_gemm_equals_the_float_path():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(6, 20, 32, generator=generator)
    mask = torch.rand(6, 20, generator=generator) > 0.3
    mask[0] = False  # a clip with no real token scores 0 either way
    codes, scales = layout.quantize(tokens)
    dequantised = layout.dequantize(codes, scales)
    master = torch.randn(12, 32, generator=generator, requires_grad=True)
    results = []
    for batch in (TokenBatch(dequantised, mask, codes=codes), TokenBatch(dequantised, mask)):
        assert prototype.uses_int8_gemm(batch) == (batch.codes is not None)
        scores = prototype.binary_prototype_scores(batch, prototype.binarize(master))
        (scores * torch.arange(12.0)).sum().backward()
        results.append((scores.detach(), master.grad.clone()))
        master.grad = None
    (int8_scores, int8_grad), (float_scores, float_grad) = results
    assert torch.allclose(int8_scores, float_scores, atol=1e-6) and not int8_scores[0].any()
    assert torch.allclose(int8_grad, float_grad, atol=1e-6)


# -- same choice, close scores ------------------------------------------------------------------------------
def test_int8_and_float16_choose_the_same_head_with_close_scores_on_planted_events(tmp_path, monkeypatch):
    tokens, labels = event_tokens()
    splits = ["train"] * 60 + ["valid"] * 30 + ["test"] * 30
    grid = [HeadSpec(kind, lr=lr, weight_decay=1e-4, seed=0, options=options)
            for kind, options in (("linear", {"pooling": "mean"}), ("attentive", {"num_heads": 2}),
                                  ("protobin", {"prototypes_per_class": 4}))
            for lr in (1e-3, 1e-2, 1e-1)]
    config = TrainConfig(epochs=8, batch_size=16, device="cpu")
    outcomes = {}
    for dtype, gemm in (("float16", ("cpu",)), ("int8", ("cpu",)), ("int8", ())):
        monkeypatch.setattr(prototype, "INT8_GEMM_DEVICES", gemm)
        store = write_store(tmp_path / f"{dtype}{len(gemm)}.zarr", {0: tokens}, labels,
                            [f"event{c}" for c in range(4)], [f"clip{i:03d}" for i in range(120)], splits, (8, 4),
                            chunk_clips=20, dtype=dtype)
        bank = HeadBank(grid, config).fit(SplitData(store, "train"), SplitData(store, "valid"))
        test = SplitData(store, "test")
        scores = [split_metrics(test.labels, s, True)["map"] for s in bank.predict(test)]
        valid = [m["map"] for m in bank.valid_metrics_]
        # Per head kind: the lr chosen on validation and its test mAP.
        outcomes[dtype, bool(gemm)] = {
            kind: (int(np.argmax(valid[k:k + 3])), scores[k + int(np.argmax(valid[k:k + 3]))], valid[k:k + 3])
            for kind, k in (("linear", 0), ("attentive", 3), ("protobin", 6))}
    # Measured: valid mAP of every (head, lr) within 0.026 of float16's, test mAP of the chosen ones within 0.011;
    # protobin's int8 GEMM and its float path on the same int8 store agree to 1e-4.
    reference = outcomes["float16", True]
    for key, outcome in outcomes.items():
        for kind, (choice, test_map, valid) in outcome.items():
            assert choice == reference[kind][0], (key, kind, valid, reference[kind][2])
            assert abs(test_map - reference[kind][1]) < 0.02, (key, kind, test_map, reference[kind][1])
            assert np.allclose(valid, reference[kind][2], atol=0.04), (key, kind, valid, reference[kind][2])
    for kind, (_, test_map, valid) in outcomes["int8", True].items():
        assert np.allclose([test_map, *valid], [outcomes["int8", False][kind][1], *outcomes["int8", False][kind][2]],
                           atol=1e-3), kind
    assert reference["protobin"][1] > reference["linear"][1] + 0.2  # the events are there to find


def test_cls_pooled_heads_score_an_int8_store_exactly_as_its_float16_source(tmp_path):
    # An int8 store keeps the prefix (cls) tokens in float16, so what cls-pooled heads read is unchanged, bit for bit.
    tokens, labels = event_tokens()
    cls = tokens[:, :1] * 3 + 5  # a shared offset: int8's error would be large against how little they differ
    splits = ["train"] * 60 + ["valid"] * 30 + ["test"] * 30
    stores = {dtype: write_store(tmp_path / f"{dtype}.zarr", {0: tokens}, labels, [f"event{c}" for c in range(4)],
                                 [f"clip{i:03d}" for i in range(120)], splits, (8, 4), prefix={0: cls},
                                 chunk_clips=20, dtype=dtype) for dtype in ("float16", "int8")}
    grid = [HeadSpec("logreg", options={"pooling": "cls"}), HeadSpec("knn", options={"pooling": "cls"}),
            HeadSpec("linear", lr=1e-2, seed=0, options={"pooling": "cls"})]
    scores = {}
    for dtype, store in stores.items():
        bank = HeadBank(grid, TrainConfig(epochs=3, batch_size=16, device="cpu")).fit(
            SplitData(store, "train"), SplitData(store, "valid"))
        scores[dtype] = bank.predict(SplitData(store, "test"))
    for head, (exact, mine) in enumerate(zip(scores["float16"], scores["int8"])):
        assert torch.equal(torch.as_tensor(exact), torch.as_tensor(mine)), grid[head].kind


# -- convert ------------------------------------------------------------------------------------------------
def test_convert_to_int8_and_back_keeps_everything_but_the_dtype(tmp_path):
    source = make(tmp_path / "s.zarr")
    report = convert_store(source.path, tmp_path / "s8.zarr", "int8")
    assert report.chunks_written == report.chunks_total == 7 and report.destination_bytes > 0  # tiny: metadata
    int8 = TokenStore.open(tmp_path / "s8.zarr")
    assert int8.dtype == "int8" and int8.format_version == 4 and verify_store(int8.path).ok
    for layer in (1, 3):
        codes, scales = int8.read_stored(layer, 0, 20)
        expected = layout.quantize(source.read_tokens(layer, 0, 20).float())
        assert torch.equal(codes, expected[0]) and torch.equal(scales, expected[1])
    for name in ("labels", "valid_tokens", "num_samples", "split_codes", "clip_ids", "recording_ids", "offsets"):
        np.testing.assert_array_equal(getattr(int8, name), getattr(source, name), err_msg=name)
    assert int8.spec.chunk_clips == source.spec.chunk_clips and int8.split_names == source.split_names
    record = int8.provenance["converted"][-1]
    assert record["from_dtype"] == "float16" and record["to_dtype"] == "int8" and "absmax / 127" in record["method"]
    assert record["source_fingerprint"] == source.fingerprint and int8.fingerprint != source.fingerprint
    assert int8.provenance["encoder"] == source.provenance["encoder"] and int8.provenance["dtype"] == "int8"
    back = convert_store(int8.path, tmp_path / "back.zarr", "float16")
    restored = TokenStore.open(back.destination)
    assert [r["to_dtype"] for r in restored.provenance["converted"]] == ["int8", "float16"]
    assert torch.allclose(restored.read_tokens(3, 0, 20).float(), int8.read_tokens(3, 0, 20), rtol=1e-3, atol=1e-3)
    again = convert_store(source.path, tmp_path / "s8.zarr", "int8")  # done already: nothing to convert
    assert again.chunks_written == 0
    with pytest.raises(StoreError, match="different settings.*dtype"):
        convert_store(source.path, tmp_path / "s8.zarr", "bfloat16")
    with pytest.raises(ConfigError, match="already holds int8"):
        convert_store(int8.path, tmp_path / "x.zarr", "int8")
    with pytest.raises(StoreError, match="same store"):
        convert_store(source.path, source.path, "int8")


def test_convert_resumes_after_kill_9_and_verifies(tmp_path):
    source = make(tmp_path / "s.zarr", n=60, chunk_clips=2)  # 30 chunks
    clean = convert_store(source.path, tmp_path / "clean.zarr", "int8")
    killed = tmp_path / "killed.zarr"
    # The real command in a subprocess, slowed down per chunk so it can be killed part-way.
    script = ("import time, sys; import embedcache.store.convert as c; write = c.write_chunk\n"
              "c.write_chunk = lambda *a, **k: (time.sleep(0.1), write(*a, **k))\n"
              "from embedcache_cli.main import main; sys.exit(main())")
    command = [sys.executable, "-c", script, "convert", source.path, str(killed), "--dtype", "int8", "--no-progress"]
    done = kill_after_chunks(command, killed, 3)
    assert 3 <= done < 30, "the conversion should have been killed part-way"
    with pytest.raises(StoreError, match="still being written"):
        TokenStore.open(killed)
    result = CliRunner().invoke(main, ["convert", source.path, str(killed), "--dtype", "int8", "--no-progress"])
    assert result.exit_code == 0 and "verified" in result.output, result.output
    finished = int(result.output.split(": int8, ")[1].split(" of ")[0])
    assert finished <= 30 - 3  # only the pending chunks were converted
    assert verify_store(killed).ok
    a, b = zarr.open_group(clean.destination, mode="r"), zarr.open_group(str(killed), mode="r")
    for name in ("tokens/layer_1", "scales/layer_3", "prefix/layer_3", "prefix/layer_1", "valid_tokens",
                 "chunk_done", "labels"):
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)
    assert CliRunner().invoke(main, ["verify", str(killed)]).exit_code == 0


# -- extract, HDF5, append, probe ---------------------------------------------------------------------------
def test_extract_int8_quantises_the_float32_tokens(tiny_manifest, tmp_path):
    settings = dict(encoder="melpatch", manifest=str(tiny_manifest), workers=0, progress=False, chunk_clips=4,
                    batch_size=4)
    extract(ExtractConfig(out=str(tmp_path / "f32.zarr"), dtype="float32", **settings))
    extract(ExtractConfig(out=str(tmp_path / "i8.zarr"), dtype="int8", **settings))
    exact, int8 = TokenStore.open(tmp_path / "f32.zarr"), TokenStore.open(tmp_path / "i8.zarr")
    codes, scales = int8.read_stored(0, 0, 12)
    expected_codes, expected_scales = layout.quantize(exact.read_tokens(0, 0, 12))
    assert torch.equal(scales, expected_scales) and (codes.int() - expected_codes.int()).abs().max() <= 1
    assert int8.provenance["dtype"] == "int8" and verify_store(int8.path).ok
    np.testing.assert_array_equal(int8.valid_tokens, exact.valid_tokens)


def test_extract_int8_with_a_cls_encoder_keeps_the_float16_prefix(tiny_manifest, tmp_path):
    # The command users run, with an encoder that has a cls token: the prefix is float16, as a float16 store's.
    common = ["extract", "--encoder", "vit", "--random-init", "--manifest", str(tiny_manifest), "--workers", "0",
              "--no-progress", "--chunk-clips", "4"]
    for dtype in ("float16", "int8"):
        result = CliRunner().invoke(main, [*common, "--out", str(tmp_path / f"{dtype}.zarr"), "--dtype", dtype])
        assert result.exit_code == 0, result.output
    exact, int8 = TokenStore.open(tmp_path / "float16.zarr"), TokenStore.open(tmp_path / "int8.zarr")
    assert int8.num_prefix == 1 and int8.prefix_dtype == "float16" and verify_store(int8.path).ok
    assert torch.equal(int8.read_prefix(None, 0, 12), exact.read_prefix(None, 0, 12))
    assert int8.read_stored(None, 0, 12)[0].dtype == torch.int8


def test_hdf5_export_import_of_an_int8_store(tmp_path):
    store = make(tmp_path / "s.zarr", dtype="int8")
    export_hdf5(store.path, tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r") as handle:
        assert handle["tokens/layer_3"].dtype == np.int8 and handle["scales/layer_3"].dtype == np.float16
        assert handle["prefix/layer_1"].dtype == np.float16 and "prefix_scales" not in handle
        assert handle.attrs["dtype"] == "int8" and handle["prefix/layer_1"].attrs["dtype"] == "float16"
        assert handle["tokens/layer_3"].attrs["encoding"] == "int8 codes: value = code * /scales/layer_3"
    back = import_hdf5(tmp_path / "s.h5", tmp_path / "back.zarr")
    for layer in (1, 3):
        for mine, theirs in zip(stored(back, layer, 20), stored(store, layer, 20)):
            assert torch.equal(mine, theirs)
    assert back.fingerprint == store.fingerprint and verify_store(back.path).ok


def test_append_clips_and_layers_to_an_int8_store(tmp_path):
    whole = make(tmp_path / "whole.zarr", n=17, dtype="int8", splits=["train"] * 17)

    def rows_of(path, start, stop, chunk_clips):  # whole's rows as their own int8 store (re-quantising is exact)
        return write_store(path, {layer: whole.read_tokens(layer, start, stop) for layer in (1, 3)},
                           whole.labels[start:stop], LABELS, whole.clip_ids[start:stop].tolist(),
                           ["train"] * (stop - start), (3, 2),
                           prefix={layer: whole.read_prefix(layer, start, stop) for layer in (1, 3)}, dtype="int8",
                           chunk_clips=chunk_clips, valid_tokens=whole.valid_tokens[start:stop],
                           provenance={"encoder": {"name": "melpatch", "config": {}}, "dtype": "int8"})

    rows_of(tmp_path / "a.zarr", 0, 10, 3)
    part = rows_of(tmp_path / "b.zarr", 10, 17, 4)
    append_store(tmp_path / "a.zarr", part.path)
    grown = TokenStore.open(tmp_path / "a.zarr")
    for layer in (1, 3):
        for mine, theirs in zip(stored(grown, layer, 17), stored(whole, layer, 17)):
            assert torch.equal(mine, theirs)
    assert verify_store(grown.path).ok
    make(tmp_path / "one.zarr", n=12, dtype="int8", layers=(1,))
    make(tmp_path / "more.zarr", n=12, dtype="int8", layers=(3,), chunk_clips=5)
    append_store(tmp_path / "one.zarr", tmp_path / "more.zarr")
    both = TokenStore.open(tmp_path / "one.zarr")
    assert both.layers == [1, 3] and verify_store(both.path).ok
    assert torch.equal(both.read_stored(3, 0, 12)[1], TokenStore.open(tmp_path / "more.zarr").read_stored(3, 0, 12)[1])
    make(tmp_path / "f16.zarr", n=5, first=40)
    with pytest.raises(StoreError, match="dtype"):
        append_store(tmp_path / "one.zarr", tmp_path / "f16.zarr")


@pytest.mark.usefixtures("one_thread")
def test_probe_predict_and_info_on_an_int8_store(tmp_path):
    make(tmp_path / "s.zarr", n=40)
    runner = CliRunner()
    assert runner.invoke(main, ["convert", str(tmp_path / "s.zarr"), str(tmp_path / "s8.zarr"), "--dtype", "int8",
                                "--no-progress"]).exit_code == 0
    info = runner.invoke(main, ["info", str(tmp_path / "s8.zarr")])
    assert "int8 (codes, one float16 scale per token)" in info.output and "converted   float16 -> int8" in info.output
    assert "prefix tokens 1 (float16)" in info.output
    run = runner.invoke(main, ["probe", str(tmp_path / "s8.zarr"), "--head", "linear,protobin,knn", "--epochs", "2",
                               "--batch-size", "8", "--device", "cpu", "--lr", "1e-2", "--out", str(tmp_path / "run")])
    assert run.exit_code == 0, run.output
    predicted = runner.invoke(main, ["predict", str(tmp_path / "run"), str(tmp_path / "s.zarr"), "--split", "test",
                                     "--out", str(tmp_path / "p.csv")])
    assert predicted.exit_code == 0, predicted.output
    assert os.path.getsize(tmp_path / "p.csv") > 0


# -- format 3 int8 stores (int8 prefix tokens with prefix_scales) are still read, and rewritten by convert ------
def as_format3(path):
    """Turn a format 4 int8 store into what format 3 wrote: its prefix as int8 codes with prefix_scales beside."""
    from embedcache.store.writer import ARRAY_CONFIG, _codecs

    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs["embedcache"])
    spec = attrs["layout"]
    for layer in spec["layers"]:
        codes, scales = layout.quantize(torch.from_numpy(group[f"prefix/layer_{layer}"][:].astype(np.float32)))
        del group[f"prefix/layer_{layer}"]
        for name, values in ((f"prefix/layer_{layer}", codes), (f"prefix_scales/layer_{layer}", scales)):
            group.create_array(name, shape=values.shape, chunks=(spec["chunk_clips"], *values.shape[1:]),
                               dtype=values.numpy().dtype, compressors=_codecs("zstd"), fill_value=0,
                               config=ARRAY_CONFIG)[:] = values.numpy()
    group.attrs["embedcache"] = {**attrs, "format_version": 3}
    return codes, scales


def test_a_format_3_int8_store_is_read_refused_for_writes_and_rewritten_by_convert(tmp_path):
    make(tmp_path / "s.zarr", n=12, dtype="int8", layers=(1,), splits=["train", "valid", "test"] * 4)
    codes, scales = as_format3(tmp_path / "s.zarr")
    old = TokenStore.open(tmp_path / "s.zarr")
    assert old.format_version == 3 and old.quantized_prefix and old.prefix_dtype == "int8"
    assert verify_store(old.path).ok
    dequantised = layout.dequantize(codes, scales)
    assert torch.equal(old.read_prefix(1, 0, 12), dequantised)
    for in_memory in (True, False):  # the loader reads the prefix dequantised; tokens stay int8
        data = SplitData(old, "train", in_memory=in_memory)
        batch = next(iter(data.batches(8)))
        assert batch.tokens.dtype == torch.int8 and batch.prefix.dtype == torch.float32
        assert torch.equal(batch.float_prefix(), dequantised[data.indices[batch.positions]])
    assert "prefix tokens 1 (int8)" in CliRunner().invoke(main, ["info", str(old.path)]).output
    make(tmp_path / "more.zarr", n=4, first=40, dtype="int8", layers=(1,))
    with pytest.raises(StoreError, match=r"s\.zarr: a format 3 int8 store whose prefix tokens are int8 too.*"
                                         r"embedcache convert .*--dtype int8"):
        append_store(tmp_path / "s.zarr", tmp_path / "more.zarr")
    from embedcache.store.writer import open_for_resume
    with pytest.raises(StoreError, match="format 3 int8 store.*or pass --overwrite"):
        open_for_resume(tmp_path / "s.zarr", old.fingerprint, {})
    # convert (int8 -> int8, only for such a store) keeps every code and scale, and the prefix as float16.
    result = CliRunner().invoke(main, ["convert", str(old.path), str(tmp_path / "new.zarr"), "--dtype", "int8",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    new = TokenStore.open(tmp_path / "new.zarr")
    assert new.format_version == 4 and not new.quantized_prefix and verify_store(new.path).ok
    for mine, theirs in zip(new.read_stored(1, 0, 12), old.read_stored(1, 0, 12)):
        assert torch.equal(mine, theirs)
    assert torch.equal(new.read_prefix(1, 0, 12), dequantised.half())
    # An HDF5 export keeps format 3's arrays; importing it gives a format 4 store with the same float16 prefix.
    export_hdf5(old.path, tmp_path / "old.h5")
    back = import_hdf5(tmp_path / "old.h5", tmp_path / "back.zarr")
    assert back.format_version == 4 and verify_store(back.path).ok
    assert torch.equal(back.read_prefix(1, 0, 12), dequantised.half())
    assert torch.equal(back.read_stored(1, 0, 12)[0], old.read_stored(1, 0, 12)[0])
