"""Long probe runs: progress, resume after kill -9, per-head divergence, predictions, head options, shared seeds."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_train import make_store

from embedcache import heads as head_registry
from embedcache.errors import ConfigError
from embedcache.probe import apply_overrides, resolve_config, run_probe
from embedcache.results import read_ledger
from embedcache_cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"train": {"epochs": 2, "batch_size": 8, "device": "cpu"}}
FIVE_HEADS = "linear,mlp,attentive,proto,protobin"


def metrics(run: Path) -> dict:
    data = json.loads((run / "metrics.json").read_text())
    return {head["head"]: (head["lr"], head["test"], head["valid"]) for head in data["heads"]}


def test_a_killed_run_resumes_with_the_same_command_and_equals_an_uninterrupted_one(tmp_path):
    make_store(tmp_path / "s.zarr", n=160)
    args = [sys.executable, "-m", "embedcache", "probe", str(tmp_path / "s.zarr"), "--head", FIVE_HEADS, "--seeds",
            "4", "--epochs", "12", "--batch-size", "8", "--device", "cpu", "--no-progress", "--out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([*args, str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    units = tmp_path / "killed" / "units"
    deadline = time.monotonic() + 120
    while not list(units.glob("*.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = sorted(path.stem for path in units.glob("*.json"))
    assert finished and len(finished) < 4 and not (tmp_path / "killed" / "metrics.json").exists()
    resumed = subprocess.run([*args, str(tmp_path / "killed")], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run([*args, str(tmp_path / "whole")], env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    assert metrics(tmp_path / "killed") == metrics(tmp_path / "whole")
    assert (tmp_path / "killed" / "predictions.csv").read_text() == (tmp_path / "whole" / "predictions.csv").read_text()
    assert not units.exists()  # a whole run keeps only its chosen heads


def test_a_run_with_a_diverging_configuration_finishes_and_says_so(tmp_path):
    make_store(tmp_path / "s.zarr")
    result = CliRunner().invoke(main, ["probe", str(tmp_path / "s.zarr"), "--head", "linear,protobin", "--lr",
                                       "1e-2,1e6", "--weight-decay", "1e-2", "--epochs", "3", "--batch-size", "8",
                                       "--device", "cpu", "--seeds", "2", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    sweep = list(csv.DictReader(open(tmp_path / "run" / "sweep.csv")))
    assert {row["lr"] for row in sweep if row["diverged"] == "True"} == {"1000000.0"}
    assert {head: lr for head, (lr, _, _) in metrics(tmp_path / "run").items()} == {"linear": 0.01, "protobin": 0.01}
    only = CliRunner().invoke(main, ["probe", str(tmp_path / "s.zarr"), "--head", "linear", "--lr", "1e6",
                                     "--weight-decay", "1e-2", "--epochs", "3", "--batch-size", "8", "--device",
                                     "cpu", "--out", str(tmp_path / "bad")])
    assert only.exit_code == 0, only.output
    (row,) = [line for line in only.output.splitlines() if line.startswith("linear ")]
    assert row.split()[-2] == "diverged"  # the test mAP cell
    head = json.loads((tmp_path / "bad" / "metrics.json").read_text())["heads"][0]
    assert head["status"] == "diverged" and head["test"] == {}
    rows = read_ledger(tmp_path / "ledger.csv")
    assert [row["status"] for row in rows if row["run_dir"].endswith("bad")] == ["diverged"]


def test_predictions_hold_every_test_clip_per_head_and_seed(tmp_path):
    make_store(tmp_path / "s.zarr")
    report = run_probe(tmp_path / "s.zarr", ["linear", "protobin"], tmp_path / "run", config=FAST, seeds=2)
    rows = list(csv.DictReader(open(tmp_path / "run" / "predictions.csv")))
    test_clips = 72 - 36 - 18
    assert len(rows) == 2 * 2 * test_clips
    assert set(rows[0]) == {"head", "seed", "clip_id", "true:dog", "true:bell", "true:siren", "score:dog",
                            "score:bell", "score:siren"}
    # The file's scores give the reported test mAP back.
    from embedcache.metrics import multilabel_metrics

    protobin = [row for row in rows if row["head"] == "protobin" and row["seed"] == "0"]
    targets = np.array([[int(row[f"true:{c}"]) for c in ("dog", "bell", "siren")] for row in protobin])
    scores = np.array([[float(row[f"score:{c}"]) for c in ("dog", "bell", "siren")] for row in protobin])
    seed0 = next(e for e in report.results[1].per_seed if e["seed"] == 0)
    assert multilabel_metrics(targets, scores)["map"] == pytest.approx(seed0["test"]["map"], abs=1e-7)


def test_multiclass_runs_write_a_confusion_matrix(tmp_path):
    labels = np.eye(3, dtype=np.uint8)[np.arange(72) % 3]
    make_store(tmp_path / "s.zarr", labels=labels)
    run_probe(tmp_path / "s.zarr", ["linear"], tmp_path / "run", config=FAST, seeds=2)
    rows = list(csv.DictReader(open(tmp_path / "run" / "confusion.csv")))
    assert [row["true"] for row in rows] == ["dog", "bell", "siren"]
    counts = np.array([[int(row[f"predicted:{c}"]) for c in ("dog", "bell", "siren")] for row in rows])
    assert counts.sum() == 2 * (72 - 36 - 18) and counts.sum(axis=1).tolist() == [12, 12, 12]


def test_head_options_reach_the_heads_and_unknown_ones_are_named(tmp_path):
    make_store(tmp_path / "s.zarr")
    result = CliRunner().invoke(main, ["probe", str(tmp_path / "s.zarr"), "--head", "linear,protobin", "--lr",
                                       "1e-2", "--head-option", "prototypes_per_class=2", "--head-option",
                                       "linear.pooling=mean", "--epochs", "1", "--batch-size", "8", "--device",
                                       "cpu", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    heads = {h["head"]: h for h in json.loads((tmp_path / "run" / "metrics.json").read_text())["heads"]}
    expected = head_registry.create("protobin", num_classes=3, embed_dim=8, prototypes_per_class=2).num_parameters()
    assert heads["protobin"]["options"] == {"prototypes_per_class": 2}
    assert heads["protobin"]["num_parameters"] == expected == 69
    assert heads["linear"]["options"] == {"pooling": "mean"}
    with pytest.raises(ConfigError, match="no head here takes 'depth'"):
        resolve_config(apply_overrides(head_options={"depth": 3}), heads=["linear"])
    with pytest.raises(ConfigError, match="linear \\(linear\\) takes no option 'prototypes_per_class'"):
        resolve_config(apply_overrides(head_options={"linear": {"prototypes_per_class": 3}}), heads=["linear"])


def test_seeds_can_share_one_pass_and_differ_in_init_only(tmp_path):
    make_store(tmp_path / "s.zarr")
    shared = run_probe(tmp_path / "s.zarr", ["linear"], tmp_path / "shared", seeds=3,
                       config={**FAST, "data_order": "shared", "grid": {"lr": [1e-2], "weight_decay": [1e-4]}})
    curves = list(csv.DictReader(open(tmp_path / "shared" / "curves.csv")))
    assert {row["bank_seed"] for row in curves} == {"0"} and {row["seed"] for row in curves} == {"0", "1", "2"}
    per_seed = run_probe(tmp_path / "s.zarr", ["linear"], tmp_path / "per_seed", seeds=3,
                         config={**FAST, "grid": {"lr": [1e-2], "weight_decay": [1e-4]}})
    # Seed 0 has the same init and the same data order either way; seeds 1 and 2 differ in data order.
    first = [e["test"]["map"] for e in shared.results[0].per_seed]
    second = [e["test"]["map"] for e in per_seed.results[0].per_seed]
    assert first[0] == second[0] and first[1:] != second[1:]


def test_predict_reproduces_the_runs_test_scores_exactly(tmp_path):
    make_store(tmp_path / "s.zarr")
    run_probe(tmp_path / "s.zarr", ["linear", "protobin"], tmp_path / "run", config=FAST, seeds=2)
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "run"), str(tmp_path / "s.zarr"), "--split", "test",
                                       "--out", str(tmp_path / "again.csv")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "run" / "predictions.csv").read_text()
    other = CliRunner().invoke(main, ["predict", str(tmp_path / "run"), str(tmp_path / "s.zarr"), "--head", "nope",
                                      "--out", str(tmp_path / "x.csv")])
    assert other.exit_code == 1 and "no head 'nope' in this run (its heads: linear, protobin)" in other.output


def test_predict_on_new_audio_extracts_it_with_the_stores_encoder(tmp_path, tiny_manifest):
    runner = CliRunner()
    store = tmp_path / "tiny.zarr"
    assert runner.invoke(main, ["extract", "--encoder", "vit", "--random-init", "--encoder-option", "depth=1",
                                "--manifest", str(tiny_manifest), "--out", str(store), "--workers", "0",
                                "--no-progress"]).exit_code == 0
    run_probe(store, ["linear"], tmp_path / "run", config={**FAST, "splits": {"valid": None, "test": None},
                                                           "grid": {"lr": [1e-2], "weight_decay": [1e-4]}})
    result = runner.invoke(main, ["predict", str(tmp_path / "run"), str(tiny_manifest), "--out",
                                  str(tmp_path / "new.csv")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "new.csv")))
    assert len(rows) == 12 and rows[0]["clip_id"] == "clip000"
    # The same clips through the original store give the same scores: same encoder, options and layer.
    runner.invoke(main, ["predict", str(tmp_path / "run"), str(store), "--out", str(tmp_path / "old.csv")])
    old = list(csv.DictReader(open(tmp_path / "old.csv")))
    assert [r["score:low"] for r in rows] == [r["score:low"] for r in old]


def test_an_older_ledger_gains_the_status_column_when_a_run_appends(tmp_path):
    from embedcache.results import LEDGER_ADDED, LEDGER_COLUMNS

    make_store(tmp_path / "s.zarr")
    older = [column for column in LEDGER_COLUMNS if column not in LEDGER_ADDED]
    row = {column: "" for column in older} | {"head": "linear", "kind": "linear", "lr": "0.01",
                                              "weight_decay": "0.0001", "seed": "0", "epochs": "2",
                                              "batch_size": "8", "num_parameters": "27", "metric": "map"}
    with open(tmp_path / "ledger.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=older)
        writer.writeheader()
        writer.writerow(row)
    assert [r["status"] for r in read_ledger(tmp_path / "ledger.csv")] == [""]  # read before the upgrade
    run_probe(tmp_path / "s.zarr", ["linear"], tmp_path / "run", config=FAST, ledger=tmp_path / "ledger.csv")
    header, *rows = list(csv.reader(open(tmp_path / "ledger.csv")))
    assert header == LEDGER_COLUMNS and [r[-1] for r in rows] == ["", "ok"]


def test_probe_config_is_typed_and_round_trips_through_config_yaml(tmp_path):
    import yaml

    from embedcache.probe import HeadConfig, ProbeConfig

    make_store(tmp_path / "s.zarr")
    overrides = apply_overrides(FAST, lr=[1e-2], head_options={"protobin": {"prototypes_per_class": 2}})
    config = ProbeConfig.resolve(overrides, heads=["linear", "protobin"], store=str(tmp_path / "s.zarr"))
    assert config.heads[1] == HeadConfig("protobin", "protobin", (1e-2,), (1e-4,), {"prototypes_per_class": 2})
    assert config.train.epochs == 2 and config.data_order == "per_seed"
    report = run_probe(None, None, tmp_path / "run", config=config)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert ProbeConfig.from_dict(saved) == ProbeConfig.from_dict(report.config)
    assert ProbeConfig.from_dict(saved).heads == config.heads


def test_a_config_chosen_on_another_store_is_refused(tmp_path):
    make_store(tmp_path / "s.zarr")
    config = tmp_path / "best.yaml"
    config.write_text('# embedcache-store: {"store": "x", "fingerprint": "0123", "subset": null}\n'
                      "heads: [linear]\ngrid: {lr: [0.01], weight_decay: [0.0001]}\n"
                      "train: {epochs: 1, batch_size: 8, device: cpu}\n")
    result = CliRunner().invoke(main, ["probe", str(tmp_path / "s.zarr"), "--config", str(config), "--out",
                                       str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "this probe config was made on store fingerprint 0123 (subset null), but" in result.output
    assert not (tmp_path / "run" / "metrics.json").exists()
