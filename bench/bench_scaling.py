"""Scaling: the store-read, probe-epoch, head-bank and cache-vs-encoder ratios at three sizes, in one JSON.

    python -m bench.bench_scaling --sizes 1000,4000,16000 --audio-sizes 40,80,160 --out runs/bench_scaling.json

Synthetic token stores (float16, zstd unless said) of --sizes clips, --grid tokens of --dim:
  read    full scan and chunk-shuffled reads vs numpy.fromfile (bench_store_read), float16 with and without zstd
  epoch   one head's fastest epoch (after the first) from the store in memory, streamed, and by a plain loop over a
          tensor already in RAM (bench_probe's bare loop), for linear and protobin
  bank    fastest epoch of K heads in one bank vs one head (linear), and the K-separate-runs cost built from the
          measured parts: K x (load + one-head fit) vs load + bank fit
Then cache vs no cache (bench_cache_vs_encoder) on generated audio of --audio-sizes clips with --audio-epochs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import bench_cache_vs_encoder, bench_store_read
from bench.bench_head_bank import bank_specs
from bench.bench_probe import bare_tensor_seconds, epoch_seconds
from bench.results import emit, machine, parse_args, ratio, timed
from bench.synthetic import SyntheticSpec, write_synthetic_store
from embedcache.loader import SplitData
from embedcache.store import TokenStore
from embedcache.train import HeadBank, HeadSpec, TrainConfig


def epoch_row(store: TokenStore, kind: str, epochs: int, batch_size: int) -> dict:
    """Fastest epoch of one head: store in memory, streamed, plain loop over the in-RAM tensor."""
    config = TrainConfig(epochs=epochs, batch_size=batch_size, device="cpu", warmup_epochs=0.0)
    spec = HeadSpec(kind, 1e-3)
    load_s, memory = timed(SplitData, store, "train", in_memory=True)
    streamed = SplitData(store, "train", in_memory=False, window_chunks=8)
    in_memory = epoch_seconds(HeadBank([spec], config).fit(memory))
    streaming = epoch_seconds(HeadBank([spec], config).fit(streamed))
    bare = bare_tensor_seconds(memory, spec, config)
    return {"head": kind, "load_s": round(load_s, 6), "in_memory_epoch_s": round(in_memory, 6),
            "streaming_epoch_s": round(streaming, 6), "tensor_epoch_s": round(bare, 6),
            "ratio_store_vs_tensor": ratio(in_memory, bare), "ratio_streaming_vs_tensor": ratio(streaming, bare)}


def bank_row(store: TokenStore, k: int, epochs: int, batch_size: int) -> dict:
    """Fastest epoch of K linear heads in one bank vs one, and K separate runs' cost from the measured parts."""
    config = TrainConfig(epochs=epochs, batch_size=batch_size, device="cpu", warmup_epochs=0.0)
    load_s, memory = timed(SplitData, store, "train", in_memory=True)
    one = epoch_seconds(HeadBank([HeadSpec("linear", 1e-3)], config).fit(memory))
    bank = epoch_seconds(HeadBank(bank_specs("linear", k), config).fit(memory))
    separate = k * (load_s + epochs * one)
    together = load_s + epochs * bank
    return {"head": "linear", "k": k, "one_head_epoch_s": round(one, 6), "bank_epoch_s": round(bank, 6),
            "ratio_bank_vs_one_head": ratio(bank, one), "epochs": epochs, "load_s": round(load_s, 6),
            "ratio_separate_runs_vs_bank_from_parts": ratio(separate, together)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,4000,16000")
    parser.add_argument("--grid", default="8,8")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timed fit (the fastest after the first)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--bank-k", type=int, default=16)
    parser.add_argument("--audio-sizes", default="40,80,160", help="clips for cache vs no cache ('' skips it)")
    parser.add_argument("--audio-epochs", type=int, default=10)
    parser.add_argument("--encoder", default="vit")
    args = parse_args(parser)
    grid = tuple(int(part) for part in args.grid.split(","))
    summary: dict = {"benchmark": "scaling", "machine": machine(), "grid": list(grid), "embed_dim": args.dim,
                     "sizes": [], "cache_vs_encoder": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for clips in (int(s) for s in args.sizes.split(",")):
            read = bench_store_read.run(clips, grid, args.dim, 2, workdir,
                                        variants=[("float16", "none"), ("float16", "zstd")])["results"]
            store = write_synthetic_store(workdir / f"scale_{clips}.zarr",
                                          SyntheticSpec(n_clips=clips, grid=grid, embed_dim=args.dim))
            summary["sizes"].append({
                "clips": clips, "train_clips": len(store.split_indices("train")),
                "token_mb": round(store.token_nbytes() / 1e6, 1), "clips_per_chunk": store.chunk_clips,
                "read": read,
                "epoch": [epoch_row(store, kind, args.epochs, args.batch_size) for kind in ("linear", "protobin")],
                "bank": bank_row(store, args.bank_k, args.epochs, args.batch_size),
            })
            emit(summary, args.out)
        for clips in (int(s) for s in args.audio_sizes.split(",") if s.strip()):
            result = bench_cache_vs_encoder.run(clips, args.encoder, {}, "protobin",
                                                args.audio_epochs, 32, "cpu", workdir)
            result.pop("machine")
            summary["cache_vs_encoder"].append(result)
            emit(summary, args.out)
    emit(summary, args.out)


if __name__ == "__main__":
    main()
