"""Head bank: K = 1, 4, 16, 64 heads trained in one pass over the data vs K separate runs, side by side in one run.

    python -m bench.bench_head_bank --clips 1000 --epochs 2 --out runs/bench_head_bank.json

Each timing is a whole run as a user starts it: open the train split from the store (in memory) and fit for
--epochs. The bank reads the store once and shares each batch's float conversion and normalised tokens among its K
heads; K separate runs read it K times. Heads in a bank get learning rates spread over 1e-4 .. 1e-1 (a sweep's
shape). Goal: 16 heads <= 3x one head. The fastest of --rounds interleaved repetitions counts (shared machines are
noisy). The epoch from the store vs a tensor in memory, and the streaming path, are bench/bench_probe.py's.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bench.results import emit, machine, parse_args, ratio, timed
from bench.synthetic import SyntheticSpec, write_synthetic_store
from embedcache.device import resolve_device
from embedcache.loader import open_splits
from embedcache.store import TokenStore
from embedcache.train import HeadBank, HeadSpec, TrainConfig


def _config(epochs: int, batch_size: int, device: str) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=batch_size, device=device, warmup_epochs=0.0, data_path="in-memory")


def bank_specs(kind: str, k: int, options: dict | None = None) -> list[HeadSpec]:
    """K heads of one kind, learning rates spread log-uniformly over 1e-4 .. 1e-1 (a sweep's shape)."""
    return [HeadSpec(kind, lr=float(lr), options=dict(options or {})) for lr in np.geomspace(1e-4, 1e-1, k)]


def bank_benchmark(store: TokenStore, kind: str, sizes: list[int], epochs: int, batch_size: int, device: str,
                   max_separate: int = 64, rounds: int = 2) -> dict:
    """For each K: one bank of K heads (reading the store once) vs K separate runs (reading it K times)."""
    config = _config(epochs, batch_size, device)

    def one_run(specs: list[HeadSpec]) -> None:
        (train,) = open_splits([(store, "train")], None, config)
        HeadBank(specs, config).fit(train)

    one_run(bank_specs(kind, 1))  # warm-up: thread pools, allocator, lazy imports
    best: dict[tuple[str, int], float] = {}
    for _ in range(rounds):
        for k in sizes:
            specs = bank_specs(kind, k)
            runs = {"bank": lambda specs=specs: one_run(specs)}
            if k <= max_separate:
                runs["separate"] = lambda specs=specs: [one_run([spec]) for spec in specs]
            for name, function in runs.items():
                seconds, _ = timed(function)
                best[name, k] = min(best.get((name, k), float("inf")), seconds)
    one = best.get(("bank", 1))
    rows = []
    for k in sizes:
        row = {"k": k, "bank_s": round(best["bank", k], 6),
               "ratio_bank_vs_one_head": ratio(best["bank", k], one) if one else None}
        if ("separate", k) in best:
            row.update({"separate_s": round(best["separate", k], 6),
                        "ratio_separate_vs_bank": ratio(best["separate", k], best["bank", k])})
        rows.append(row)
    return {"head": kind, "epochs": epochs, "rounds": rounds, "results": rows}


def run(clips: int, grid: tuple[int, int], dim: int, classes: int, epochs: int, batch_size: int, kinds: list[str],
        bank_sizes: list[int], device: str, workdir: Path, max_separate: int = 64, rounds: int = 2) -> dict:
    """The bank benchmark for each head kind on one synthetic store; the JSON summary."""
    spec = SyntheticSpec(n_clips=clips, grid=grid, embed_dim=dim, n_classes=classes)
    store = write_synthetic_store(workdir / f"bank_{clips}.zarr", spec)
    return {
        "benchmark": "head_bank_vs_separate_runs",
        "machine": machine(),
        "store": {"clips": clips, "train_clips": len(store.split_indices("train")), "grid": list(grid),
                  "embed_dim": dim, "classes": classes, "dtype": store.dtype, "compression": store.spec.compression},
        "batch_size": batch_size,
        "device": str(resolve_device(device)),
        "head_bank": [bank_benchmark(store, kind, bank_sizes, epochs, batch_size, device, max_separate, rounds)
                      for kind in kinds],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--grid", default="8,8")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--heads", default="linear,protobin")
    parser.add_argument("--bank-sizes", default="1,4,16,64")
    parser.add_argument("--max-separate", type=int, default=64, help="largest K also timed as K separate runs")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parse_args(parser)
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(
            args.clips, tuple(int(p) for p in args.grid.split(",")), args.dim, args.classes, args.epochs,
            args.batch_size, args.heads.split(","), [int(k) for k in args.bank_sizes.split(",")], args.device,
            Path(tmp), args.max_separate, args.rounds,
        )
    emit(summary, args.out)


if __name__ == "__main__":
    main()
