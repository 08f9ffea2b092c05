"""Layers (issue 13): a bank over every chosen layer in one pass, results per (head, layer), the layermix head
(SUPERB's softmax-weighted sum of the layers), and single-layer runs unchanged."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from embedcache import heads
from embedcache.errors import ConfigError
from embedcache.heads.layermix import LayerStack
from embedcache.loader import SplitData, open_splits, resolve_layers
from embedcache.predict import load_run, predict
from embedcache.probe import ProbeConfig, parse_layers, resolve_config, run_probe
from embedcache.report import build_report
from embedcache.results import layers_label, read_ledger
from embedcache.store import write_store
from embedcache.train import HeadBank, HeadSpec, TrainConfig
from embedcache_cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")
LABELS = ["a", "b", "c"]
FAST = {"train": {"epochs": 2, "batch_size": 8, "device": "cpu"}}


def layered_store(path, n=64, layers=(0, 1, 2, 3), signal=None, grid=(4, 4), dim=8, chunk_clips=8, prefix=False,
                  strength=0.5, seed=0):
    """Random tokens per layer; the label signal (a class signature added to every token) on the layers in `signal`
    (default: growing with depth); splits train/valid/test 50/25/25."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(LABELS))) < 0.4).astype(np.uint8)
    labels[np.arange(n), np.arange(n) % len(LABELS)] = 1  # every class in every split
    signature = rng.standard_normal((len(LABELS), dim)).astype(np.float32)
    num_tokens = grid[0] * grid[1]
    tokens = {}
    for layer in layers:
        scale = (strength if layer in signal else 0.0) if signal is not None else 0.2 * layer
        tokens[layer] = rng.standard_normal((n, num_tokens, dim)).astype(np.float32) + \
            (labels @ signature)[:, None, :] * scale
    splits = ["train"] * (n // 2) + ["valid"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
    valid_tokens = np.where(np.arange(n) % 5 == 4, num_tokens // 2, num_tokens)  # some clips padded
    prefix_tokens = {layer: rng.standard_normal((n, 1, dim)).astype(np.float32) for layer in layers} if prefix \
        else None
    return write_store(path, tokens, labels, LABELS, [f"clip{i:03d}" for i in range(n)], splits, grid,
                       prefix=prefix_tokens, valid_tokens=valid_tokens, chunk_clips=chunk_clips)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


# -- choosing layers ---------------------------------------------------------------------------------------
def test_layer_choices_resolve_in_the_config_the_cli_and_the_store(tmp_path):
    store = layered_store(tmp_path / "s.zarr", n=16, layers=(0, 3, 6, 8, 11))
    assert resolve_layers(store, None) == (11,) and resolve_layers(store, -4) == (8,)
    assert resolve_layers(store, "all") == (0, 3, 6, 8, 11)
    assert resolve_layers(store, [-1, -4, 6]) == (6, 8, 11)  # ascending, negative from the last block
    with pytest.raises(ConfigError, match=r"names layer\(s\) \[11\] more than once"):
        resolve_layers(store, [11, -1])
    with pytest.raises(Exception, match="layer 5 was not extracted; stored layers are"):
        resolve_layers(store, [5, 6])
    assert parse_layers("all") == "all" and parse_layers("-1,-4,6") == [-1, -4, 6] and parse_layers("6") == 6
    with pytest.raises(ConfigError, match="--layer 'last'"):
        parse_layers("last")
    assert resolve_config({"layer": "all"})["layer"] == "all"
    assert resolve_config({"layer": [6]})["layer"] == 6  # a list of one is that layer: a single-layer run
    assert ProbeConfig.resolve({"layer": [-1, 6]}).to_dict()["layer"] == [-1, 6]
    for value, message in ((["x"], "layer: 'x' is not a whole number"), ([], "names no layer"),
                           ([3, 3], "names a layer twice"), ("every", "a list of them, 'all' or null")):
        with pytest.raises(ConfigError, match=message):
            resolve_config({"layer": value})
    assert layers_label([0, 1, 2, 3, 6, 8, 9]) == "0-3+6+8-9" and layers_label(7) == "7"


# -- the data path -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", [False, True])
def test_streaming_and_in_memory_serve_the_same_multi_layer_batches(tmp_path, prefix):
    store = layered_store(tmp_path / "s.zarr", n=70, prefix=prefix, chunk_clips=6)
    layers = [1, 3]
    memory = SplitData(store, "train", layers, in_memory=True, window_chunks=2)
    streamed = SplitData(store, "train", layers, in_memory=False, window_chunks=2, prefetch_windows=1)
    single = [SplitData(store, "train", layer, in_memory=False, window_chunks=2) for layer in layers]
    assert memory.layers == streamed.layers == (1, 3) and memory.layer == [1, 3] and memory.stacked
    assert memory.nbytes == 2 * single[0].nbytes
    served = 0
    for epoch in range(2):
        pairs = zip(memory.batches(8, seed=5, epoch=epoch), streamed.batches(8, seed=5, epoch=epoch),
                    *(data.batches(8, seed=5, epoch=epoch) for data in single), strict=True)
        for a, b, *alone in pairs:
            assert a.tokens.shape[1:] == (2, 16, 8)  # [B, L, T, D]
            assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
            assert torch.equal(a.targets, b.targets) and np.array_equal(a.positions, b.positions)
            assert (a.prefix is None) == (not prefix) and (a.prefix is None or torch.equal(a.prefix, b.prefix))
            for index, one in enumerate(alone):  # each layer of the stack is that layer read alone
                assert torch.equal(a.tokens[:, index], one.tokens) and np.array_equal(a.positions, one.positions)
                assert a.prefix is None or torch.equal(a.prefix[:, index], one.prefix)
            served += len(a.positions)
    assert served == 2 * memory.n_clips


def test_open_splits_counts_every_layer_against_the_memory_budget(tmp_path):
    store = layered_store(tmp_path / "s.zarr", n=64)
    one = SplitData(store, "train", 0).nbytes
    config = TrainConfig(device="cpu", memory_budget_bytes=3 * one)
    train, valid = open_splits([(store, "train"), (store, "valid")], "all", config)
    assert train.layers == valid.layers == (0, 1, 2, 3)
    assert train.path == "streaming" and valid.path == "in-memory"  # 4 layers of train exceed 3 layers' budget


# -- the bank ----------------------------------------------------------------------------------------------
def test_a_head_in_a_layer_bank_ends_bit_identical_to_the_same_head_alone(tmp_path):
    store = layered_store(tmp_path / "s.zarr", prefix=True)
    config = TrainConfig(epochs=2, batch_size=8, warmup_epochs=0.5, device="cpu")
    train, valid = SplitData(store, "train", "all"), SplitData(store, "valid", "all")
    bank = HeadBank([HeadSpec("attentive", 1e-2, seed=1, options={"num_heads": 2}, layer=layer) for layer in
                     (0, 2)] + [HeadSpec("layermix", 1e-2, seed=2, options={"inner": "linear"})], config).fit(train,
                                                                                                               valid)
    for k, layer in ((0, 0), (1, 2)):
        alone = HeadBank([HeadSpec("attentive", 1e-2, seed=1, options={"num_heads": 2})], config).fit(
            SplitData(store, "train", layer), SplitData(store, "valid", layer))
        for key, value in alone.heads_[0].state_dict().items():
            assert torch.equal(value, bank.heads_[k].state_dict()[key]), (layer, key)
        assert alone.valid_metrics_[0]["map"] == bank.valid_metrics_[k]["map"]
    assert bank.heads_[2].layers == [0, 1, 2, 3] and bank.routes_ == [0, 2, (0, 1, 2, 3)]
    # A head without a layer has no input in a bank over several layers: refused, naming the fix.
    with pytest.raises(ConfigError, match=r"linear head has no layer, but the data holds layers \[0, 1, 2, 3\]"):
        HeadBank([HeadSpec("linear")], config).fit(train)
    with pytest.raises(ConfigError, match=r"reads layer 7, but the data holds layers"):
        HeadBank([HeadSpec("linear", layer=7)], config).fit(train)
    with pytest.raises(ConfigError, match="it mixes layers, so it takes no single layer"):
        HeadBank([HeadSpec("layermix", layer=1)], config).fit(train)


def test_layermix_mixes_a_stack_with_softmax_weights_and_ignores_padding():
    generator = torch.Generator().manual_seed(0)
    batches = [heads.TokenBatch(torch.randn(3, 5, 8, generator=generator), torch.tensor([[1, 1, 1, 0, 0]] * 3))
               for _ in range(3)]
    head = heads.create("layermix", 4, 8, layers=[2, 5, 9], inner="attentive", inner_options={"num_heads": 2},
                        generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        head.layer_logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
    weights = head.layer_weights()
    assert torch.allclose(weights.sum(), torch.tensor(1.0)) and bool((weights > 0).all())
    mixed = head.mix(LayerStack(batches))
    expected = sum(w * b.clean for w, b in zip(weights, batches))
    torch.testing.assert_close(mixed.tokens, expected)
    assert head.forward(LayerStack(batches)).shape == (3, 4)
    assert head.num_parameters() == 3 + head.inner.num_parameters()
    assert head.config["inner_options"]["num_heads"] == 2 and head.config["layers"] == [2, 5, 9]
    rebuilt = heads.create(**head.config)
    assert rebuilt.config == head.config
    with pytest.raises(ConfigError, match=r"mixes 3 layer\(s\) \[2, 5, 9\] but the batch holds 2"):
        head(LayerStack(batches[:2]))
    with pytest.raises(ConfigError, match="inner='layermix' would mix twice"):
        heads.create("layermix", 4, 8, inner="layermix")
    with pytest.raises(ConfigError, match="protobin head: unknown option"):
        heads.create("layermix", 4, 8, inner="protobin", inner_options={"hidden": 3})


# -- probe runs ---------------------------------------------------------------------------------------------
def test_a_layer_sweep_leaves_single_layer_runs_unchanged(tmp_path):
    store = layered_store(tmp_path / "s.zarr", prefix=True)
    config = {**FAST, "heads": ["linear", "protobin"], "seeds": 2, "grid": {"lr": [3e-3, 3e-2]}}
    sweep = run_probe(store.path, None, tmp_path / "runs" / "all", config={**config, "layer": "all"})
    single = run_probe(store.path, None, tmp_path / "runs" / "l2", config={**config, "layer": 2})
    listed = run_probe(store.path, None, tmp_path / "runs" / "list", config={**config, "layer": [2]})
    # A list of one layer is that layer's single-layer run: the same files, numbers and weights.
    assert listed.config["layer"] == single.config["layer"] == 2
    metrics = json.loads((tmp_path / "runs" / "l2" / "metrics.json").read_text())
    assert json.loads((tmp_path / "runs" / "list" / "metrics.json").read_text())["heads"] == metrics["heads"]
    assert all("layer" not in entry for entry in metrics["heads"]) and metrics["layer"] == 2
    assert sorted(p.name for p in (tmp_path / "runs" / "l2" / "weights").iterdir()) == [
        "linear_seed0.safetensors", "linear_seed1.safetensors", "protobin_seed0.prototypes_packed.safetensors",
        "protobin_seed0.safetensors", "protobin_seed1.prototypes_packed.safetensors", "protobin_seed1.safetensors"]
    assert not (tmp_path / "runs" / "l2" / "layers.csv").exists()
    # Each head on layer 2 of the sweep is the single-layer run's head: same choice, metrics and weights.
    for result in single.results:
        twin = next(r for r in sweep.results if (r.name, r.layer) == (result.name, 2))
        assert (twin.lr, twin.weight_decay, twin.valid, twin.test) == (result.lr, result.weight_decay, result.valid,
                                                                       result.test)
        for seed in (0, 1):
            a = weights_of(tmp_path / "runs" / "l2" / "weights" / f"{result.name}_seed{seed}.safetensors")
            b = weights_of(tmp_path / "runs" / "all" / "weights" / f"{result.name}_L2_seed{seed}.safetensors")
            assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    scores = {(row["head"], row["seed"], row["clip_id"]): row for row in
              read_csv(tmp_path / "runs" / "l2" / "predictions.csv")}
    swept = {(row["head"].removesuffix("_L2"), row["seed"], row["clip_id"]): row for row in
             read_csv(tmp_path / "runs" / "all" / "predictions.csv") if row["head"].endswith("_L2")}
    assert scores == {key: {**row, "head": key[0]} for key, row in swept.items()}


def test_cli_layer_sweep_on_a_random_vit_store_scores_every_head_on_every_layer(tmp_path, tiny_manifest):
    store = tmp_path / "vit.zarr"
    extract = subprocess.run(
        [sys.executable, "-m", "embedcache", "extract", "--encoder", "vit", "--random-init", "--encoder-option",
         "depth=4", "--manifest", str(tiny_manifest), "--out", str(store), "--layers", "all", "--device", "cpu",
         "--workers", "0"], capture_output=True, text=True)
    assert extract.returncode == 0, extract.stderr
    runner = CliRunner()
    out = tmp_path / "runs" / "vit"
    result = runner.invoke(main, [
        "probe", str(store), "--layer", "all", "--head", "linear,attentive,layermix", "--out", str(out),
        "--lr", "1e-2", "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--no-progress",
        "--head-option", "layermix.inner_options={pooling: mean}"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["layer"] == [0, 1, 2, 3]
    per_head = [(entry["head"], entry["layer"]) for entry in metrics["heads"]]
    assert per_head == [("linear", 0), ("linear", 1), ("linear", 2), ("linear", 3), ("attentive", 0),
                        ("attentive", 1), ("attentive", 2), ("attentive", 3), ("layermix", [0, 1, 2, 3])]
    # The printed table: one row per head and layer, each with its own test mAP.
    rows = [line.split() for line in result.output.splitlines() if line.split()[:1] in (["linear"], ["attentive"],
                                                                                         ["layermix"])]
    assert [(row[0], row[2]) for row in rows] == [(h, str(layer) if isinstance(layer, int) else "0-3")
                                                   for h, layer in per_head]
    for row, entry in zip(rows, metrics["heads"], strict=True):
        assert f"{100 * entry['test']['map']:6.2f}".strip() in row
    layers_csv = read_csv(out / "layers.csv")
    assert [(r["head"], r["layer"]) for r in layers_csv if r["weight"] == ""] == [
        (h, str(layer) if isinstance(layer, int) else "0-3") for h, layer in per_head]
    assert [r["layer"] for r in layers_csv if r["weight"] != ""] == ["0", "1", "2", "3"]
    ledger = read_ledger(tmp_path / "runs" / "ledger.csv")
    assert [(r["head"], r["layer"]) for r in ledger] == [(h, str(layer) if isinstance(layer, int) else "0-3")
                                                         for h, layer in per_head]
    assert yaml.safe_load((out / "config.yaml").read_text())["layer"] == [0, 1, 2, 3]
    # -1,-4 picks layers 3 and 0 on this 4-block encoder; the config re-runs to the same numbers.
    picked = runner.invoke(main, ["probe", str(store), "--layer", "-1,-4", "--head", "linear", "--out",
                                  str(tmp_path / "runs" / "picked"), "--lr", "1e-2", "--epochs", "2",
                                  "--batch-size", "4", "--device", "cpu", "--no-progress"])
    assert picked.exit_code == 0, picked.output
    again = runner.invoke(main, ["probe", "--config", str(tmp_path / "runs" / "picked" / "config.yaml"), "--out",
                                 str(tmp_path / "runs" / "again"), "--no-progress"])
    assert again.exit_code == 0, again.output
    first, second = (json.loads((tmp_path / "runs" / name / "metrics.json").read_text()) for name in
                     ("picked", "again"))
    assert [e["layer"] for e in first["heads"]] == [0, 3] and first["heads"] == second["heads"]
    # The report draws score vs layer and the mixing head's weights.
    built = build_report(out, tmp_path / "report")
    assert (tmp_path / "report" / "layers.png") in built.images
    assert "Layers" in (tmp_path / "report" / "report.html").read_text()


def test_layermix_weights_are_softmax_saved_and_reloaded_by_predict(tmp_path):
    store = layered_store(tmp_path / "s.zarr", prefix=True)
    config = {**FAST, "layer": [1, 2, 3], "seeds": 2, "grid": {"lr": [3e-2]},
              "heads": [{"name": "mix", "kind": "layermix", "options": {"inner": "protobin", "layer_norm": True,
                                                                        "inner_options": {"prototypes_per_class": 2}}},
                        "linear"]}
    report = run_probe(store.path, None, tmp_path / "runs" / "r", config=config)
    run = tmp_path / "runs" / "r"
    metrics = json.loads((run / "metrics.json").read_text())
    mix = next(entry for entry in metrics["heads"] if entry["head"] == "mix")
    assert mix["layer"] == [1, 2, 3] and mix["options"]["inner"] == "protobin"
    for entry in mix["per_seed"]:
        weights = np.array(entry["layer_weights"])
        assert weights.shape == (3,) and abs(weights.sum() - 1.0) < 1e-6 and (weights > 0).all()
        saved = weights_of(run / "weights" / f"mix_seed{entry['seed']}.safetensors")
        assert np.allclose(torch.softmax(saved["layer_logits"], 0).numpy(), weights, atol=1e-7)
    trained = load_run(run)
    assert sorted(trained.heads) == ["linear_L1", "linear_L2", "linear_L3", "mix"] and trained.layers == [1, 2, 3]
    assert np.allclose(trained.heads["mix"][0][1].layer_weights().detach().numpy(), mix["per_seed"][0]["layer_weights"])
    predicted = predict(trained, store, "test", device="cpu")
    saved = {(row["head"], int(row["seed"]), row["clip_id"]): [float(row[f"score:{n}"]) for n in LABELS]
             for row in read_csv(run / "predictions.csv")}
    for (name, seed), scores in predicted.scores.items():
        for clip, values in zip(predicted.clip_ids, scores, strict=True):
            assert np.allclose(values, saved[(name, seed, clip)], atol=1e-7), (name, seed, clip)
    # A head picked by its layer key reads only that layer; the CLI writes the same scores.
    only = load_run(run, ["linear_L2"])
    assert only.layers == [2] and list(only.heads) == ["linear_L2"]
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(main, ["predict", str(run), store.path, "--split", "test", "--head", "mix,linear",
                                       "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert {row["head"] for row in read_csv(out)} == {"mix", "linear_L1", "linear_L2", "linear_L3"}
    assert report.results[-1].name == "linear" and report.results[-1].layer == 3


def test_layermix_learns_the_layer_that_carries_the_signal(tmp_path):
    store = layered_store(tmp_path / "s.zarr", n=96, signal={2}, chunk_clips=16)
    config = {"layer": "all", "seeds": 2, "grid": {"lr": [3e-2], "weight_decay": [1e-4]},
              "train": {"epochs": 10, "batch_size": 8, "device": "cpu"},
              "heads": [{"kind": "layermix", "options": {"inner": "linear"}}, "linear"]}
    report = run_probe(store.path, None, tmp_path / "runs" / "r", config=config)
    mix = next(r for r in report.results if r.kind == "layermix")
    weights = np.mean([entry["layer_weights"] for entry in mix.per_seed], axis=0)
    assert int(np.argmax(weights)) == 2 and weights[2] > 0.45 and weights[2] > 2.5 * weights[[0, 1, 3]].max()
    wrong = next(r for r in report.results if (r.name, r.layer) == ("linear", 0))
    right = next(r for r in report.results if (r.name, r.layer) == ("linear", 2))
    assert mix.test["map"] > wrong.test["map"] + 0.25
    assert mix.test["map"] > right.test["map"] - 0.05  # the mix recovers (nearly) the right layer's score
