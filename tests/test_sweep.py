"""The sweep: Sobol points, pruning inside a bank, batched == one at a time, best.yaml re-runs, shared studies;
collapsed ranges, the first rung, several heads, a changed store, one diverged head in a batch."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner

from embedcache.errors import ConfigError
from embedcache.store import TokenStore, write_store
from embedcache.store.grow import append_store
from embedcache.sweep import (
    STORE_ATTR,
    WARNINGS_ATTR,
    SobolThenTPESampler,
    SweepConfig,
    collapsed_ranges,
    first_rung,
    redact,
    run_sweep,
    search_space,
)
from embedcache.train import HeadBank, HeadSpec, SplitData, TrainConfig
from embedcache_cli.main import main

POSTGRES_URL = os.environ.get("EMBEDCACHE_TEST_POSTGRES_URL")
LABELS = ["dog", "bell", "siren"]
TRAIN = {"epochs": 4, "batch_size": 8, "device": "cpu"}
PROBE = {"train": TRAIN, "grid": {"lr": [1e-4, 8e-2], "weight_decay": [1e-5, 5e-4]}}
# 8 trials: 4 Sobol then 4 TPE, 4 per pass; rungs at epochs 1 and 2 (of 4), so pruning shows within 2 passes.
SMALL = {"trials": 8, "startup_trials": 4, "batch_trials": 4, "min_epochs": 1, "reduction_factor": 2,
         "top_k": 2, "final_seeds": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def write_tiny(path: Path, splits: list[str], first: int = 0, seed: int = 3):
    """Clips first.. with 3 labels and a weak class signal in a few tokens: validation mAP depends on lr and wd."""
    rng = np.random.default_rng(seed)
    n, dim = len(splits), 8
    labels = (rng.random((n, len(LABELS))) < 0.35).astype(np.uint8)
    labels[np.arange(n), np.arange(n) % len(LABELS)] = 1
    tokens = rng.standard_normal((n, 8, dim)).astype(np.float32)
    tokens[:, :2] += 0.8 * labels[:, None, :] @ rng.standard_normal((len(LABELS), dim)).astype(np.float32)
    return write_store(path, {3: tokens}, labels, LABELS, [f"clip{i:03d}" for i in range(first, first + n)], splits,
                       (4, 2), chunk_clips=8)


TINY_SPLITS = ["train"] * 24 + ["valid"] * 12 + ["test"] * 12


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """48 clips: 24 train, 12 valid, 12 test."""
    return write_tiny(tmp_path_factory.mktemp("sweep") / "tiny.zarr", TINY_SPLITS)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def quiet(_: str) -> None:
    """A log sink for sweeps whose progress lines are not under test."""


# -- the search space and the sampler ----------------------------------------------------------------------
def test_sobol_trials_cover_each_log_octile_once_and_depend_only_on_the_trial_number():
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
             "weight_decay": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)}
    sampler = SobolThenTPESampler(space, startup_trials=8, seed=0)
    points = [sampler.sobol_params(n, space) for n in range(8)]
    for name, dist in space.items():
        position = [(np.log(p[name]) - np.log(dist.low)) / (np.log(dist.high) - np.log(dist.low)) for p in points]
        # A Sobol net's first 2^m points put exactly one point in each 1/2^m slice of every axis.
        assert sorted(int(8 * x) for x in position) == list(range(8))
    assert points == [SobolThenTPESampler(space, 8, seed=0).sobol_params(n, space) for n in range(8)]
    assert points != [SobolThenTPESampler(space, 8, seed=1).sobol_params(n, space) for n in range(8)]


def test_search_space_comes_from_the_grid_range_or_the_sweep_bounds():
    head = {"lr": [1e-4, 3e-3, 8e-2], "weight_decay": [1e-5, 5e-4]}
    space = search_space(head, SweepConfig())
    assert (space["lr"].low, space["lr"].high, space["lr"].log) == (1e-4, 8e-2, True)
    assert (space["weight_decay"].low, space["weight_decay"].high) == (1e-5, 5e-4)
    assert search_space(head, SweepConfig(lr=[1e-3, 1e-2]))["lr"].high == 1e-2
    with pytest.raises(ConfigError, match="nothing to search"):
        search_space({"lr": [1e-3], "weight_decay": [1e-4]}, SweepConfig())
    with pytest.raises(ConfigError, match="sweep.lr"):
        SweepConfig.from_dict({"lr": [1e-2, 1e-3]})
    with pytest.raises(ConfigError, match="unknown option"):
        SweepConfig.from_dict({"trails": 3})


def test_a_range_collapsed_to_one_value_is_named_with_its_source_and_a_wider_one():
    grid_head = {"lr": [1e-4, 8e-2], "weight_decay": [1e-4]}
    (note,) = collapsed_ranges(grid_head, SweepConfig(), search_space(grid_head, SweepConfig()))
    assert note == ("weight_decay range collapses to one value (0.0001, from the config's weight_decay values "
                    "[0.0001]): only lr is searched; widen it with --weight-decay LOW,HIGH (e.g. --weight-decay "
                    "1e-05,0.001) or two values in grid.weight_decay")
    flag, wide = SweepConfig(lr=[3e-3, 3e-3]), {"lr": [1e-4, 8e-2], "weight_decay": [1e-5, 1e-3]}
    (note,) = collapsed_ranges(wide, flag, search_space(wide, flag))
    assert note.startswith("lr range collapses to one value (0.003, from --lr 0.003,0.003): only weight decay is")
    assert collapsed_ranges(grid_head, SweepConfig(weight_decay=[1e-5, 1e-3]),
                            search_space(grid_head, SweepConfig(weight_decay=[1e-5, 1e-3]))) == []


@pytest.mark.parametrize(("epochs", "trials", "factor", "rung"), [
    (4, 8, 3, 4),     # under 3^2 trials: no rung before the last epoch (the reported 8-trial study)
    (30, 8, 3, 30),
    (6, 12, 3, 2),    # 9..26 trials: one rung, at a third of the epochs
    (30, 50, 3, 4),   # the paper's 50 trials: rungs at 4 and 12 of 30
    (100, 50, 3, 12),
    (2, 50, 3, 1),
    (8, 8, 2, 2),     # 2^3 <= 8: rungs at 2 and 4
])
def test_the_first_rung_leaves_as_many_rungs_as_the_study_can_fill(epochs, trials, factor, rung):
    assert first_rung(epochs, trials, factor) == rung


# -- pruning inside a bank -------------------------------------------------------------------------------------
def test_a_stopped_head_trains_no_further_while_its_neighbours_end_as_if_alone(store):
    config = TrainConfig(**TRAIN)
    train, valid = SplitData(store, "train"), SplitData(store, "valid")
    specs = [HeadSpec("linear", 1e-2, 1e-4, 0), HeadSpec("protobin", 3e-3, 1e-4, 0)]
    snapshots = {}

    def stop_protobin_after_epoch_one(epoch: int, results: dict) -> list[int]:
        assert sorted(results) == ([0, 1] if epoch == 1 else [0])
        if epoch == 1:
            snapshots["protobin"] = {k: v.clone() for k, v in bank.heads_[1].state_dict().items()}
            snapshots["metrics"] = results[1]
            return [1]
        return []

    bank = HeadBank(specs, config)
    bank.fit(train, valid, on_validation=stop_protobin_after_epoch_one)
    assert bank.stopped_ == {1}
    for key, value in bank.heads_[1].state_dict().items():
        assert torch.equal(value, snapshots["protobin"][key]), key
    assert bank.valid_metrics_[1] == snapshots["metrics"]
    assert [(row["kind"], row["epoch"]) for row in bank.curves_ if row["kind"] == "protobin"] == [("protobin", 1)]
    alone = HeadBank(specs[:1], config).fit(train, valid)
    for key, value in alone.heads_[0].state_dict().items():
        assert torch.equal(value, bank.heads_[0].state_dict()[key]), key
    assert alone.valid_metrics_[0]["map"] == bank.valid_metrics_[0]["map"]

    # Every head stopped: the remaining epochs are skipped.
    early = HeadBank(specs, config).fit(train, valid, on_validation=lambda epoch, results: list(results))
    assert {row["epoch"] for row in early.curves_} == {1}


# -- the sweep -------------------------------------------------------------------------------------------------
def test_sqlite_sweep_completes_prunes_and_its_best_config_reruns_to_the_same_validation_map(store, tmp_path):
    lines = []
    report = run_sweep(store.path, "protobin", tmp_path / "sweep", PROBE, SMALL, log=lines.append)
    out = tmp_path / "sweep"
    assert (out / "study.db").is_file() and report.storage == f"sqlite:///{out / 'study.db'}"
    rows = read_csv(out / "trials.csv")
    assert [int(r["number"]) for r in rows] == list(range(8)) and sorted(report.ran_here) == list(range(8))
    assert {r["state"] for r in rows} <= {"complete", "pruned"}
    pruned = [r for r in rows if r["state"] == "pruned"]
    complete = [r for r in rows if r["state"] == "complete"]
    assert pruned and len(complete) >= 2
    assert all(int(r["epochs"]) < 4 for r in pruned) and all(int(r["epochs"]) == 4 for r in complete)
    assert [r["sampler"] for r in rows] == ["sobol"] * 4 + ["tpe"] * 4
    for r in rows:
        assert 1e-4 <= float(r["lr"]) <= 8e-2 and 1e-5 <= float(r["weight_decay"]) <= 5e-4
    # Live progress: one line per pass with the study-wide counts.
    progress = [line for line in lines if line.startswith("trials ")]
    assert len(progress) == 2 and "done 4/8" in progress[0] and "done 8/8" in progress[1]
    assert f"pruned {len(pruned)}" in progress[1]

    # Final: the top 2 completed trials re-run with 2 seeds; the first seed is the trial itself.
    results = read_csv(out / "results.csv")
    top = sorted(complete, key=lambda r: -float(r["valid_map"]))[:2]
    assert [int(r["trial"]) for r in results] == [int(r["number"]) for r in top]
    metrics = json.loads((out / "final" / "metrics.json").read_text())
    for head, row in zip(metrics["heads"], top, strict=True):
        assert head["per_seed"][0]["seed"] == 0
        assert head["per_seed"][0]["valid"]["map"] == pytest.approx(float(row["valid_map"]), abs=1e-12)
        assert len(head["per_seed"]) == 2 and "map_std" in head["test"]
    best = report.best
    assert best["valid_map"] == max(float(r["valid_map"]) for r in results)

    # best.yaml is a probe config: `embedcache probe --config best.yaml` gives the same validation mAP per seed.
    config = yaml.safe_load(report.best_config.read_text())
    assert config["seeds"] == 2 and config["heads"][0]["lr"] == [best["lr"]]
    result = CliRunner().invoke(main, ["probe", "--config", str(report.best_config), "--out", str(tmp_path / "re")])
    assert result.exit_code == 0, result.output
    rerun = json.loads((tmp_path / "re" / "metrics.json").read_text())["heads"][0]
    assert rerun["head"] == "protobin" and rerun["lr"] == best["lr"]
    assert rerun["valid"]["map"] == pytest.approx(best["valid_map"], abs=1e-12)
    final = next(h for h in metrics["heads"] if h["head"] == f"trial{best['trial']}")
    assert [s["valid"]["map"] for s in rerun["per_seed"]] == pytest.approx(
        [s["valid"]["map"] for s in final["per_seed"]], abs=1e-12)
    assert rerun["test"]["map"] == pytest.approx(final["test"]["map"], abs=1e-12)


def test_batched_trials_give_exactly_the_trials_of_one_at_a_time(store, tmp_path):
    # All Sobol, so the parameters depend on the trial number alone; pruning sees the same competitors either way.
    sweep = {**SMALL, "trials": 6, "startup_trials": 6}
    one = run_sweep(store.path, "protobin", tmp_path / "k1", PROBE, {**sweep, "batch_trials": 1}, final=False,
                    log=quiet)
    three = run_sweep(store.path, "protobin", tmp_path / "k3", PROBE, {**sweep, "batch_trials": 3}, final=False,
                      log=quiet)
    assert one.trials == three.trials
    assert {r["state"] for r in one.trials} == {"complete", "pruned"}


def test_a_worker_with_other_settings_cannot_join_the_study(store, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    run_sweep(store.path, "protobin", tmp_path / "a", PROBE, {**SMALL, "trials": 2}, storage=storage,
              study_name="s", final=False, log=quiet)
    other = {**PROBE, "train": {**TRAIN, "epochs": 5}}
    with pytest.raises(ConfigError, match=r"train\.epochs: study has 4, this worker 5"):
        run_sweep(store.path, "protobin", tmp_path / "b", other, {**SMALL, "trials": 2}, storage=storage,
                  study_name="s", log=quiet)
    # The same settings join and find the budget spent: nothing more is trained.
    again = run_sweep(store.path, "protobin", tmp_path / "c", PROBE, {**SMALL, "trials": 2}, storage=storage,
                      study_name="s", final=False, log=quiet)
    assert again.ran_here == [] and len(again.trials) == 2


def test_a_killed_workers_running_trial_holds_the_final_rerun_until_final_now(store, tmp_path):
    storage = f"sqlite:///{tmp_path / 'killed.db'}"
    optuna.create_study(storage=storage, study_name="k", direction="maximize").ask()  # trial 0, never told
    lines = []
    sweep = {**SMALL, "trials": 4, "top_k": 1}
    waiting = run_sweep(store.path, "linear", tmp_path / "k", PROBE, sweep, storage=storage, study_name="k",
                        log=lines.append)
    assert sorted(waiting.ran_here) == [1, 2, 3] and waiting.final is None
    assert "1 trial(s) still running on other workers ([0])" in lines[-1]
    forced = run_sweep(store.path, "linear", tmp_path / "k", PROBE, sweep, storage=storage, study_name="k",
                       final_now=True, log=quiet)
    assert forced.ran_here == [] and forced.final is not None and forced.best["trial"] in (1, 2, 3)


def test_refusals_name_the_field_and_the_fix(store, tmp_path):
    with pytest.raises(ConfigError, match="pass --head NAME"):
        run_sweep(store.path, None, tmp_path / "x", {**PROBE, "heads": ["linear", "protobin"]}, SMALL, log=quiet)
    with pytest.raises(ConfigError, match="a sweep chooses on validation"):
        run_sweep(store.path, "linear", tmp_path / "x", {**PROBE, "splits": {"train": "train", "valid": None}},
                  SMALL, log=quiet)
    with pytest.raises(ConfigError, match="give sqlite:///"):
        run_sweep(store.path, "linear", tmp_path / "x", PROBE, SMALL, storage="redis://h/0", log=quiet)
    with pytest.raises(ConfigError, match=r"u:\*\*\*@127\.0\.0\.1:1/db: cannot open") as error:
        run_sweep(store.path, "linear", tmp_path / "x", PROBE, SMALL, storage="postgresql://u:hunter2@127.0.0.1:1/db",
                  log=quiet)
    assert "hunter2" not in str(error.value)
    assert redact("postgresql://u:p@h/db") == "postgresql://u:***@h/db" and redact("sqlite:///a.db") == "sqlite:///a.db"


def test_cli_sweep_prints_progress_and_tables_and_errors_as_one_line(store, tmp_path):
    args = ["sweep", str(store.path), "--head", "linear", "--trials", "4", "--startup-trials", "2",
            "--batch-trials", "2", "--epochs", "3", "--batch-size", "8", "--device", "cpu", "--min-epochs", "1",
            "--reduction-factor", "2", "--top-k", "1", "--final-seeds", "2", "--lr", "1e-3,1e-1",
            "--weight-decay", "1e-5,1e-3", "--out", str(tmp_path / "cli")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert re.search(r"trials 2-3 \(2 per pass, [\d.]+ s\): done 4/4", result.output)
    assert "valid map" in result.output and "best: trial" in result.output and "seeds" in result.output
    assert (tmp_path / "cli" / "best.yaml").is_file()
    bad = CliRunner().invoke(main, [*args[:-2], "--lr", "0.1", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 1
    assert bad.output.strip().splitlines() == ["error: --lr '0.1': give LOW,HIGH, e.g. --lr 1e-4,8e-2"]


# -- what users found (issue 12) -------------------------------------------------------------------------------
def test_a_one_value_weight_decay_grid_warns_once_and_the_study_and_sweep_yaml_record_it(store, tmp_path):
    lines = []
    probe = {**PROBE, "grid": {"lr": [1e-4, 8e-2], "weight_decay": [1e-4]}}
    report = run_sweep(store.path, "linear", tmp_path / "s", probe, {**SMALL, "trials": 2}, final=False,
                       log=lines.append)
    warned = [line for line in lines if line.startswith("warning: ")]
    assert len(warned) == 1 and "weight_decay range collapses to one value (0.0001" in warned[0]
    assert "--weight-decay 1e-05,0.001" in warned[0]
    assert report.warnings == [warned[0].removeprefix("warning: ")]
    assert yaml.safe_load((tmp_path / "s" / "sweep.yaml").read_text())["warnings"] == report.warnings
    study = optuna.load_study(study_name=report.study_name, storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    assert study.user_attrs[WARNINGS_ATTR] == report.warnings
    assert {r["weight_decay"] for r in report.trials} == {1e-4} and len({r["lr"] for r in report.trials}) == 2

    # The same from the command line, with --weight-decay LOW == HIGH.
    result = CliRunner().invoke(main, [
        "sweep", str(store.path), "--head", "linear", "--trials", "2", "--startup-trials", "2", "--epochs", "2",
        "--batch-size", "8", "--device", "cpu", "--lr", "1e-3,1e-1", "--weight-decay", "1e-4,1e-4", "--no-final",
        "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert warned == ["warning: weight_decay range collapses to one value (0.0001, from --weight-decay "
                      "0.0001,0.0001): only lr is searched; widen it with --weight-decay LOW,HIGH (e.g. --weight-decay "
                      "1e-05,0.001) or two values in grid.weight_decay"]


def pruned_at(rows: list[dict], epoch: int) -> int:
    return sum(r["state"] == "pruned" and int(r["epochs"]) == epoch for r in rows)


def test_a_small_study_keeps_at_least_a_third_of_its_trials_past_the_first_rung(store, tmp_path):
    probe = {**PROBE, "train": {**TRAIN, "epochs": 6}}
    sweep = {"trials": 12, "startup_trials": 6, "batch_trials": 4, "reduction_factor": 3, "top_k": 1}
    lines = []
    report = run_sweep(store.path, "protobin", tmp_path / "default", probe, sweep, final=False, log=lines.append)
    # 12 trials of 6 epochs, reduction factor 3: one rung, at epoch ceil(6 / 3) = 2.
    assert "successive halving from epoch 2 x3" in next(line for line in lines if line.startswith("study "))
    assert yaml.safe_load((tmp_path / "default" / "sweep.yaml").read_text())["min_epochs"] == 2
    assert {int(r["epochs"]) for r in report.trials if r["state"] == "pruned"} == {2}
    assert 12 - pruned_at(report.trials, 2) >= 12 / 3
    # The reported case: 8 trials with the first rung at epoch 1 lose more than 2/3 there (7 of 8 for the user, 6+
    # here); the default now puts no rung before the last epoch in a study this small.
    small = {**sweep, "trials": 8, "startup_trials": 4}
    early = run_sweep(store.path, "protobin", tmp_path / "early", PROBE, {**small, "min_epochs": 1}, final=False,
                      log=quiet)
    assert pruned_at(early.trials, 1) > 8 * 2 / 3
    now = run_sweep(store.path, "protobin", tmp_path / "now", PROBE, small, final=False, log=quiet)
    assert [r["state"] for r in now.trials] == ["complete"] * 8


def test_several_heads_run_one_study_each_from_the_help_example(store, tmp_path, monkeypatch):
    """The example of `embedcache sweep --help`, on the tiny store laid out as runs/sample.zarr."""
    (tmp_path / "runs").mkdir()
    shutil.copytree(store.path, tmp_path / "runs" / "sample.zarr")  # a copy: a link would resolve to tiny.zarr
    (tmp_path / "configs").symlink_to(Path(__file__).resolve().parents[1] / "configs")
    monkeypatch.chdir(tmp_path)
    help_text = CliRunner().invoke(main, ["sweep", "--help"]).output
    (example,) = [line.strip() for line in help_text.replace("\\\n", " ").splitlines()
                  if line.strip().startswith("embedcache sweep ")]
    fast = ["--epochs", "2", "--batch-size", "8", "--device", "cpu", "--trials", "3", "--startup-trials", "3",
            "--batch-trials", "3", "--top-k", "1", "--final-seeds", "2"]
    result = CliRunner().invoke(main, [*example.split()[1:], *fast])
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "sweeps" / "sample"
    for head in ("linear", "protobin"):
        assert {"study.db", "trials.csv", "results.csv", "best.yaml", "sweep.yaml"} <= {p.name for p in
                                                                                        (out / head).iterdir()}
        assert len(read_csv(out / head / "trials.csv")) == 3
        assert yaml.safe_load((out / head / "best.yaml").read_text())["heads"][0]["name"] == head
        storage = f"sqlite:///{out / head / 'study.db'}"
        assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == [f"sample-{head}"]
    summary = read_csv(out / "summary.csv")
    assert [(row["head"], row["study"], row["seeds"]) for row in summary] == [
        ("linear", "sample-linear", "2"), ("protobin", "sample-protobin", "2")]
    for row in summary:
        results = read_csv(out / row["head"] / "results.csv")
        assert float(row["valid"]) == max(float(r["valid_map"]) for r in results)
    # The combined table: a header, then one line per head with its chosen lr and the mean ± std over seeds.
    lines = result.output.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.split()[:2] == ["head", "study"]):]
    assert table[0].split() == ["head", "study", "trials", "lr", "wd", "seeds", "valid", "(%)", "test", "(%)"]
    assert [line.split()[0] for line in table[1:3]] == ["linear", "protobin"]
    assert all("map" in line and "±" in line for line in table[1:3])
    # Several heads and --study NAME: NAME-<head> each.
    named = CliRunner().invoke(main, ["sweep", "runs/sample.zarr", "--head", "linear,protobin", "--study", "mine",
                                      "--out", "named", "--no-final", *fast])
    assert named.exit_code == 0, named.output
    assert "study: mine-linear" in named.output and "study: mine-protobin" in named.output


def test_a_study_or_best_yaml_made_before_an_append_is_refused_naming_both_fingerprints(tmp_path):
    base = write_tiny(tmp_path / "grows.zarr", TINY_SPLITS)
    before = base.fingerprint
    sweep = {**SMALL, "trials": 2, "top_k": 1, "final_seeds": 1}
    report = run_sweep(base.path, "linear", tmp_path / "s", PROBE, sweep, log=quiet)
    recorded = {"fingerprint": before, "subset": None}
    assert report.store == {"store": base.path, **recorded}
    storage = f"sqlite:///{tmp_path / 's' / 'study.db'}"
    assert optuna.load_study(study_name=report.study_name, storage=storage).user_attrs[STORE_ATTR] == recorded
    best = report.best_config.read_text()
    assert f'# embedcache-store: {{"store": "{base.path}", "fingerprint": "{before}", "subset": null}}' in best

    write_tiny(tmp_path / "more.zarr", ["train"] * 8, first=48, seed=4)
    append_store(base.path, tmp_path / "more.zarr")
    after = TokenStore.open(base.path).fingerprint
    assert after != before
    with pytest.raises(ConfigError) as error:
        run_sweep(base.path, "linear", tmp_path / "s", PROBE, sweep, log=quiet)
    message = str(error.value)
    assert "\n" not in message and before in message and after in message
    assert message.startswith(f"study 'grows-linear' in {storage} was made on store fingerprint {before}")
    assert "new study (another --study or --out)" in message

    # best.yaml given back to the sweep (a wider lr range around it) on the grown store: refused, one line.
    result = CliRunner().invoke(main, ["sweep", base.path, "--config", str(report.best_config), "--lr", "1e-3,1e-1",
                                       "--trials", "2", "--out", str(tmp_path / "again")])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {report.best_config} was made on store fingerprint {before} (subset null), but "
                           f"{base.path} has fingerprint {after} (subset null)")
    assert not (tmp_path / "again").exists()  # refused before any study was opened


def test_a_diverged_head_fails_its_own_trial_and_the_rest_of_its_batch_goes_on(store, tmp_path):
    storage = f"sqlite:///{tmp_path / 'diverge.db'}"
    study = optuna.create_study(storage=storage, study_name="d", direction="maximize")
    study.enqueue_trial({"lr": 1e-3, "weight_decay": 1e-4})
    study.enqueue_trial({"lr": 1e6, "weight_decay": 1e-4})  # an mlp at lr 1e6: its loss stops being finite
    lines = []
    # One pass of 4 trials; the first rung at the last epoch, so nothing but divergence stops a head.
    sweep = {**SMALL, "trials": 4, "startup_trials": 4, "batch_trials": 4, "min_epochs": 4, "top_k": 1}
    with pytest.warns(UserWarning, match="out of range"):
        report = run_sweep(store.path, "mlp", tmp_path / "d", PROBE, sweep, storage=storage, study_name="d",
                           final=False, log=lines.append)
    states = {int(r["number"]): r["state"] for r in report.trials}
    assert states[1] == "fail" and report.trials[1]["lr"] == 1e6 and report.trials[1]["diverged_epoch"] != ""
    assert all(states[k] in ("complete", "pruned") for k in (0, 2, 3))
    assert any(r["state"] == "complete" for r in report.trials)
    (progress,) = [line for line in lines if line.startswith("trials ")]
    assert progress.startswith("trials 0-3 (4 per pass") and "done 4/4, pruned 0, failed 1" in progress
    assert "(1 diverged)" in lines[-1]


# -- several workers on one study ------------------------------------------------------------------------------
def _two_workers(store, tmp_path: Path, storage: str, study: str, trials: int = 8) -> None:
    """Two processes run the same sweep command on one study: each trial is run once, the best is the union's."""
    command = [sys.executable, "-m", "embedcache", "sweep", str(store.path), "--head", "protobin",
               "--trials", str(trials), "--startup-trials", "4", "--batch-trials", "2", "--epochs", "4",
               "--batch-size", "8", "--device", "cpu", "--min-epochs", "1", "--reduction-factor", "2",
               "--lr", "1e-4,8e-2", "--weight-decay", "1e-5,5e-4", "--storage", storage, "--study", study,
               "--no-final"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([*command, "--out", str(tmp_path / f"w{i}")], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outputs = [worker.communicate(timeout=180) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr[-3000:]
    ran = [int(re.search(r"this worker ran (\d+) trial", stdout).group(1)) for stdout, _ in outputs]
    assert sum(ran) == trials  # no trial trained twice, none left out

    loaded = optuna.load_study(study_name=study, storage=storage)
    numbered = [t for t in loaded.get_trials() if not t.user_attrs.get("surplus")]
    assert sorted(t.number for t in numbered) == list(range(trials))
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in numbered)
    workers_seen = {t.user_attrs["worker"] for t in numbered}
    assert len(workers_seen) <= 2 and sum(t.user_attrs["worker"] == w for t in numbered for w in workers_seen) == trials
    # Each worker's trials.csv is the study when it stopped (the first to stop may see the other's last trials
    # running); finished rows agree, and together they hold every trial, the best being the study's best.
    union: dict[int, dict] = {}
    for i in range(2):
        for row in read_csv(tmp_path / f"w{i}" / "trials.csv"):
            if row["state"] != "running":
                assert union.setdefault(int(row["number"]), row) == row
    assert sorted(union) == list(range(trials))
    best = max((r for r in union.values() if r["state"] == "complete"), key=lambda r: float(r["valid_map"]))
    assert loaded.best_trial.number == int(best["number"])
    assert loaded.best_value == pytest.approx(float(best["valid_map"]), abs=1e-12)


def test_two_worker_processes_share_one_sqlite_study(store, tmp_path):
    _two_workers(store, tmp_path, f"sqlite:///{tmp_path / 'shared.db'}", "shared")


@pytest.mark.skipif(POSTGRES_URL is None, reason="EMBEDCACHE_TEST_POSTGRES_URL is unset (.ci/run starts a local "
                    "PostgreSQL and sets it; e.g. postgresql://embedcache:embedcache@127.0.0.1:5432/embedcache_test)")
def test_two_worker_processes_share_one_postgresql_study(store, tmp_path):
    study = f"embedcache-test-{uuid.uuid4().hex[:12]}"
    try:
        _two_workers(store, tmp_path, POSTGRES_URL, study)
    finally:
        optuna.delete_study(study_name=study, storage=POSTGRES_URL)


def test_a_sweep_over_several_layers_is_refused_up_front(tmp_path):
    tokens = np.zeros((8, 2, 4), np.float32)
    store = write_store(tmp_path / "two.zarr", {0: tokens, 1: tokens}, np.eye(2, dtype=np.uint8)[np.arange(8) % 2],
                        ["a", "b"], [f"c{i}" for i in range(8)], ["train"] * 4 + ["valid"] * 4, (2, 1))
    with pytest.raises(ConfigError, match="a sweep tunes one layer at a time"):
        run_sweep(store.path, "linear", tmp_path / "s", config={"layer": "all"})


def test_a_head_fitted_without_an_optimiser_runs_one_trial_and_says_why(store, tmp_path):
    result = CliRunner().invoke(main, [
        "sweep", str(store.path), "--head", "knn,linear", "--trials", "3", "--startup-trials", "3", "--epochs", "2",
        "--batch-size", "8", "--device", "cpu", "--final-seeds", "2", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert ("warning: knn is fitted from whole splits, not trained: it ignores lr and weight decay, so its study runs "
            "1 trial instead of 3") in result.output.splitlines()
    knn = list(csv.DictReader(open(tmp_path / "s" / "knn" / "trials.csv")))
    linear = list(csv.DictReader(open(tmp_path / "s" / "linear" / "trials.csv")))
    assert len(knn) == 1 and len(linear) == 3
    final = list(csv.DictReader(open(tmp_path / "s" / "knn" / "results.csv")))
    assert len(final) == 1 and final[0]["seeds"] == "2" and float(final[0]["test_map"]) > 0
