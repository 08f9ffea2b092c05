"""Store read throughput vs `numpy.fromfile` of the same bytes, and size on disk vs raw bytes, side by side.

    python -m bench.bench_store_read --clips 4000 --out runs/bench_store_read.json
    python -m bench.bench_store_read --store runs/quickstart/sample-melpatch.zarr   # a real store as well

For each of float16 / bfloat16 x zstd / none a synthetic store is written, and its token bytes also as one raw
file. Full scan: the store chunk by chunk in order (how a streaming epoch reads) vs one `numpy.fromfile` of the
whole file. Chunk-shuffled: the same chunks in one random order, from the store and via `numpy.fromfile` with an
offset per chunk. Files were just written, so both sides read from the page cache: the ratio is the cost of
Zarr's codecs (crc32c, zstd) and bookkeeping over raw reads, not of the disk. The best of --repeats is reported.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.results import emit, machine, parse_args, ratio
from bench.synthetic import SyntheticSpec, write_synthetic_store
from embedcache.store import TokenStore, layout

VARIANTS = [("float16", "none"), ("float16", "zstd"), ("bfloat16", "none"), ("bfloat16", "zstd")]


def write_raw_copy(store: TokenStore, path: Path) -> int:
    """The store's token bytes (stored dtype, clip order) as one raw file; returns its size."""
    with open(path, "wb") as handle:
        for chunk in range(store.spec.n_chunks):
            start, stop = store.spec.chunk_range(chunk)
            store.token_array()[start:stop].tofile(handle)
    return path.stat().st_size


def best_of(repeats: int, read) -> float:
    """Fastest of `repeats` timed calls of read()."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        read()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(store: TokenStore, raw_path: Path, repeats: int, seed: int = 0) -> dict:
    """Full-scan and chunk-shuffled seconds of the store and of the raw file, with GB/s and ratios."""
    spec = store.spec
    numpy_dtype = layout.stored_numpy_dtype(store.dtype)
    clip_items = store.num_tokens * store.embed_dim
    clip_bytes = clip_items * layout.itemsize(store.dtype)
    order = np.random.default_rng(seed).permutation(spec.n_chunks)
    nbytes = spec.n_clips * clip_bytes

    def store_chunks(chunks) -> None:
        for chunk in chunks:
            store.read_tokens(None, *spec.chunk_range(int(chunk)))

    def raw_chunks(chunks) -> None:
        for chunk in chunks:
            start, stop = spec.chunk_range(int(chunk))
            np.fromfile(raw_path, dtype=numpy_dtype, count=(stop - start) * clip_items, offset=start * clip_bytes)

    full_store = best_of(repeats, lambda: store_chunks(range(spec.n_chunks)))
    full_raw = best_of(repeats, lambda: np.fromfile(raw_path, dtype=numpy_dtype))
    shuffled_store = best_of(repeats, lambda: store_chunks(order))
    shuffled_raw = best_of(repeats, lambda: raw_chunks(order))
    disk = store.disk_nbytes()
    return {
        "dtype": store.dtype,
        "compression": spec.compression,
        "clips": spec.n_clips,
        "tokens_per_clip": store.num_tokens,
        "embed_dim": store.embed_dim,
        "chunks": spec.n_chunks,
        "clips_per_chunk": spec.chunk_clips,
        "raw_bytes": nbytes,
        "disk_bytes": disk,
        "disk_vs_raw": ratio(disk, nbytes),
        "full_scan": {
            "store_s": round(full_store, 6), "numpy_fromfile_s": round(full_raw, 6),
            "store_gb_s": round(nbytes / full_store / 1e9, 3), "numpy_gb_s": round(nbytes / full_raw / 1e9, 3),
            "ratio_store_vs_numpy": ratio(full_store, full_raw),
        },
        "chunk_shuffled": {
            "store_s": round(shuffled_store, 6), "numpy_fromfile_s": round(shuffled_raw, 6),
            "store_gb_s": round(nbytes / shuffled_store / 1e9, 3),
            "numpy_gb_s": round(nbytes / shuffled_raw / 1e9, 3),
            "ratio_store_vs_numpy": ratio(shuffled_store, shuffled_raw),
        },
    }


def run(clips: int, grid: tuple[int, int], dim: int, repeats: int, workdir: Path,
        variants: list[tuple[str, str]] = VARIANTS, extra_store: str | None = None) -> dict:
    """Every variant at one size (and an existing store when given); the benchmark's JSON summary."""
    spec = SyntheticSpec(n_clips=clips, grid=grid, embed_dim=dim)
    results = []
    for dtype, compression in variants:
        path = workdir / f"read_{dtype}_{compression}_{clips}.zarr"
        store = write_synthetic_store(path, spec, dtype=dtype, compression=compression)
        raw_path = path.with_suffix(".bin")
        write_raw_copy(store, raw_path)
        results.append(measure(store, raw_path, repeats))
    if extra_store:
        store = TokenStore.open(extra_store)
        raw_path = workdir / "extra_store.bin"
        write_raw_copy(store, raw_path)
        results.append({"store": extra_store, **measure(store, raw_path, repeats)})
    return {"benchmark": "store_read_vs_numpy_fromfile", "machine": machine(), "page_cache": "warm",
            "repeats": repeats, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=4000)
    parser.add_argument("--grid", default="8,8", help="n_time,n_freq of the synthetic tokens")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store", help="also measure this existing store")
    args = parse_args(parser)
    grid = tuple(int(part) for part in args.grid.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(args.clips, grid, args.dim, args.repeats, Path(tmp), extra_store=args.store)
    emit(summary, args.out)


if __name__ == "__main__":
    main()
