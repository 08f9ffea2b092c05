"""The sweep: Sobol points, pruning inside a bank, batched == one at a time, best.yaml re-runs, shared studies."""

from __future__ import annotations

import csv
import json
import os
import re
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
from embedcache.store import write_store
from embedcache.sweep import SobolThenTPESampler, SweepConfig, redact, run_sweep, search_space
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


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """48 clips, 3 labels, a weak class signal in a few tokens: validation mAP depends on lr and wd."""
    rng = np.random.default_rng(3)
    n, dim = 48, 8
    labels = (rng.random((n, len(LABELS))) < 0.35).astype(np.uint8)
    labels[np.arange(n), np.arange(n) % len(LABELS)] = 1
    tokens = rng.standard_normal((n, 8, dim)).astype(np.float32)
    tokens[:, :2] += 0.8 * labels[:, None, :] @ rng.standard_normal((len(LABELS), dim)).astype(np.float32)
    splits = ["train"] * 24 + ["valid"] * 12 + ["test"] * 12
    path = tmp_path_factory.mktemp("sweep") / "tiny.zarr"
    return write_store(path, {3: tokens}, labels, LABELS, [f"clip{i:03d}" for i in range(n)], splits, (4, 2),
                       chunk_clips=8)


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
