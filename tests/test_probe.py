"""The probe protocol: selection on validation, one test per chosen head, run directory, ledger, refusals, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

from embedcache.errors import ConfigError, StoreError
from embedcache.heads import unpack_prototypes
from embedcache.probe import DEFAULT_CONFIG, load_config, resolve_config, run_probe
from embedcache.results import LEDGER_COLUMNS, append_ledger, format_comparison_table, read_ledger
from embedcache.store import write_store
from embedcache_cli.main import main

REPO_ROOT = Path(__file__).resolve().parents[1]
LABELS = ["dog", "bell", "siren"]
FAST = {"train": {"epochs": 2, "batch_size": 8, "device": "cpu"}, "grid": {"lr": [1e-3, 1e-2], "weight_decay": [1e-4]}}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_store(path, n=48, labels=None, label_names=LABELS, splits=None, dim=8, provenance=None, seed=0):
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = (rng.random((n, len(label_names))) < 0.4).astype(np.uint8)
        labels[np.arange(n), np.arange(n) % len(label_names)] = 1
    tokens = rng.standard_normal((n, 8, dim)).astype(np.float32) + labels[:, None, :] @ rng.standard_normal(
        (len(label_names), dim)).astype(np.float32)
    splits = splits or ["train"] * (n // 2) + ["valid"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
    return write_store(path, {3: tokens}, labels, label_names, [f"clip{i:03d}" for i in range(n)], splits, (4, 2),
                       chunk_clips=8, provenance=provenance)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def store(tmp_path):
    provenance = {"encoder": {"name": "melpatch", "checkpoint_sha256": "ab" * 32}}
    return make_store(tmp_path / "s.zarr", provenance=provenance)


# -- the protocol and the run directory -------------------------------------------------------------------
def test_run_probe_writes_a_complete_run_directory_and_ledger(tmp_path, store):
    out = tmp_path / "runs" / "first"
    report = run_probe(store.path, ["linear", "protobin"], out, config=FAST, seeds=2)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml", "curves.csv", "metrics.json", "per_class_ap.csv", "predictions.csv", "sweep.csv", "weights"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selection_metric"] == "map" and metrics["layer"] == 3 and metrics["task"] == "multilabel"
    assert metrics["data_paths"] == {"train": "in-memory", "valid": "in-memory", "test": "in-memory"}
    assert [h["head"] for h in metrics["heads"]] == ["linear", "protobin"]
    for head, result in zip(metrics["heads"], report.results, strict=True):
        per_seed = [entry["test"]["map"] for entry in head["per_seed"]]
        assert head["test"]["map"] == pytest.approx(np.mean(per_seed))
        assert head["test"]["map_std"] == pytest.approx(np.std(per_seed, ddof=1))
        assert 0.0 <= head["valid"]["map"] <= 1.0 and head["test"]["n_classes_scored"] == 3
        assert head["num_parameters"] == result.num_parameters
    assert metrics["heads"][1]["num_parameters"] == 3 * 20 * 8 + 3 * 20 * 3 + 3  # protobin: J D + J C + C, J = 20 C

    # Sweep: every configuration and seed; the chosen lr has the best mean validation mAP.
    sweep = read_csv(out / "sweep.csv")
    assert len(sweep) == 2 * 2 * 2
    for head in metrics["heads"]:
        means = {lr: np.mean([float(r["valid_map"]) for r in sweep if r["head"] == head["head"] and
                              float(r["lr"]) == lr]) for lr in (1e-3, 1e-2)}
        assert means[head["lr"]] == max(means.values())
    assert len(read_csv(out / "curves.csv")) == 2 * 2 * 2 * 2  # configs x seeds x epochs
    per_class = read_csv(out / "per_class_ap.csv")
    assert {(r["head"], r["split"]) for r in per_class} == {(h, s) for h in ("linear", "protobin")
                                                           for s in ("valid", "test")}
    assert len(per_class) == 2 * 2 * 3

    # Weights: one file per head and seed; protobin's packed prototypes are the signs of its master copy.
    weights = sorted(p.name for p in (out / "weights").iterdir())
    assert weights == ["linear_seed0.safetensors", "linear_seed1.safetensors",
                       "protobin_seed0.prototypes_packed.safetensors", "protobin_seed0.safetensors",
                       "protobin_seed1.prototypes_packed.safetensors", "protobin_seed1.safetensors"]
    master = load_file(out / "weights" / "protobin_seed1.safetensors")["prototypes"]
    with safe_open(out / "weights" / "protobin_seed1.prototypes_packed.safetensors", "pt") as handle:
        packed = {"bits": handle.get_tensor("bits").numpy(), "shape": json.loads(handle.metadata()["shape"])}
        assert json.loads(handle.metadata()["config"])["kind"] == "protobin"
    assert packed["bits"].nbytes == 60 * 8 // 8  # 1 bit per value
    assert torch.equal(unpack_prototypes(packed), torch.where(master >= 0, 1.0, -1.0))

    # Ledger: one row per head and seed, with the store's provenance; a second run appends.
    rows = read_ledger(tmp_path / "runs" / "ledger.csv")
    assert len(rows) == 4 and list(rows[0]) == LEDGER_COLUMNS
    assert {r["encoder"] for r in rows} == {"melpatch"} and {r["checkpoint_sha256"] for r in rows} == {"ab" * 32}
    protobin_rows = [r for r in rows if r["head"] == "protobin"]
    assert [float(r["test_map"]) for r in protobin_rows] == [e["test"]["map"] for e in metrics["heads"][1]["per_seed"]]
    run_probe(store.path, ["linear"], tmp_path / "runs" / "second", config=FAST)
    assert len(read_ledger(tmp_path / "runs" / "ledger.csv")) == 5


def test_saved_config_reruns_to_the_same_numbers(tmp_path, store):
    first = run_probe(store.path, ["attentive", "protobin"], tmp_path / "a", config=FAST, ledger=tmp_path / "l.csv")
    config = load_config(tmp_path / "a" / "config.yaml")
    assert config["store"] == str(Path(store.path).resolve()) and config["layer"] == 3
    again = run_probe(None, None, tmp_path / "b", config=config, ledger=tmp_path / "l.csv")
    for x, y in zip(first.results, again.results, strict=True):
        assert (x.name, x.lr, x.test["map"], x.valid["map"]) == (y.name, y.lr, y.test["map"], y.valid["map"])
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text()) == config


def test_multiclass_store_is_chosen_by_accuracy(tmp_path):
    n = 48
    store = make_store(tmp_path / "mc.zarr", n=n, labels=np.eye(3, dtype=np.uint8)[np.arange(n) % 3])
    report = run_probe(store.path, ["linear"], tmp_path / "run", config=FAST)
    result = report.results[0]
    assert report.config["task"] == "multiclass" and result.metric == "accuracy"
    assert 0.0 <= result.test["accuracy"] <= 1.0
    assert "accuracy" in format_comparison_table(report)


def test_named_head_variants_and_per_head_grids(tmp_path, store):
    config = {**FAST, "heads": [
        {"name": "linear_max", "kind": "linear", "lr": 1e-2, "options": {"pooling": "max"}},
        {"name": "linear_mean", "kind": "linear", "lr": [1e-2], "options": {"pooling": "mean"}},
    ]}
    report = run_probe(store.path, None, tmp_path / "run", config=config)
    assert [(r.name, r.lr, r.options["pooling"]) for r in report.results] == [
        ("linear_max", 1e-2, "max"), ("linear_mean", 1e-2, "mean")]
    assert len(report.sweep) == 2
    with pytest.raises(ConfigError, match="unique"):
        resolve_config({"heads": ["linear", "linear"]})


# -- refusals ---------------------------------------------------------------------------------------------
def test_refuses_a_store_still_being_written(tmp_path, store):
    group = zarr.open_group(store.path, mode="r+")
    attrs = group.attrs["embedcache"]
    group.attrs["embedcache"] = {**attrs, "status": "writing"}
    with pytest.raises(StoreError, match="still being written"):
        run_probe(store.path, ["linear"], tmp_path / "run", config=FAST)


def test_refuses_an_empty_split(tmp_path, store):
    group = zarr.open_group(store.path, mode="r+")
    attrs = group.attrs["embedcache"]
    attrs["layout"]["split_names"] = [*attrs["layout"]["split_names"], "holdout"]
    group.attrs["embedcache"] = attrs
    with pytest.raises(StoreError, match="split 'holdout' has no clips"):
        run_probe(store.path, ["linear"], tmp_path / "run", config={**FAST, "splits": {"test": "holdout"}})
    with pytest.raises(ConfigError, match=r"splits.valid: the store has no split 'dev' \(its splits: train, valid"):
        run_probe(store.path, ["linear"], tmp_path / "run", config={**FAST, "splits": {"valid": "dev"}})
    assert not (tmp_path / "run").exists()


def test_refuses_a_class_without_positives_in_train(tmp_path):
    labels = np.zeros((48, 3), np.uint8)
    labels[:, 0] = 1
    labels[24:, 2] = 1  # 'siren' only outside train, 'bell' nowhere
    store = make_store(tmp_path / "s.zarr", labels=labels)
    with pytest.raises(StoreError, match=r"no positive clip for 2 class\(es\): bell, siren"):
        run_probe(store.path, ["linear"], tmp_path / "run", config=FAST)


def test_refuses_stores_with_different_label_vocabularies(tmp_path, store):
    other = make_store(tmp_path / "other.zarr", label_names=["dog", "bell", "horn"])
    config = {**FAST, "split_stores": {"test": str(other.path)}}
    with pytest.raises(StoreError, match="label vocabulary"):
        run_probe(store.path, ["linear"], tmp_path / "run", config=config)
    same = make_store(tmp_path / "same.zarr", seed=1)
    report = run_probe(store.path, ["linear"], tmp_path / "ok", config={**FAST, "split_stores": {"test": same.path}})
    assert report.results[0].test["n_classes_scored"] == 3


def test_refuses_bad_configs_and_an_existing_run(tmp_path, store):
    with pytest.raises(ConfigError, match="unknown key"):
        resolve_config({"epochs": 3})
    with pytest.raises(ConfigError, match="unknown head kind 'transformer'"):
        resolve_config({"heads": ["transformer"]})
    with pytest.raises(ConfigError, match="train: unknown option"):
        resolve_config({"train": {"learning_rate": 1}})
    with pytest.raises(ConfigError, match="task: multiclass"):
        run_probe(store.path, ["linear"], tmp_path / "mc", config={**FAST, "task": "multiclass"})
    with pytest.raises(ConfigError, match="no heads given"):  # not silently the config's heads
        run_probe(store.path, [], tmp_path / "none", config=FAST)
    run_probe(store.path, ["linear"], tmp_path / "run", config=FAST)
    with pytest.raises(ConfigError, match="already holds a probe run"):
        run_probe(store.path, ["linear"], tmp_path / "run", config=FAST)
    report = run_probe(store.path, ["protobin"], tmp_path / "run", config=FAST, overwrite=True)
    assert [r.name for r in report.results] == ["protobin"]
    assert sorted(p.name for p in (tmp_path / "run" / "weights").iterdir())[0].startswith("protobin")


def test_ledger_with_foreign_columns_is_refused(tmp_path):
    ledger = tmp_path / "ledger.csv"
    ledger.write_text("a,b\n1,2\n")
    with pytest.raises(StoreError, match="new --ledger"):
        append_ledger(ledger, [{}])


# -- configs ----------------------------------------------------------------------------------------------
def test_default_yaml_spells_out_the_code_defaults_and_paper_yaml_the_protocol():
    default = load_config(REPO_ROOT / "configs" / "probes" / "default.yaml")
    assert resolve_config(default) == resolve_config(None)
    assert set(default) == set(DEFAULT_CONFIG) and set(default["train"]) == set(DEFAULT_CONFIG["train"])
    paper_file = load_config(REPO_ROOT / "configs" / "probes" / "paper.yaml")
    assert set(paper_file["train"]) == set(DEFAULT_CONFIG["train"])
    paper = resolve_config(paper_file)
    assert (paper["train"]["epochs"], paper["train"]["batch_size"], paper["seeds"]) == (30, 128, 5)
    assert [h["kind"] for h in paper["heads"]] == ["linear", "attentive", "protobin"]
    assert min(paper["grid"]["lr"]) == 1e-4 and max(paper["grid"]["lr"]) == 8e-2
    assert paper["grid"]["weight_decay"] == [1e-5, 1e-4, 5e-4]


# -- tables and CLI ---------------------------------------------------------------------------------------
def test_comparison_tables_from_a_report_and_from_the_ledger(tmp_path, store):
    report = run_probe(store.path, ["linear", "protobin"], tmp_path / "runs" / "r", config=FAST, seeds=2)
    table = format_comparison_table(report)
    for result in report.results:
        cell = f"{100 * result.test['map']:6.2f} ± {100 * result.test['map_std']:.2f}"
        assert cell in table and result.name in table
    from_ledger = format_comparison_table(read_ledger(tmp_path / "runs" / "ledger.csv"))
    for result in report.results:
        assert f"{100 * result.test['map']:6.2f} ± {100 * result.test['map_std']:.2f}" in from_ledger
    assert from_ledger.splitlines()[0].split()[0] == "run"
    assert format_comparison_table([]) == "(no results)"


def test_cli_probe_and_results(tmp_path, store):
    runner = CliRunner()
    out = tmp_path / "runs" / "cli"
    result = runner.invoke(main, [
        "probe", store.path, "--head", "linear,protobin", "--out", str(out), "--lr", "1e-3,1e-2",
        "--weight-decay", "1e-4", "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--seeds", "2",
    ])
    assert result.exit_code == 0, result.output
    assert "data: train: in-memory" in result.output and "protobin" in result.output
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["grid"]["lr"] == [1e-3, 1e-2] and config["seeds"] == 2 and config["train"]["epochs"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    shown = f"{100 * metrics['heads'][1]['test']['map']:6.2f}"
    assert shown in result.output

    rerun = runner.invoke(main, ["probe", "--config", str(out / "config.yaml"), "--out", str(tmp_path / "rerun")])
    assert rerun.exit_code == 0, rerun.output
    assert json.loads((tmp_path / "rerun" / "metrics.json").read_text())["heads"] == metrics["heads"]

    listed = runner.invoke(main, ["results", str(tmp_path / "runs" / "ledger.csv"), "--head", "protobin"])
    assert listed.exit_code == 0 and shown in listed.output and "linear " not in listed.output

    failed = runner.invoke(main, ["probe", store.path, "--head", "linear", "--out", str(out), "--lr", "fast"])
    assert failed.exit_code == 1 and "error: --lr 'fast'" in failed.output
    missing = runner.invoke(main, ["results", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 1 and "no results ledger" in missing.output


def test_without_a_validation_split_only_single_configurations_run(tmp_path, store):
    config = {**FAST, "splits": {"valid": None}}
    with pytest.raises(ConfigError, match="splits.valid is null"):
        run_probe(store.path, ["linear"], tmp_path / "grid", config=config)
    single = {**config, "grid": {"lr": [1e-2], "weight_decay": [1e-4]}}
    report = run_probe(store.path, ["linear"], tmp_path / "one", config=single)
    assert report.results[0].valid == {} and 0.0 <= report.results[0].test["map"] <= 1.0
    assert set(report.data_paths) == {"train", "test"}


# -- a stranger's store and hand-edited inputs ------------------------------------------------------------
@pytest.mark.parametrize("array,row,value,message", [
    ("labels", (5, 1), 200, "labels hold 1 value(s) other than 0/1 (e.g. 200 at row 5, class 'bell')"),
    ("splits", 7, 9, "splits hold 1 code(s) outside 0..2 (e.g. 9 at row 7"),
    ("valid_tokens", 3, 99, "valid_tokens hold 1 value(s) outside 0..8 (e.g. 99 at row 3)"),
    ("valid_tokens", 4, -1, "valid_tokens hold 1 value(s) outside 0..8 (e.g. -1 at row 4)"),
])
def test_probe_refuses_what_verify_reports_in_the_per_row_arrays(tmp_path, store, array, row, value, message):
    zarr.open_group(store.path, mode="r+")[array][row] = value
    result = CliRunner().invoke(main, ["probe", store.path, "--head", "linear", "--out", str(tmp_path / "run"),
                                       "--epochs", "1", "--device", "cpu", "--lr", "1e-3"])
    assert result.exit_code == 1 and message in result.output and "run `embedcache verify" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    verify = CliRunner().invoke(main, ["verify", store.path])
    assert verify.exit_code == 1 and f"  {array}: " in verify.output


@pytest.mark.parametrize("flags,message", [
    (["--lr", "-1e-3"], "--lr: -0.001 is not a positive finite learning rate"),
    (["--lr", "nan"], "--lr: nan is not a positive finite learning rate"),
    (["--lr", "0"], "--lr: 0.0 is not a positive finite learning rate"),
    (["--weight-decay", "-1e-4"], "--weight-decay: -0.0001 is not a finite weight decay >= 0"),
    (["--weight-decay", "inf"], "--weight-decay: inf is not a finite weight decay >= 0"),
])
def test_negative_or_nan_lr_and_weight_decay_are_refused_naming_the_flag(tmp_path, store, flags, message):
    result = CliRunner().invoke(main, ["probe", store.path, "--head", "linear", "--out", str(tmp_path / "run"),
                                       "--epochs", "1", "--device", "cpu", *flags])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"error: {message}"), result.output


@pytest.mark.parametrize("config,message", [
    ({"grid": {"lr": [1e-3, -0.1]}}, "grid.lr: -0.1 is not a positive finite learning rate"),
    ({"grid": {"weight_decay": float("nan")}}, "grid.weight_decay: nan is not a finite weight decay >= 0"),
    ({"heads": [{"kind": "linear", "lr": float("-inf")}]}, "heads[0].lr: -inf is not a positive finite"),
    ({"heads": [{"kind": "linear", "weight_decay": [-1]}]}, "heads[0].weight_decay: -1.0 is not a finite"),
    ({"seeds": "many"}, "seeds: 'many' is not a whole number >= 1"),
    ({"layer": "last"}, "layer: 'last' is not a whole number"),
])
def test_bad_numbers_in_a_probe_config_are_refused_naming_the_key(tmp_path, store, config, message):
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump({**FAST, **config}))
    result = CliRunner().invoke(main, ["probe", store.path, "--config", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"error: {message}"), result.output


def _ledger_rows(n: int = 2) -> list[dict]:
    base = {column: "" for column in LEDGER_COLUMNS}
    base.update(timestamp="2026-01-01T00:00:00+00:00", run_dir="/runs/a", store="/s.zarr", encoder="beats", layer="11",
                task="multilabel", head="linear", kind="linear", options="{}", lr="0.001", weight_decay="0.0001",
                epochs="2", batch_size="8", num_parameters="27", metric="map", valid="0.5", test="0.4", test_map="0.4")
    return [{**base, "seed": str(seed), "test_map": f"0.{4 + seed}"} for seed in range(n)]


def _write_ledger(path: Path, rows: list[dict], columns: list[str] = LEDGER_COLUMNS) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("edit,warning", [
    (lambda rows: rows[1].update(lr="fast"), "line 3: lr 'fast' is not a number; row skipped"),
    (lambda rows: rows[1].update(num_parameters="1.5"), "line 3: num_parameters '1.5' is not a whole number"),
    (lambda rows: rows[1].update(test_map="high"), "line 3: test_map 'high' is not a number"),
    (lambda rows: rows[1].update(weight_decay="inf"), "line 3: weight_decay 'inf' is not a number"),
])
def test_results_skips_hand_edited_ledger_rows_naming_each(tmp_path, edit, warning):
    rows = _ledger_rows(3)
    edit(rows)
    ledger = _write_ledger(tmp_path / "ledger.csv", rows)
    result = CliRunner().invoke(main, ["results", str(ledger)])
    assert result.exit_code == 0, result.output
    assert f"warning: {ledger} {warning}" in result.output
    assert " 2  " in result.output.splitlines()[-1]  # the two good seeds of the run are still averaged


def test_results_refuses_a_ledger_it_cannot_read_in_one_line(tmp_path):
    good = _ledger_rows(2)
    cases = {
        "missing columns": (lambda p: _write_ledger(p, good, [c for c in LEDGER_COLUMNS if c != "lr"]),
                            "not an embedcache results ledger: missing column(s) ['lr']"),
        "not utf-8": (lambda p: p.write_bytes(b"timestamp,run_dir\n\xff\xfe\n"), "not UTF-8 text"),
        "a 1 MB field": (lambda p: p.write_text(",".join(LEDGER_COLUMNS) + "\n" + "x" * 2**20 + "\n"),
                         "line 2: not readable as CSV (field larger than field limit"),
        "empty": (lambda p: p.write_text(""), "empty: no header row"),
    }
    for name, (write, message) in cases.items():
        path = tmp_path / f"{name}.csv"
        write(path)
        result = CliRunner().invoke(main, ["results", str(path)])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit | None), (name, result.exception)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}") and message in lines[0], (name, lines)


def test_results_warns_on_extra_columns_and_skips_truncated_rows(tmp_path):
    ledger = _write_ledger(tmp_path / "ledger.csv", [{**row, "note": "mine"} for row in _ledger_rows(3)],
                           [*LEDGER_COLUMNS, "note"])
    with open(ledger, "a") as handle:
        handle.write("2026-01-02T00:00:00+00:00,/runs/b,/s.zarr\n")  # a row cut short by a crash or an editor
    warnings = []
    rows = read_ledger(ledger, log=warnings.append)
    assert len(rows) == 3 and list(rows[0]) == LEDGER_COLUMNS
    assert warnings == [f"{ledger}: column(s) ['note'] are not embedcache's; ignored",
                        f"{ledger} line 5: 3 fields, the header has 25 (a truncated or hand-edited row); row skipped"]
    result = CliRunner().invoke(main, ["results", str(ledger)])
    assert result.exit_code == 0 and result.output.count("warning: ") == 2 and "linear" in result.output
