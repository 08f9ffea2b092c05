"""Scale-out timings: a 50-trial sweep with K = 1 vs K = 8 trials per pass, and extraction with 1 vs 2 processes.

    python -m bench.bench_sweep --out runs/bench_sweep.json
    python -m bench.bench_sweep --skip-extract --trials 50 --batch-trials 1 --batch-trials 8

Sweep: the paper protocol (configs/probes/paper.yaml: 30 epochs, batch 128; 25 Sobol + 25 TPE trials, successive
halving) for protobin on the sample store (runs/quickstart/sample-melpatch.zarr when present, else built here),
without the final 5-seed re-run. Pruning and TPE depend on which trials have finished, so the two runs may train a
different number of head-epochs: both the wall time and the time per trained head-epoch are reported.

Extraction: the sample set through a random-weight ViT (ViT-B/16 size by default) with `embedcache extract` as one
process (torch's default threads, and one thread) and under `torchrun --nproc-per-node 2` (one thread per rank,
torchrun's default), each timed from the command's start to its exit (process start-up included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from embedcache.datasets.sample import build_sample_set
from embedcache.extract import ExtractConfig, extract
from embedcache.probe import load_config
from embedcache.sweep import run_sweep

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_STORE = REPO_ROOT / "runs" / "quickstart" / "sample-melpatch.zarr"
VIT_B = ["embed_dim=768", "depth=12", "num_heads=12"]


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def sample_store(workdir: Path) -> Path:
    """The quickstart's melpatch store, or the sample set extracted with melpatch into workdir."""
    if (QUICKSTART_STORE / "zarr.json").is_file():
        return QUICKSTART_STORE
    manifest = build_sample_set(workdir / "sample")
    store = workdir / "sample-melpatch.zarr"
    extract(ExtractConfig(encoder="melpatch", manifest=str(manifest), out=str(store), progress=False))
    return store


def bench_sweep(store: Path, workdir: Path, trials: int, batch_trials: int, head: str) -> dict:
    """Wall time of one study (fresh SQLite file) with K trials per pass, without the final re-run."""
    config = load_config(REPO_ROOT / "configs" / "probes" / "paper.yaml")
    config["train"] = {**config["train"], "device": "cpu"}
    lines: list[str] = []
    started = time.perf_counter()
    report = run_sweep(store, head, workdir / f"sweep-k{batch_trials}", config,
                       {"trials": trials, "batch_trials": batch_trials}, final=False, log=lines.append)
    seconds = time.perf_counter() - started
    head_epochs = sum(int(row["epochs"] or 0) for row in report.trials)
    complete = [row for row in report.trials if row["state"] == "complete"]
    return {
        "batch_trials": batch_trials, "trials": len(report.trials), "seconds": round(seconds, 2),
        "complete": len(complete), "pruned": sum(row["state"] == "pruned" for row in report.trials),
        "head_epochs": head_epochs, "ms_per_head_epoch": round(1000 * seconds / max(1, head_epochs), 2),
        "best_valid_map": max((row["valid_map"] for row in complete), default=None),
        "load_average_after": load_average(),
    }


def bench_extract(manifest: Path, workdir: Path, options: list[str], batch_size: int) -> list[dict]:
    """One process (default threads, one thread) vs torchrun with 2 ranks, each a fresh store."""
    base = ["-m", "embedcache", "extract", "--encoder", "vit", "--random-init", "--manifest", str(manifest),
            "--workers", "0", "--batch-size", str(batch_size), "--chunk-clips", str(batch_size), "--no-progress",
            "--overwrite"]
    for option in options:
        base += ["--encoder-option", option]
    runs = [
        ("1 process, torch default threads", [sys.executable], {}),
        ("1 process, 1 thread", [sys.executable], {"OMP_NUM_THREADS": "1"}),
        ("torchrun 2 processes, 1 thread each", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                 "--nproc-per-node", "2"], {"OMP_NUM_THREADS": "1"}),
    ]
    results = []
    for name, launcher, env in runs:
        out = workdir / f"vit-{len(results)}.zarr"
        environment = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
        started = time.perf_counter()
        done = subprocess.run([*launcher, *base, "--out", str(out)], capture_output=True, text=True,
                              env={**environment, **env})
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
        results.append({"run": name, "seconds": round(seconds, 2), "load_average_after": load_average()})
    single = results[0]["seconds"]
    for result in results:
        result["speedup_vs_1_process"] = round(single / result["seconds"], 3)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--batch-trials", type=int, action="append", help="K per pass (repeatable); default 1 and 8")
    parser.add_argument("--head", default="protobin")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-extract", action="store_true")
    parser.add_argument("--vit-option", action="append", help="key=value for the random ViT (default ViT-B/16)")
    parser.add_argument("--extract-batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, help="write the JSON here as well")
    args = parser.parse_args()
    summary: dict = {
        "benchmark": "scale_out",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "load_average_before": load_average()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if not args.skip_sweep:
            store = sample_store(workdir)
            runs = [bench_sweep(store, workdir, args.trials, k, args.head) for k in args.batch_trials or [1, 8]]
            summary["sweep"] = {"store": str(store), "head": args.head, "config": "configs/probes/paper.yaml",
                                "runs": runs}
            if len(runs) >= 2:
                summary["sweep"]["wall_ratio_first_vs_last"] = round(runs[0]["seconds"] / runs[-1]["seconds"], 3)
                summary["sweep"]["per_head_epoch_ratio_first_vs_last"] = round(
                    runs[0]["ms_per_head_epoch"] / runs[-1]["ms_per_head_epoch"], 3)
        if not args.skip_extract:
            manifest = build_sample_set(workdir / "sample")
            options = args.vit_option or VIT_B
            summary["extract"] = {"encoder": "vit (random weights)", "options": options, "clips": 120,
                                  "runs": bench_extract(manifest, workdir, options, args.extract_batch_size)}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
