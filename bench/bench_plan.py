"""Planning one epoch's shuffle windows: the chunk index (one sort, then gathers) vs a per-window scan of the split.

    python -m bench.bench_plan --threads 1 --out runs/bench_plan.json

The scan (`np.isin` over the whole split for every window) is what `shuffle_windows` did before 2026-11-30: its cost
grows with clips x windows. Both give the same windows (checked here); 5 clips per chunk as real ViT-B tokens give
about 5 per 4 MB chunk, windows of 8 chunks.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.results import emit, machine, parse_args, ratio, timed
from embedcache.loader import shuffle_windows


def scan_plan(chunk_of: np.ndarray, seed: int, epoch: int, window_chunks: int) -> list:
    """The per-window scan, kept here as the reference."""
    rng = np.random.default_rng([seed, epoch])
    chunks = rng.permutation(np.unique(chunk_of))
    width = min(window_chunks, len(chunks))
    return [(np.sort(chunks[s : s + width]), rng.permutation(np.flatnonzero(np.isin(chunk_of, np.sort(
        chunks[s : s + width]))))) for s in range(0, len(chunks), width)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="200000,2000000", help="clips per split, comma-separated")
    parser.add_argument("--scan-sizes", default="50000,200000", help="sizes to time the old scan at")
    parser.add_argument("--clips-per-chunk", type=int, default=5)
    parser.add_argument("--window-chunks", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parse_args(parser)
    rows = []
    for n in sorted({int(s) for s in (args.sizes + "," + args.scan_sizes).split(",") if s.strip()}):
        chunk_of = np.arange(n) // args.clips_per_chunk
        index_s = min(timed(shuffle_windows, chunk_of, 0, 1, args.window_chunks)[0] for _ in range(args.rounds))
        row = {"clips": n, "chunks": int(chunk_of[-1]) + 1, "index_plan_s": round(index_s, 4)}
        if str(n) in args.scan_sizes.split(","):
            scan_s, scanned = timed(scan_plan, chunk_of, 0, 1, args.window_chunks)
            planned = shuffle_windows(chunk_of, 0, 1, args.window_chunks)
            row["same_windows"] = all(np.array_equal(a[1], b[1]) for a, b in zip(planned, scanned, strict=True))
            row["scan_plan_s"] = round(scan_s, 3)
            row["ratio_scan_vs_index"] = ratio(scan_s, index_s)
        rows.append(row)
    emit({"benchmark": "epoch_plan", "machine": machine(), "clips_per_chunk": args.clips_per_chunk,
          "window_chunks": args.window_chunks, "results": rows}, args.out)


if __name__ == "__main__":
    main()
