"""Extraction overhead: `extract` to a store vs a forward-only loop over the same clips, side by side in one run.

    python -m bench.bench_extract --encoder melpatch --encoder vit --clips 240 --threads 1 --out runs/bench_extract.json

The forward-only loop decodes every clip into RAM first and times only the encoder over the same batches, so the
ratio says how much the store (decode workers, dtype conversion, compression, chunk writes) adds on top.
Validation (a full decode of every file before anything is written) is reported separately.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from bench.results import emit, machine, parse_args
from embedcache import audio, encoders
from embedcache.datasets import read_manifest
from embedcache.datasets.sample import build_sample_set
from embedcache.extract import ExtractConfig, extract
from embedcache.store import TokenStore

RANDOM_INIT = {"vit"}


def forward_only_seconds(
    encoder_name: str, manifest_path: Path, batch_size: int, num_samples: int, options: dict
) -> float:
    """Time the encoder alone over the same clips and batches (waveforms decoded beforehand)."""
    encoder = encoders.create(encoder_name, random_init=encoder_name in RANDOM_INIT, **options)
    layers = encoders.resolve_layers("last", encoder.num_layers)
    manifest = read_manifest(manifest_path)
    waves = torch.stack([
        torch.from_numpy(audio.fit_length(audio.load_audio(c.path, encoder.sample_rate), num_samples)[0])
        for c in manifest.clips
    ])
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(waves), batch_size):
            encoder(waves[start : start + batch_size], layers)
    return time.perf_counter() - started


def bench_one(
    encoder_name: str, manifest: Path, workdir: Path, batch_size: int, workers: int, rounds: int, options: dict
) -> dict:
    """Alternate extract and forward-only `rounds` times; keep the fastest of each (the least disturbed run)."""
    out = workdir / f"{encoder_name}.zarr"
    extract_s, total_s, forward_s = [], [], []
    for _ in range(rounds):
        started = time.perf_counter()
        report = extract(ExtractConfig(
            encoder=encoder_name, manifest=str(manifest), out=str(out), random_init=encoder_name in RANDOM_INIT,
            batch_size=batch_size, workers=workers, progress=False, overwrite=True, encoder_options=options,
        ))
        total_s.append(time.perf_counter() - started)
        extract_s.append(report.seconds)
        store = TokenStore.open(out)
        num_samples = store.provenance["clip_policy"]["num_samples"]
        batch = store.provenance["batch_size"]
        forward_s.append(forward_only_seconds(encoder_name, manifest, batch, num_samples, options))
    extracted, total, forward = min(extract_s), min(total_s), min(forward_s)
    raw_fp16 = store.n_clips * (store.num_tokens + store.num_prefix) * store.embed_dim * 2 * len(store.layers)
    return {
        "encoder": encoder_name,
        "options": options,
        "clips": store.n_clips,
        "grid": list(store.grid),
        "embed_dim": store.embed_dim,
        "batch_size": batch,
        "rounds": rounds,
        "extract_s": round(extracted, 3),
        "extract_with_validation_s": round(total, 3),
        "forward_only_s": round(forward, 3),
        "ratio_extract_vs_forward": round(extracted / forward, 3),
        "ratio_with_validation_vs_forward": round(total / forward, 3),
        "clips_per_s_extract": round(store.n_clips / extracted, 1),
        "clips_per_s_forward": round(store.n_clips / forward, 1),
        "disk_bytes": store.disk_nbytes(),
        "raw_fp16_bytes": raw_fp16,
        "disk_vs_raw_fp16": round(store.disk_nbytes() / raw_fp16, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", action="append", help="encoder name (repeatable); default melpatch and vit")
    parser.add_argument("--clips", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--vit-option", action="append", default=[], help="key=value for the random vit")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the fastest of each is kept")
    args = parse_args(parser)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        manifest = build_sample_set(workdir / "sample", n_clips=args.clips)
        vit_options = {key: yaml.safe_load(value) for key, _, value in (o.partition("=") for o in args.vit_option)}
        results = [
            bench_one(name, manifest, workdir, args.batch_size, args.workers, args.rounds,
                      vit_options if name == "vit" else {})
            for name in args.encoder or ["melpatch", "vit"]
        ]
    emit({"benchmark": "extract_vs_forward_only", "machine": machine(), "results": results}, args.out)


if __name__ == "__main__":
    main()
