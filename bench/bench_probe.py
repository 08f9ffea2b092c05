"""Probe training speed side by side: epoch time from the store vs from a tensor in RAM, K=16 bank vs one head.

    python -m bench.bench_probe --clips 1024 --grid 16x8 --dim 256 --epochs 3 --out runs/bench_probe.json

A synthetic store (write_store, float16, zstd) is built in a temporary folder. Epoch times are the fastest epoch
after the first (which pays for imports and allocator warm-up) over --rounds interleaved rounds, so a busy shared
machine inflates them less. Paths timed for one head of --head:
  bare_tensor   a plain loop over a float16 tensor already in RAM (index, upcast, forward, backward, AdamW step)
  in_memory     HeadBank on the split loaded from the store into RAM (load time reported on its own)
  streaming     HeadBank streaming whole chunks from the store with the prefetch thread
Then HeadBank in memory with K=16 heads (lr x weight decay x seed variations of --head, and a mixed bank).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.results import parse_args
from embedcache import heads, losses
from embedcache.device import resolve_device
from embedcache.loader import SplitData
from embedcache.store import write_store
from embedcache.train import HeadBank, HeadSpec, TrainConfig


def build_store(path: Path, clips: int, grid: tuple[int, int], dim: int, classes: int) -> object:
    rng = np.random.default_rng(0)
    labels = (rng.random((clips, classes)) < 0.1).astype(np.uint8)
    labels[np.arange(clips), np.arange(clips) % classes] = 1
    tokens = torch.from_numpy(rng.standard_normal((clips, grid[0] * grid[1], dim), dtype=np.float32)).half()
    return write_store(path, {0: tokens}, labels, [f"c{i}" for i in range(classes)],
                       [f"clip{i}" for i in range(clips)], ["train"] * clips, grid, dtype="float16")


def epoch_seconds(bank: HeadBank) -> float:
    """Fastest training epoch after the first."""
    times = sorted({row["epoch"]: row["train_seconds"] for row in bank.curves_}.items())
    return min([seconds for epoch, seconds in times[1:]] or [times[0][1]])


def bare_tensor_seconds(data: SplitData, spec: HeadSpec, config: TrainConfig) -> float:
    """The same head trained by a plain loop over the split's float16 tensor in RAM: the floor for any data path."""
    store = data.store
    tokens = data._memory.tokens  # [N, T, D] float16, already in RAM
    targets = data._memory.targets
    head = heads.create(spec.kind, num_classes=targets.shape[1], embed_dim=store.embed_dim,
                        generator=torch.Generator().manual_seed(spec.seed), **spec.options).to(data.device)
    optimiser = torch.optim.AdamW(head.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    loss_fn = losses.create_loss("asl")
    times = []
    for epoch in range(config.epochs):
        started = time.perf_counter()
        order = torch.from_numpy(np.random.default_rng([0, epoch]).permutation(len(tokens)))
        for start in range(0, len(order), config.batch_size):
            rows = order[start : start + config.batch_size].to(tokens.device)
            batch = heads.TokenBatch(tokens[rows].float())
            loss = loss_fn(head(batch).float(), targets[rows]) + head.auxiliary_loss()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        if data.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times[1:] or times)


def bank_specs(kind: str, k: int, options: dict) -> list[HeadSpec]:
    grid = [(lr, wd, seed) for seed in range(4) for lr in (1e-3, 3e-3) for wd in (1e-4, 1e-3)]
    return [HeadSpec(kind, lr, wd, seed, dict(options)) for lr, wd, seed in grid[:k]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1024)
    parser.add_argument("--grid", default="16x8", help="n_time x n_freq tokens per clip")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--head", default="protobin")
    parser.add_argument("--bank", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; the fastest counts")
    args = parse_args(parser)
    grid = tuple(int(part) for part in args.grid.split("x"))
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, device=args.device)
    device = resolve_device(args.device)
    options = {"prototypes_per_class": 20} if args.head.startswith("proto") else {}
    one = bank_specs(args.head, 1, options)
    result: dict = {
        "machine": {"platform": platform.platform(), "device": str(device), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "shape": {"clips": args.clips, "grid": list(grid), "dim": args.dim, "classes": args.classes,
                  "batch_size": args.batch_size, "epochs": args.epochs, "head": args.head},
    }
    with tempfile.TemporaryDirectory() as workdir:
        started = time.perf_counter()
        store = build_store(Path(workdir) / "bench.zarr", args.clips, grid, args.dim, args.classes)
        result["store"] = {"build_seconds": round(time.perf_counter() - started, 3),
                           "token_mb": round(store.token_nbytes() / 2**20, 1), "chunk_clips": store.chunk_clips}
        started = time.perf_counter()
        memory = SplitData(store, "train", in_memory=True, device=device)
        load_seconds = time.perf_counter() - started
        stream = SplitData(store, "train", in_memory=False, device=device, window_chunks=8)

        bank = bank_specs(args.head, args.bank, options)
        mixed_kinds = ["linear", "mlp", "attentive", "protobin"]
        mixed = [HeadSpec(kind, lr, 1e-4, 0, {"prototypes_per_class": 20} if kind == "protobin" else {})
                 for kind in mixed_kinds for lr in (1e-3, 3e-3, 1e-2, 3e-2)][: args.bank]
        runs = {
            "bare_tensor": lambda: bare_tensor_seconds(memory, one[0], config),
            "in_memory": lambda: epoch_seconds(HeadBank(one, config).fit(memory)),
            "streaming": lambda: epoch_seconds(HeadBank(one, config).fit(stream)),
            "bank": lambda: epoch_seconds(HeadBank(bank, config).fit(memory)),
            "linear_one": lambda: epoch_seconds(HeadBank(bank_specs("linear", 1, {}), config).fit(memory)),
            "linear_bank": lambda: epoch_seconds(HeadBank(bank_specs("linear", args.bank, {}), config).fit(memory)),
            "mixed_bank": lambda: epoch_seconds(HeadBank(mixed, config).fit(memory)),
        }
        best = {name: float("inf") for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                best[name] = min(best[name], run())
        bare, in_memory, streaming = best["bare_tensor"], best["in_memory"], best["streaming"]
        result["epoch_seconds"] = {
            "bare_tensor": round(bare, 4), "in_memory": round(in_memory, 4), "streaming": round(streaming, 4),
            "in_memory_load_once": round(load_seconds, 4),
            "in_memory_over_bare": round(in_memory / bare, 3), "streaming_over_bare": round(streaming / bare, 3),
        }
        result["bank"] = {
            "k": args.bank,
            f"{args.head}_one": round(in_memory, 4), f"{args.head}_bank": round(best["bank"], 4),
            f"{args.head}_bank_over_one": round(best["bank"] / in_memory, 3),
            "linear_one": round(best["linear_one"], 4), "linear_bank": round(best["linear_bank"], 4),
            "linear_bank_over_one": round(best["linear_bank"] / best["linear_one"], 3),
            "mixed_bank": round(best["mixed_bank"], 4), "mixed_kinds": mixed_kinds,
            "mixed_bank_over_one_protobin": round(best["mixed_bank"] / in_memory, 3),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
