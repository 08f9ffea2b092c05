"""`embedcache suite`: the matrix on the bundled sample, resumed after kill -9, and extended by one head."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from embedcache.datasets.sample import build_sample_set
from embedcache.suite import load_suite, wins
from embedcache_cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


def write_suite(folder: Path, heads: list[str]) -> Path:
    manifest = build_sample_set(folder / "data", n_clips=48, clip_seconds=2.0)
    suite = folder / "suite.yaml"
    suite.write_text(json.dumps({
        "name": "t", "encoders": [{"name": "melpatch"}, {"name": "vit", "random_init": True, "options": {"depth": 1}}],
        "datasets": [{"name": "sample", "manifest": str(manifest)}], "heads": heads,
        "protocol": {"train": {"epochs": 2, "batch_size": 16, "device": "cpu"},
                     "grid": {"lr": [3e-3, 3e-2], "weight_decay": [1e-5, 1e-3]}},
        "sweep": {"trials": 2, "startup_trials": 2, "batch_trials": 2, "top_k": 1, "final_seeds": 2},
        "bootstrap": 50, "out": str(folder / "out"),
    }))
    return suite


def cells_of(folder: Path) -> dict[str, float]:
    return {str(p.parent.relative_to(folder / "out" / "cells")): p.stat().st_mtime
            for p in (folder / "out" / "cells").rglob("cell.json")}


def test_a_suite_runs_end_to_end_and_a_new_head_computes_only_its_cells(tmp_path):
    suite = write_suite(tmp_path, ["linear", "protobin"])
    plan = CliRunner().invoke(main, ["suite", str(suite), "--dry-run", "--json"])
    assert plan.exit_code == 0, plan.output
    cost = json.loads(plan.output)
    assert cost["cells"] == cost["missing"] == 4 and cost["store_bytes"] > 0 and cost["probe_hours"] > 0
    result = CliRunner().invoke(main, ["suite", str(suite)])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| melpatch | protobin |" in table and "## protobin − linear" in table and "## Wins" in table
    first = cells_of(tmp_path)
    assert sorted(first) == ["sample/melpatch/linear", "sample/melpatch/protobin", "sample/vit/linear",
                             "sample/vit/protobin"]
    cell = json.loads((tmp_path / "out" / "cells" / "sample" / "vit" / "protobin" / "cell.json").read_text())
    assert len(cell["seeds"]) == 2 and 0 <= cell["test"] <= 1 and cell["num_parameters"] > 0
    # One more head: only its two cells are computed, the four finished ones are left as they are.
    write_suite(tmp_path, ["linear", "protobin", "attentive"])
    again = CliRunner().invoke(main, ["suite", str(suite)])
    assert again.exit_code == 0, again.output
    second = cells_of(tmp_path)
    assert len(second) == 6 and all(second[name] == first[name] for name in first)
    assert "to sweep" not in again.output.split("attentive")[0]  # finished cells are listed as done
    rows = (tmp_path / "out" / "table.csv").read_text().splitlines()
    assert len(rows) == 1 + 6


def test_a_killed_suite_resumes_with_the_same_command(tmp_path):
    suite = write_suite(tmp_path, ["linear", "protobin"])
    command = [sys.executable, "-m", "embedcache", "suite", str(suite)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        if (tmp_path / "out" / "cells").exists() and cells_of(tmp_path):
            break  # the first cell is finished: kill the suite in the middle of the next one
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = cells_of(tmp_path)
    assert 1 <= len(done) < 4, "the suite was not killed part way"
    resumed = subprocess.run(command, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert len(cells_of(tmp_path)) == 4 and all(cells_of(tmp_path)[name] == done[name] for name in done)


def test_wins_need_more_than_one_std_and_the_suite_file_is_checked(tmp_path):
    cells = [{"dataset": "d", "encoder": "e", "head": "a", "test": 0.60, "test_std": 0.05},
             {"dataset": "d", "encoder": "e", "head": "b", "test": 0.50, "test_std": 0.02},
             {"dataset": "d", "encoder": "e", "head": "c", "test": 0.57, "test_std": 0.04}]
    assert wins(cells, ["a", "b", "c"]) == {"a": {"a": 0, "b": 1, "c": 0}, "b": {"a": 0, "b": 0, "c": 0},
                                            "c": {"a": 0, "b": 1, "c": 0}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("encoders: [melpatch]\ndatasets: [{name: x}]\nheads: [linear]\n")
    result = CliRunner().invoke(main, ["suite", str(bad), "--dry-run"])
    assert result.exit_code == 1 and "datasets[0]: give a name and a manifest" in result.output
    with pytest.raises(Exception, match="unknown key"):
        bad.write_text("encoders: [melpatch]\nmodels: []\n")
        load_suite(bad)


def test_a_dry_run_prices_planned_data_sets_from_the_given_throughput(tmp_path):
    suite = tmp_path / "plan.yaml"
    suite.write_text(json.dumps({
        "encoders": ["melpatch"], "heads": ["linear", "knn"],
        "datasets": [{"name": "big", "clips": 100, "train_clips": 70, "seconds": 5, "classes": 3}],
        "protocol": {"train": {"epochs": 2}}, "sweep": {"trials": 2, "startup_trials": 2, "top_k": 1,
                                                         "final_seeds": 2},
        "throughput": {"encoder_clips_per_s": {"melpatch": 10}, "head_clip_epochs_per_s": {"linear": 100,
                                                                                            "knn": 70}},
        "out": str(tmp_path / "out"),
    }))
    result = CliRunner().invoke(main, ["suite", str(suite), "--dry-run", "--no-measure", "--json"])
    assert result.exit_code == 0, result.output
    cost = json.loads(result.output)
    assert cost["extract_s"] == pytest.approx(100 / 10)
    # linear: (2 trials + 1 x 2 seeds) x 2 epochs x 70 clips at 100/s; knn: fitted once per seed, 2 x 70 at 70/s
    assert cost["probe_s"] == pytest.approx((2 + 2) * 2 * 70 / 100 + 2 * 70 / 70)
    melpatch_5s = 31 * 4  # 501 frames // 16 x 64 // 16 tokens
    assert cost["store_bytes"] == 100 * melpatch_5s * 256 * 2
    run = CliRunner().invoke(main, ["suite", str(suite)])
    assert run.exit_code == 1 and "have no manifest (sizes for --dry-run only)" in run.output
