"""Sharing a store: full-scan read throughput from S3 on loopback (moto's server) vs a local directory, and the
times of copy (upload), pack and verify.

    python -m bench.bench_share --out runs/bench_share.json
    python -m bench.bench_share --store runs/quickstart/sample-melpatch.zarr --synthetic-clips 0

Two stores: the quickstart sample store (built here when --store is not given) and a larger synthetic store
(--synthetic-clips, same token shape as the sample: T = 124, D = 256, float16) so throughput is not just latency.
A full scan reads every chunk of every layer through TokenStore (checked reads, the probe's path), once chunk by
chunk (what the streaming trainer's reader does) and once in windows of 8 chunks (zarr fetches them concurrently).
Local reads come from the page cache after the first pass: the ratio is S3 protocol + moto cost, not disk speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from embedcache.store import TokenStore
from embedcache.store.pack import copy_store, pack_store
from embedcache.store.verify import verify_store

WINDOW_CHUNKS = 8


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto's S3 server on a free loopback port, with AWS_* pointed at it for this process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise SystemExit("moto's server did not start") from None
            time.sleep(0.05)
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_ENDPOINT_URL=endpoint,
                      AWS_DEFAULT_REGION="us-east-1")
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).mkdir("bench")
    return server, endpoint


def full_scan(url: str, window_chunks: int) -> tuple[float, int]:
    """Seconds and decoded bytes to read every chunk of every layer (tokens, prefix, mask) from a fresh open."""
    started = time.perf_counter()
    store = TokenStore.open(url)
    nbytes = 0
    step = store.chunk_clips * window_chunks
    for layer in store.layers:
        for start in range(0, store.n_clips, step):
            stop = min(store.n_clips, start + step)
            tokens = store.read_tokens(layer, start, stop)
            prefix = store.read_prefix(layer, start, stop)
            mask = store.token_mask(start, stop)
            nbytes += tokens.numel() * tokens.element_size() + mask.numel()
            nbytes += 0 if prefix is None else prefix.numel() * prefix.element_size()
    return time.perf_counter() - started, nbytes


def median_scan(url: str, window_chunks: int, repeats: int) -> dict:
    runs = [full_scan(url, window_chunks) for _ in range(repeats)]
    seconds = statistics.median(run[0] for run in runs)
    return {"seconds": round(seconds, 4), "mb_per_s": round(runs[0][1] / 1e6 / seconds, 1), "bytes": runs[0][1]}


def bench_store(name: str, local: str, work: Path, repeats: int) -> dict:
    s3_url = f"s3://bench/{name}.zarr"
    upload = copy_store(local, s3_url, overwrite=True)
    full_scan(local, 1)  # warm the page cache: local numbers are then cache reads
    result = {"store": local, "clips": TokenStore.open(local).n_clips,
              "chunks_per_layer": TokenStore.open(local).spec.n_chunks,
              "disk_mb": round(TokenStore.open(local).disk_nbytes() / 1e6, 2),
              "upload_to_s3": {"seconds": round(upload.seconds, 3), "mb_per_s": round(upload.megabytes_per_second, 1)}}
    for window in (1, WINDOW_CHUNKS):
        local_scan = median_scan(local, window, repeats)
        s3_scan = median_scan(s3_url, window, repeats)
        result[f"scan_window_{window}"] = {
            "local": local_scan, "s3_loopback": s3_scan,
            "s3_over_local_seconds": round(s3_scan["seconds"] / local_scan["seconds"], 2),
        }
    packed = pack_store(local, work / f"{name}.zip", overwrite=True)
    result["pack"] = {"seconds": round(packed.seconds, 3), "mb": round(packed.bytes / 1e6, 2)}
    for where, url in (("local", local), ("zip", str(work / f"{name}.zip")), ("s3_loopback", s3_url)):
        report = verify_store(url)
        assert report.ok, report.problems
        result[f"verify_{where}"] = {"seconds": round(report.seconds, 3), "chunks": report.chunks_checked}
    return result


def sample_store(work: Path) -> str:
    from embedcache.quickstart import run_quickstart

    result = run_quickstart(out_dir=work / "quickstart", encoder="melpatch", probes=(), progress=False,
                            log=lambda *_: None)
    return str(result.store)


def synthetic_store(work: Path, clips: int) -> str:
    from bench.synthetic import SyntheticSpec, write_synthetic_store

    path = work / "synthetic.zarr"
    write_synthetic_store(path, SyntheticSpec(n_clips=clips, grid=(31, 4), embed_dim=256, n_classes=6))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="Sample store to use (default: build the quickstart sample with melpatch).")
    parser.add_argument("--synthetic-clips", type=int, default=1000, help="Clips of the larger store (0: skip).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="Write the results as JSON here.")
    args = parser.parse_args()
    server, endpoint = start_moto()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            results = {"host": {"platform": platform.platform(), "cpus": os.cpu_count(), "s3": f"moto at {endpoint}"}}
            results["sample"] = bench_store("sample", args.store or sample_store(work), work, args.repeats)
            if args.synthetic_clips:
                results["synthetic"] = bench_store("synthetic", synthetic_store(work, args.synthetic_clips), work,
                                                   args.repeats)
    finally:
        server.terminate()
        server.wait()
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
