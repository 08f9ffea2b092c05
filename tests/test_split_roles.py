"""Split roles: aliases for a missing default name, several splits per role, overlap refusals, --folds, the README."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from embedcache.errors import ConfigError
from embedcache.probe import assign_splits, fold_plan, fold_splits, open_data, parse_splits, resolve_config, run_probe
from embedcache.store import write_store
from embedcache.sweep import run_sweep
from embedcache_cli.main import main

REPO_ROOT = Path(__file__).resolve().parents[1]
LABELS = ["dog", "bell", "siren"]
FAST = ["--epochs", "2", "--batch-size", "8", "--device", "cpu"]
FAST_CONFIG = {"train": {"epochs": 2, "batch_size": 8, "device": "cpu"},
               "grid": {"lr": [1e-3, 3e-2], "weight_decay": [1e-4]}}
FOLDS = [f"fold{k}" for k in range(1, 6)]

pytestmark = pytest.mark.usefixtures("one_thread")


def make_store(path: Path, splits: list[str], seed: int = 0):
    """Single-label clips (class i % 3) whose tokens carry a class signal, with the given split per clip."""
    rng = np.random.default_rng(seed)
    n, dim = len(splits), 8
    labels = np.eye(len(LABELS), dtype=np.uint8)[np.arange(n) % len(LABELS)]
    tokens = rng.standard_normal((n, 8, dim)).astype(np.float32)
    tokens += 0.7 * labels[:, None, :] @ rng.standard_normal((len(LABELS), dim)).astype(np.float32)
    return write_store(path, {3: tokens}, labels, LABELS, [f"clip{i:03d}" for i in range(n)], splits, (4, 2),
                       chunk_clips=8)


def fold_names(n_clips: int = 60, folds: list[str] = FOLDS) -> list[str]:
    # Runs of 3 clips (one per class) cycle through the folds, so every fold holds every class, interleaved.
    return [folds[(i // 3) % len(folds)] for i in range(n_clips)]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def probe(*args: str):
    return CliRunner().invoke(main, ["probe", *args])


# -- assigning roles (pure) ---------------------------------------------------------------------------------
def test_a_default_role_takes_the_one_alias_the_store_has_and_says_so():
    requested = resolve_config(None)["splits"]
    available = {role: ("s.zarr", ["train", "dev", "eval"]) for role in ("train", "valid", "test")}
    splits, notes = assign_splits(requested, available)
    assert splits == {"train": "train", "valid": "dev", "test": "eval"}
    assert notes == ["splits.valid: the store has no split 'valid'; using 'dev' (set splits.valid to choose another)",
                     "splits.test: the store has no split 'test'; using 'eval' (set splits.test to choose another)"]
    for alias in ("val", "validation", "dev"):
        chosen, _ = assign_splits(requested, {r: ("s", ["train", alias, "test"]) for r in available})
        assert chosen == {"train": "train", "valid": alias, "test": "test"}


def test_no_alias_leaves_the_role_null_and_several_aliases_are_refused():
    requested = resolve_config(None)["splits"]
    splits, notes = assign_splits(requested, {r: ("s", ["train", "test"]) for r in ("train", "valid", "test")})
    assert splits == {"train": "train", "valid": None, "test": "test"}
    assert notes == ["splits.valid: the store has no split named valid or val or validation or dev; running without "
                     "a validation split (its splits: train, test)"]
    with pytest.raises(ConfigError, match=r"several validation splits \(val, dev\); set splits.valid"):
        assign_splits(requested, {r: ("s", ["train", "val", "dev"]) for r in ("train", "valid", "test")})
    # An alias another role already names is not taken twice.
    taken = {**requested, "train": ["train", "dev"]}
    splits, _ = assign_splits(taken, {r: ("s", ["train", "dev", "test"]) for r in ("train", "valid", "test")})
    assert splits == {"train": ["train", "dev"], "valid": None, "test": "test"}


def test_named_splits_the_store_lacks_and_overlaps_are_refused_naming_the_key():
    available = {r: ("s", FOLDS) for r in ("train", "valid", "test")}
    with pytest.raises(ConfigError) as error:
        assign_splits({"train": FOLDS[:3], "valid": "holdout", "test": "fold5"}, available)
    assert str(error.value) == (
        "splits.valid: the store has no split 'holdout' (its splits: fold1, fold2, fold3, fold4, fold5); set "
        "splits.valid in the probe config (YAML) or --splits to one of them, or to a list of them")
    with pytest.raises(ConfigError, match=r"splits.train: the store has no split 'train' .* or run with --folds$"):
        assign_splits(resolve_config(None)["splits"], available)
    with pytest.raises(ConfigError, match="^splits: 'fold3' is in both splits.train and splits.test; a split may"):
        assign_splits({"train": FOLDS[:3], "valid": "fold4", "test": "fold3"}, available)
    # The same name in two stores is two different splits.
    other = {**available, "test": ("other.zarr", FOLDS)}
    assert assign_splits({"train": FOLDS[:3], "valid": "fold4", "test": "fold3"}, other)[0]["test"] == "fold3"


def test_split_values_from_yaml_and_the_command_line():
    assert resolve_config({"splits": {"train": "fold1, fold2", "valid": ["fold4"]}})["splits"] == {
        "train": ["fold1", "fold2"], "valid": ["fold4"], "test": "test"}
    assert parse_splits("train=fold1,fold2;valid=;test=fold5") == {"train": "fold1,fold2", "valid": None,
                                                                    "test": "fold5"}
    with pytest.raises(ConfigError, match="names a split twice"):
        resolve_config({"splits": {"train": ["fold1", "fold1"]}})
    with pytest.raises(ConfigError, match="splits.valid: give a split name"):
        resolve_config({"splits": {"valid": 4}})
    with pytest.raises(ConfigError, match="roles train, valid, test"):
        parse_splits("training=fold1")


def test_fold_splits_sort_naturally_and_the_plan_validates_on_the_next_fold():
    assert fold_splits(["train", "fold10", "fold2", "fold1", "holdout"]) == ["fold1", "fold2", "fold10"]
    assert fold_splits(["fold_2", "fold_0", "fold_1"]) == ["fold_0", "fold_1", "fold_2"]
    plan = fold_plan(FOLDS)
    assert [(p["test"], p["valid"], p["train"]) for p in plan] == [
        ("fold1", "fold2", ["fold3", "fold4", "fold5"]), ("fold2", "fold3", ["fold1", "fold4", "fold5"]),
        ("fold3", "fold4", ["fold1", "fold2", "fold5"]), ("fold4", "fold5", ["fold1", "fold2", "fold3"]),
        ("fold5", "fold1", ["fold2", "fold3", "fold4"])]
    assert [(p["valid"], p["train"]) for p in fold_plan(FOLDS[:2])] == [(None, ["fold2"]), (None, ["fold1"])]
    assert fold_plan(FOLDS[:3], validation=False)[0]["train"] == ["fold2", "fold3"]


# -- through the probe ----------------------------------------------------------------------------------------
def test_cli_probe_uses_the_aliases_says_which_and_records_them(tmp_path):
    store = make_store(tmp_path / "a.zarr", ["train"] * 24 + ["dev"] * 12 + ["eval"] * 12)
    out = tmp_path / "runs" / "alias"
    result = probe(str(store.path), "--head", "linear", "--out", str(out), "--lr", "1e-3,3e-2", *FAST)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:3] == [
        "splits.valid: the store has no split 'valid'; using 'dev' (set splits.valid to choose another)",
        "splits.test: the store has no split 'test'; using 'eval' (set splits.test to choose another)",
        "data: train: in-memory, dev: in-memory, eval: in-memory"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["splits"] == {"train": "train", "valid": "dev", "test": "eval"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["splits"] == config["splits"] and metrics["split_notes"] == lines[:2]
    # The saved config names the splits outright: re-running it needs no alias and gives the same numbers.
    again = probe("--config", str(out / "config.yaml"), "--out", str(tmp_path / "runs" / "again"))
    assert again.exit_code == 0 and again.output.startswith("data: train: in-memory, dev: in-memory")
    assert json.loads((tmp_path / "runs" / "again" / "metrics.json").read_text())["heads"] == metrics["heads"]


def test_a_store_without_any_validation_name_runs_without_validation(tmp_path):
    store = make_store(tmp_path / "s.zarr", ["train"] * 36 + ["test"] * 12)
    grid = probe(str(store.path), "--head", "linear", "--out", str(tmp_path / "grid"), "--lr", "1e-3,3e-2", *FAST)
    assert grid.exit_code == 1
    assert "error: splits.valid is null but the grid has several configurations" in grid.output
    assert "(splits.valid in the probe config or --splits valid=NAME; the store's splits: train, test)" in grid.output
    one = probe(str(store.path), "--head", "linear", "--out", str(tmp_path / "one"), "--lr", "3e-2", *FAST)
    assert one.exit_code == 0, one.output
    assert one.output.startswith("splits.valid: the store has no split named valid or val or validation or dev; "
                                 "running without a validation split")
    metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert metrics["splits"]["valid"] is None and metrics["heads"][0]["valid"] == {}
    assert set(metrics["data_paths"]) == {"train", "test"}


def test_a_list_of_splits_is_the_union_of_their_clips(tmp_path):
    """Folds 1-3 as a list train exactly as one split holding the same clips: the numbers agree to the bit."""
    names = fold_names()
    folds = make_store(tmp_path / "folds.zarr", names)
    merged = {"fold1": "train", "fold2": "train", "fold3": "train", "fold4": "valid", "fold5": "test"}
    plain = make_store(tmp_path / "plain.zarr", [merged[name] for name in names])
    config = {**FAST_CONFIG, "splits": {"train": ["fold1", "fold2", "fold3"], "valid": "fold4", "test": "fold5"}}
    data = open_data(resolve_config(config, store=folds.path))
    expected = np.flatnonzero(np.isin(names, ["fold1", "fold2", "fold3"]))
    assert np.array_equal(data["train"].indices, expected) and data["train"].split == "fold1+fold2+fold3"
    assert np.array_equal(data["train"].labels, folds.labels[expected])

    (tmp_path / "lists.yaml").write_text(yaml.safe_dump(config))
    from_yaml = probe(str(folds.path), "--head", "linear,protobin", "--config", str(tmp_path / "lists.yaml"),
                      "--out", str(tmp_path / "runs" / "yaml"))
    assert from_yaml.exit_code == 0, from_yaml.output
    assert "data: fold1+fold2+fold3: in-memory, fold4: in-memory, fold5: in-memory" in from_yaml.output
    from_cli = probe(str(folds.path), "--head", "linear,protobin", "--splits",
                     "train=fold1,fold2,fold3;valid=fold4;test=fold5", "--lr", "1e-3,3e-2", *FAST,
                     "--out", str(tmp_path / "runs" / "cli"))
    assert from_cli.exit_code == 0, from_cli.output
    same = run_probe(plain.path, ["linear", "protobin"], tmp_path / "runs" / "plain", config=FAST_CONFIG, log=print)
    heads = [json.loads((tmp_path / "runs" / run / "metrics.json").read_text())["heads"] for run in ("yaml", "cli")]
    assert heads[0] == heads[1]
    for head, result in zip(heads[0], same.results, strict=True):
        assert (head["lr"], head["valid"], head["test"]) == (result.lr, result.valid, result.test)
    per_class = read_csv(tmp_path / "runs" / "cli" / "per_class_ap.csv")
    assert {row["split"] for row in per_class} == {"fold4", "fold5"}


def test_cli_refuses_unknown_and_shared_splits_in_one_line(tmp_path):
    store = make_store(tmp_path / "f.zarr", fold_names())
    unknown = probe(str(store.path), "--head", "linear", "--out", str(tmp_path / "r"), *FAST,
                    "--splits", "train=fold1,fold2,fold3;valid=holdout;test=fold5")
    assert unknown.exit_code == 1 and unknown.output.splitlines() == [
        "error: splits.valid: the store has no split 'holdout' (its splits: fold1, fold2, fold3, fold4, fold5); "
        "set splits.valid in the probe config (YAML) or --splits to one of them, or to a list of them"]
    shared = probe(str(store.path), "--head", "linear", "--out", str(tmp_path / "r"), *FAST,
                   "--splits", "train=fold1,fold2,fold3;valid=fold3;test=fold5")
    assert shared.exit_code == 1 and shared.output.splitlines() == [
        "error: splits: 'fold3' is in both splits.train and splits.valid; a split may serve one role only: give "
        "each role its own splits"]
    default = probe(str(store.path), "--head", "linear", "--out", str(tmp_path / "r"), *FAST)
    assert default.exit_code == 1 and default.output.strip().endswith("or to a list of them, or run with --folds")
    assert not (tmp_path / "r").exists()


# -- cross-validation -----------------------------------------------------------------------------------------
def test_cli_folds_runs_every_fold_and_summarises_mean_and_std(tmp_path):
    store = make_store(tmp_path / "esc.zarr", fold_names())
    out = tmp_path / "runs" / "cv"
    result = probe(str(store.path), "--folds", "--head", "linear,protobin", "--lr", "1e-3,3e-2", "--seeds", "2",
                   *FAST, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "fold1: train fold3+fold4+fold5, valid fold2, test fold1"
    assert "fold5: train fold2+fold3+fold4, valid fold1, test fold5" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", *FOLDS, "folds.csv", "folds.json"]

    summary = json.loads((out / "folds.json").read_text())
    assert summary["selection_metric"] == "accuracy" and summary["task"] == "multiclass"
    assert [(p["test"], p["valid"]) for p in summary["plan"]] == [(f, FOLDS[(k + 1) % 5]) for k, f in enumerate(FOLDS)]
    rows = read_csv(out / "folds.csv")
    for index, head in enumerate(summary["heads"]):
        # Each fold is a normal probe run: its splits, chosen lr and test metrics are the fold's own files.
        per_fold = []
        for k, fold in enumerate(FOLDS):
            metrics = json.loads((out / fold / "metrics.json").read_text())
            assert metrics["splits"] == {"train": [f for f in FOLDS if f not in (fold, FOLDS[(k + 1) % 5])],
                                         "valid": FOLDS[(k + 1) % 5], "test": fold}
            run = metrics["heads"][index]
            assert head["folds"][k]["lr"] == run["lr"] and head["folds"][k]["seeds"] == 2
            assert head["folds"][k]["test"]["accuracy"] == run["test"]["accuracy"]
            per_fold.append(run["test"]["accuracy"])
        assert head["test_mean"]["accuracy"] == pytest.approx(np.mean(per_fold), abs=1e-12)
        assert head["test_std"]["accuracy"] == pytest.approx(np.std(per_fold, ddof=1), abs=1e-12)
        mine = [row for row in rows if row["head"] == head["head"]]
        assert [row["fold"] for row in mine] == [*FOLDS, "mean", "std"]
        assert [float(row["test_accuracy"]) for row in mine[:5]] == pytest.approx(per_fold, abs=1e-12)
        assert float(mine[5]["test_accuracy"]) == pytest.approx(np.mean(per_fold), abs=1e-12)
        assert float(mine[6]["test_accuracy"]) == pytest.approx(np.std(per_fold, ddof=1), abs=1e-12)
        cell = f"{100 * np.mean(per_fold):6.2f} ± {100 * np.std(per_fold, ddof=1):.2f}"
        table_line = next(line for line in result.output.splitlines() if line.startswith(head["head"] + " "))
        assert cell in table_line and f"{100 * per_fold[0]:.2f}" in table_line
    ledger = read_csv(tmp_path / "runs" / "ledger.csv")
    assert len(ledger) == 5 * 2 * 2 and {Path(row["run_dir"]).name for row in ledger} == set(FOLDS)

    # RUN/config.yaml re-runs the whole cross-validation to the same numbers; a second run into RUN is refused.
    again = probe("--folds", "--config", str(out / "config.yaml"), "--out", str(tmp_path / "runs" / "again"))
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "runs" / "again" / "folds.json").read_text())["heads"] == summary["heads"]
    twice = probe(str(store.path), "--folds", "--head", "linear", *FAST, "--out", str(out))
    assert twice.exit_code == 1 and "already holds a cross-validation (folds.json)" in twice.output


def test_cli_folds_refusals(tmp_path):
    one = make_store(tmp_path / "one.zarr", ["train"] * 24 + ["valid"] * 12 + ["fold1"] * 12)
    result = probe(str(one.path), "--folds", "--head", "linear", *FAST, "--out", str(tmp_path / "r"))
    assert result.exit_code == 1 and result.output.splitlines() == [
        f"error: --folds: {one.path} has 1 fold split(s) (its splits: train, valid, fold1); cross-validation needs "
        "at least 2 splits named fold1, fold2, ... (or fold_0, ...)"]
    folds = make_store(tmp_path / "f.zarr", fold_names())
    chosen = probe(str(folds.path), "--folds", "--head", "linear", *FAST, "--out", str(tmp_path / "r"),
                   "--splits", "test=fold5")
    assert chosen.exit_code == 1 and "--folds chooses the splits of every fold itself" in chosen.output
    two = make_store(tmp_path / "two.zarr", fold_names(36, ["fold_0", "fold_1"]))
    grid = probe(str(two.path), "--folds", "--head", "linear", "--lr", "1e-3,3e-2", *FAST, "--out", str(tmp_path / "r"))
    assert grid.exit_code == 1 and "without a validation fold (2 folds" in grid.output
    assert not (tmp_path / "r").exists()
    single = probe(str(two.path), "--folds", "--head", "linear", "--lr", "3e-2", *FAST, "--out", str(tmp_path / "2"))
    assert single.exit_code == 0, single.output
    assert single.output.splitlines()[:2] == ["fold_0: train fold_1, valid -, test fold_0",
                                             "fold_1: train fold_0, valid -, test fold_1"]


# -- the sweep and the README ---------------------------------------------------------------------------------
def test_sweep_uses_the_alias_and_records_it(tmp_path):
    store = make_store(tmp_path / "s.zarr", ["train"] * 24 + ["val"] * 12 + ["test"] * 12)
    lines: list[str] = []
    sweep = {"trials": 2, "startup_trials": 2, "batch_trials": 2, "min_epochs": 1}
    config = {**FAST_CONFIG, "heads": ["linear"]}
    run_sweep(store.path, "linear", tmp_path / "sweep", config, sweep, final=False, log=lines.append)
    assert lines[0] == "splits.valid: the store has no split 'valid'; using 'val' (set splits.valid to choose another)"
    saved = yaml.safe_load((tmp_path / "sweep" / "sweep.yaml").read_text())
    assert saved["probe_config"]["splits"] == {"train": "train", "valid": "val", "test": "test"}
    assert saved["split_notes"] == lines[:1]


def _folds_examples() -> list[str]:
    """The `embedcache probe ... --folds` lines of the README's probe section and of `probe --help`."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("### probe", 1)[1].split("\n### ", 1)[0]
    help_text = CliRunner().invoke(main, ["probe", "--help"]).output
    return [line.strip() for text in (section, help_text) for line in text.splitlines()
            if line.strip().startswith("embedcache probe") and "--folds" in line]


def test_readme_and_help_folds_examples_run(tmp_path, monkeypatch):
    examples = _folds_examples()
    assert len(examples) == 2, examples
    store = make_store(tmp_path / "esc50.zarr", fold_names())
    monkeypatch.chdir(tmp_path)
    for k, example in enumerate(examples):
        words = shlex.split(example)[1:]
        # The documented store is a placeholder for ESC-50: run the example on a tiny 5-fold store, quickly.
        words[1] = str(store.path)
        words[words.index("--out") + 1] = f"runs/example{k}"
        result = CliRunner().invoke(main, [*words, *FAST])
        assert result.exit_code == 0, (example, result.output)
        assert re.search(r"mean ± std", result.output)
        assert (tmp_path / f"runs/example{k}" / "folds.csv").is_file()
