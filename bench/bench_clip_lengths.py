"""What the long-clip design costs on clips of mixed length (FSD50K-like, 0.3 to 30 s), side by side in one run.

    python -m bench.bench_clip_lengths --clips 200 --threads 1 --out runs/bench_clip_lengths.json

Every design extracts the same clips with the same encoder (the random `vit`; --vit-option key=value resizes it):

- `rows_to_longest`: the default, one row per clip as long as the longest clip (here 30 s), padded patches masked;
- `windows_10s`: `--window 10`, long clips cut into 10 s rows (the last ending at the clip's end);
- `crop_10s`: `--max-seconds 10`, the lossy alternative (counted, listed);
- `equal_length_batches`: the default rows, but the encoder takes no lengths, so extract runs runs of equal-length
  clips only (what an encoder without a padding mask gets): the time a mask saves.

Reported per design: extract seconds (fastest of --rounds alternating rounds), rows, uncompressed token bytes, bytes
on disk, the share of token slots that hold real audio, the bytes a ragged layout would need (valid tokens only,
float16) and the seconds of audio lost.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import yaml

from bench.results import emit, machine, parse_args, ratio
from embedcache.encoders.vit import ViTEncoder, create_vit
from embedcache.extract import ExtractConfig, extract
from embedcache.store import TokenStore

RATE = 16000
DESIGNS = {
    "rows_to_longest": {},
    "windows_10s": {"window": 10.0},
    "crop_10s": {"max_seconds": 10.0},
    "equal_length_batches": {"encoder": "bench.bench_clip_lengths:create_unmasked_vit"},
}


class UnmaskedViT(ViTEncoder):
    """The random vit, declared unable to take real lengths: extract gives it equal-length runs only."""

    supports_lengths = False


def create_unmasked_vit(checkpoint=None, random_init=False, **options) -> UnmaskedViT:
    encoder = create_vit(checkpoint, random_init, **options)
    encoder.__class__ = UnmaskedViT
    return encoder


def fsd50k_like_lengths(count: int, seed: int = 0, low: float = 0.3, high: float = 30.0) -> np.ndarray:
    """Clip lengths in seconds, log-uniform between `low` and `high` (median 3 s, mean 6.4 s; FSD50K: 0.3-30 s,
    mean 7.6 s), with the longest exactly `high`."""
    lengths = np.exp(np.random.default_rng(seed).uniform(np.log(low), np.log(high), count))
    lengths[0] = high
    return np.round(lengths, 3)


def write_clips(folder: Path, seconds: np.ndarray) -> Path:
    """Noise with a class tone per clip, 16-bit WAV, and a manifest over train/valid/test."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    rows = ["clip_id,path,labels,split"]
    for i, length in enumerate(seconds):
        t = np.arange(round(length * RATE)) / RATE
        label = ["a", "b", "c", "d"][i % 4]
        wave = 0.05 * rng.standard_normal(len(t)) + 0.2 * np.sin(2 * np.pi * (200 + 400 * (i % 4)) * t)
        soundfile.write(folder / f"c{i:04d}.wav", wave.astype(np.float32), RATE, subtype="PCM_16")
        rows.append(f"c{i:04d},c{i:04d}.wav,{label},{['train', 'train', 'valid', 'test'][i % 4]}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


def measure(store: TokenStore, seconds: float) -> dict:
    valid = int(store.valid_tokens.sum())
    rate = store.sample_rate
    return {
        "extract_s": round(seconds, 3),
        "rows": store.n_clips,
        "grid": list(store.grid),
        "row_seconds": round(store.provenance["clip_policy"]["num_samples"] / rate, 3),
        "raw_token_bytes": store.token_nbytes(),
        "disk_bytes": store.disk_nbytes(),
        "valid_token_share": round(valid / (store.n_clips * store.num_tokens), 4),
        "ragged_fp16_bytes": valid * store.embed_dim * 2 * len(store.layers),
        "lost_seconds": round(float(store.lost_samples.sum()) / rate, 2),
    }


def run(clips: int, workdir: Path, rounds: int, batch_size: int, options: dict) -> dict:
    """Extract the same clips with every design, alternating designs within each round."""
    lengths = fsd50k_like_lengths(clips)
    manifest = write_clips(workdir / "clips", lengths)
    times: dict[str, list[float]] = {name: [] for name in DESIGNS}
    for _ in range(rounds):
        for name, change in DESIGNS.items():
            settings = {"encoder": "vit", **change}
            report = extract(ExtractConfig(
                manifest=str(manifest), out=str(workdir / f"{name}.zarr"), random_init=True, encoder_options=options,
                batch_size=batch_size, workers=1, progress=False, overwrite=True, **settings,
            ))
            times[name].append(report.seconds)
    designs = {name: measure(TokenStore.open(workdir / f"{name}.zarr"), min(times[name])) for name in DESIGNS}
    base = designs["rows_to_longest"]
    for row in designs.values():
        row["disk_vs_rows_to_longest"] = ratio(row["disk_bytes"], base["disk_bytes"])
        row["time_vs_rows_to_longest"] = ratio(row["extract_s"], base["extract_s"])
    return {
        "clips": clips,
        "audio_seconds": round(float(lengths.sum()), 1),
        "lengths_s": {"min": float(lengths.min()), "median": float(np.median(lengths)),
                      "mean": round(float(lengths.mean()), 2), "max": float(lengths.max())},
        "encoder": {"name": "vit", "options": options},
        "rounds": rounds,
        "batch_size": batch_size,
        "designs": designs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the fastest of each is kept")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vit-option", action="append", default=[], help="key=value for the random vit")
    args = parse_args(parser)
    options = {key: yaml.safe_load(value) for key, _, value in (o.partition("=") for o in args.vit_option)}
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.clips, Path(tmp), args.rounds, args.batch_size, options)
    emit({"benchmark": "clip_lengths", "machine": machine(), **result}, args.out)


if __name__ == "__main__":
    main()
