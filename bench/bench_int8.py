"""int8 vs float16 token stores side by side: bytes on disk, read speed, probe epoch time, token fidelity, and every
head's test mAP (mean over seeds) through the probe protocol on the same clips.

    python -m bench.bench_int8 --threads 1 --out runs/bench_int8.json
    python -m bench.bench_int8 --quick                 # toy sizes, a few minutes: checks the script runs

Data sets: the bundled sample (120 clips, melpatch), and a second localised multi-label set built by the same
generator with another seed and more, shorter clips (--clips, --seconds), extracted with melpatch, the small random
`vit` and a random ViT-B-sized `vit` (768-d, 12 blocks, 12 heads). Every store is extracted as float16 and
converted to int8 with `convert_store` (so both hold the same clips, and int8 is exactly what `convert` gives).
Per store pair:
  fidelity   over every real token (and prefix token): relative RMS error ||x - x8||_F / ||x||_F, the largest
             per-token relative error, and the cosine of every token to its float16 original (min, mean);
  storage    bytes on disk; full scan of every chunk as the loader reads it (int8: codes and scales, no float
             conversion), best of --repeats, as stored GB/s and clips/s; and the same scan dequantised to float32;
  epoch      fastest training epoch after the first of linear and protobin (HeadBank, split in memory, CPU);
  quality    `run_probe` with every head kind (or --heads), the same lr grid, --seeds seeds and --epochs epochs on
             both stores: per head the lr chosen on validation and the test mAP (mean and std over seeds); the bar is
             |int8 - float16| <= 0.5 mAP points for every head.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bench.bench_probe import epoch_seconds as fastest_epoch
from bench.results import emit, machine, parse_args, ratio
from embedcache.datasets.sample import build_sample_set
from embedcache.extract import ExtractConfig, extract
from embedcache.loader import SplitData
from embedcache.probe import run_probe
from embedcache.store import TokenStore
from embedcache.store.convert import convert_store
from embedcache.train import HeadBank, HeadSpec, TrainConfig

ENCODERS = {
    "melpatch": {"encoder": "melpatch"},
    "vit-small": {"encoder": "vit", "random_init": True},
    "vit-b": {"encoder": "vit", "random_init": True,
              "encoder_options": {"embed_dim": 768, "depth": 12, "num_heads": 12}},
}
BAR_POINTS = 0.5
# Every head kind of issue 13's table (clip-level heads).
HEADS = ("linear", "mlp", "attentive", "ep", "simpool", "abmilp", "proto", "protofloat", "protobin", "layermix", "knn",
         "logreg")


def build_stores(root: Path, name: str, manifest: Path, encoder: str) -> tuple[TokenStore, TokenStore, dict]:
    """(float16 store, int8 store converted from it, seconds of each step)."""
    out = root / f"{name}-{encoder}.zarr"
    started = time.perf_counter()
    extract(ExtractConfig(manifest=str(manifest), out=str(out), dtype="float16", workers=1, progress=False,
                          batch_size=16, **ENCODERS[encoder]))
    extracted = time.perf_counter() - started
    report = convert_store(out, root / f"{name}-{encoder}-int8.zarr", "int8")
    return TokenStore.open(out), TokenStore.open(report.destination), {
        "extract_float16_s": round(extracted, 2), "convert_to_int8_s": round(report.seconds, 2)}


def build_float32(root: Path, name: str, manifest: Path, encoder: str) -> TokenStore:
    """The same clips extracted as float32: the reference float16 itself is measured against."""
    out = root / f"{name}-{encoder}-float32.zarr"
    extract(ExtractConfig(manifest=str(manifest), out=str(out), dtype="float32", workers=1, progress=False,
                          batch_size=16, **ENCODERS[encoder]))
    return TokenStore.open(out)


def fidelity(exact: TokenStore, int8: TokenStore) -> dict:
    """Reconstruction error and cosines of every real token (and prefix token) of every layer."""
    stats = {"tokens": _Stats(), "prefix": _Stats()}
    for layer in exact.layers:
        for chunk in range(exact.spec.n_chunks):
            start, stop = exact.spec.chunk_range(chunk)
            mask = exact.token_mask(start, stop)
            stats["tokens"].add(exact.read_tokens(layer, start, stop).float()[mask],
                                int8.read_tokens(layer, start, stop)[mask])
            if exact.num_prefix:
                stats["prefix"].add(exact.read_prefix(layer, start, stop).float().flatten(0, 1),
                                    int8.read_prefix(layer, start, stop).flatten(0, 1))
    return {kind: value.summary() for kind, value in stats.items() if value.count}


class _Stats:
    """Running sums over tokens [n, D]: squared error and energy, per-token relative errors and cosines."""

    def __init__(self):
        self.error = self.energy = 0.0
        self.count = 0
        self.cosines: list[np.ndarray] = []
        self.relative: list[np.ndarray] = []

    def add(self, exact: torch.Tensor, approx: torch.Tensor) -> None:
        keep = exact.norm(dim=-1) > 0
        exact, approx = exact[keep].double(), approx[keep].double()
        self.error += float((exact - approx).square().sum())
        self.energy += float(exact.square().sum())
        self.count += len(exact)
        self.cosines.append(torch.nn.functional.cosine_similarity(exact, approx, dim=-1).numpy())
        self.relative.append(((exact - approx).norm(dim=-1) / exact.norm(dim=-1)).numpy())

    def summary(self) -> dict:
        cosines, relative = np.concatenate(self.cosines), np.concatenate(self.relative)
        return {"tokens": self.count, "relative_rms": float(np.sqrt(self.error / self.energy)),
                "per_token_relative_error_max": float(relative.max()),
                "per_token_relative_error_mean": float(relative.mean()),
                "cosine_min": float(cosines.min()), "cosine_mean": float(cosines.mean())}


def storage(store: TokenStore, repeats: int) -> dict:
    """Bytes on disk and the best full scan of every chunk of every layer: as stored, and dequantised to float32."""
    spec = store.spec

    def scan(as_float: bool) -> float:
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            for layer in store.layers:
                for chunk in range(spec.n_chunks):
                    start, stop = spec.chunk_range(chunk)
                    if as_float:
                        store.read_tokens(layer, start, stop).float()
                    else:
                        store.read_stored(layer, start, stop)
            best = min(best, time.perf_counter() - started)
        return best

    stored, as_float = scan(False), scan(True)
    nbytes = store.token_nbytes() * len(store.layers)  # int8: codes and scales
    clips = spec.n_clips * len(spec.layers)
    return {"disk_bytes": store.disk_nbytes(), "raw_token_bytes": nbytes, "read_s": round(stored, 4),
            "read_gb_s": round(nbytes / stored / 1e9, 3), "read_clips_s": round(clips / stored, 1),
            "read_float32_s": round(as_float, 4), "read_float32_clips_s": round(clips / as_float, 1)}


def epoch_seconds(store: TokenStore, kind: str, epochs: int) -> float:
    """Fastest training epoch after the first of one head, split in memory."""
    bank = HeadBank([HeadSpec(kind, lr=1e-2, weight_decay=1e-4, seed=0)],
                    TrainConfig(epochs=epochs, batch_size=32, device="cpu"))
    return fastest_epoch(bank.fit(SplitData(store, "train", device="cpu")))


def quality(store: TokenStore, out: Path, seeds: int, epochs: int, lrs: list[float],
            heads: Sequence[str] = HEADS) -> dict:
    """Every head kind through the probe protocol, one run per lr of the grid (a head in a bank is bit-identical to
    the head alone, so this is the grid run split up): per head and lr, valid and test mAP (means over seeds)."""
    started = time.perf_counter()
    results: dict[str, dict] = {}
    for lr in lrs:
        config = {"grid": {"lr": [lr], "weight_decay": [1e-4]}, "seeds": seeds, "predictions": False,
                  "train": {"epochs": epochs, "batch_size": 32, "device": "cpu"}}
        run = out / f"lr{lr:g}"
        report = run_probe(store.path, list(heads), run, config=config, ledger=run / "ledger.csv", overwrite=True,
                           log=lambda line: None)
        for result in report.results:
            results.setdefault(result.name, {})[lr] = {
                "valid_map": result.valid["map"], "test_map": result.test["map"],
                "test_map_std": result.test.get("map_std"), "status": result.status}
    return {"seconds": round(time.perf_counter() - started, 1), "lrs": lrs, "heads": results}


def protocol_choice(per_lr: dict, lrs: list[float]) -> float:
    """The probe protocol's choice: the lr with the best mean validation mAP, the first of equals (probe.py)."""
    return max(lrs, key=lambda lr: per_lr[lr]["valid_map"] if np.isfinite(per_lr[lr]["valid_map"]) else -np.inf)


def compare(reference: dict, other: dict) -> dict:
    """Per head: the protocol's test mAP on each store (lr chosen on validation), its difference in points, whether
    the same lr was chosen, and the difference at every lr of the grid (the same configuration on both stores)."""
    lrs, rows = reference["lrs"], {}
    for name, exact in reference["heads"].items():
        mine = other["heads"][name]
        chosen, chosen_other = protocol_choice(exact, lrs), protocol_choice(mine, lrs)
        rows[name] = {
            "reference_map": round(exact[chosen]["test_map"], 4), "map": round(mine[chosen_other]["test_map"], 4),
            "diff_points": round(100 * (mine[chosen_other]["test_map"] - exact[chosen]["test_map"]), 2),
            "same_lr": chosen == chosen_other, "reference_lr": chosen, "lr": chosen_other,
            "diff_points_per_lr": {str(lr): round(100 * (mine[lr]["test_map"] - exact[lr]["test_map"]), 2)
                                   for lr in lrs},
            "valid_map_per_lr": {str(lr): [round(exact[lr]["valid_map"], 4), round(mine[lr]["valid_map"], 4)]
                                 for lr in lrs},
        }
    worst = max(abs(row["diff_points"]) for row in rows.values())
    worst_same = max(abs(value) for row in rows.values() for value in row["diff_points_per_lr"].values())
    return {"heads": rows, "max_abs_diff_points": worst, "within_bar": worst <= BAR_POINTS,
            "max_abs_diff_points_same_lr": worst_same, "within_bar_same_lr": worst_same <= BAR_POINTS,
            "same_lr_everywhere": all(row["same_lr"] for row in rows.values())}


def run_case(root: Path, name: str, manifest: Path, encoder: str, args) -> dict:
    exact, int8, timings = build_stores(root, name, manifest, encoder)
    print(f"[{name} / {encoder}] stores built {timings}", file=sys.stderr, flush=True)
    case = {"dataset": name, "encoder": encoder, "clips": exact.n_clips, "grid": list(exact.grid),
            "embed_dim": exact.embed_dim, "prefix_tokens": exact.num_prefix, **timings,
            "fidelity": fidelity(exact, int8),
            "storage": {"float16": storage(exact, args.repeats), "int8": storage(int8, args.repeats)}}
    case["storage"]["disk_int8_vs_float16"] = ratio(case["storage"]["int8"]["disk_bytes"],
                                                    case["storage"]["float16"]["disk_bytes"])
    case["epoch_s"] = {kind: {dtype: round(epoch_seconds(store, kind, args.epoch_epochs), 4)
                              for dtype, store in (("float16", exact), ("int8", int8))}
                       for kind in ("linear", "protobin")}
    print(f"[{name} / {encoder}] fidelity {case['fidelity']}", file=sys.stderr, flush=True)
    if args.seeds:
        if args.probe_threads:
            torch.set_num_threads(args.probe_threads)
        stores = {"float16": exact, "int8": int8}
        if encoder in args.noise_floor.split(","):  # how far float16 itself is from float32 under the same protocol
            stores["float32"] = build_float32(root, name, manifest, encoder)
        results = {dtype: quality(store, root / "runs" / f"{name}-{encoder}-{dtype}", args.seeds, args.epochs,
                                  args.lrs, args.heads) for dtype, store in stores.items()}
        case["quality"] = {**compare(results["float16"], results["int8"]),
                           "probe_seconds": {dtype: result["seconds"] for dtype, result in results.items()},
                           "per_lr": results}
        if "float32" in results:
            case["noise_floor_float16_vs_float32"] = compare(results["float32"], results["float16"])
        print(f"[{name} / {encoder}] worst head differs by {case['quality']['max_abs_diff_points']} points",
              file=sys.stderr, flush=True)
        torch.set_num_threads(args.threads or torch.get_num_threads())
    return case


def markdown(cases: list[dict]) -> str:
    """The tables docs/benchmarks.md shows."""
    lines = ["| data / encoder | tokens [T, D] | disk MB fp16 / int8 | read GB/s fp16 / int8 | read clips/s fp16 / "
             "int8 | epoch s linear fp16 / int8 | epoch s protobin fp16 / int8 | rel. RMS | cosine min / mean |",
             "|---|---|---|---|---|---|---|---|---|"]
    for case in cases:
        f16, i8 = case["storage"]["float16"], case["storage"]["int8"]
        fid = case["fidelity"]["tokens"]
        epoch = case["epoch_s"]
        lines.append(
            f"| {case['dataset']} / {case['encoder']} | {case['grid'][0] * case['grid'][1]} x {case['embed_dim']} | "
            f"{f16['disk_bytes'] / 1e6:.2f} / {i8['disk_bytes'] / 1e6:.2f} | {f16['read_gb_s']:.2f} / "
            f"{i8['read_gb_s']:.2f} | {f16['read_clips_s']:.0f} / {i8['read_clips_s']:.0f} | "
            f"{epoch['linear']['float16']:.3f} / {epoch['linear']['int8']:.3f} | "
            f"{epoch['protobin']['float16']:.3f} / {epoch['protobin']['int8']:.3f} | {fid['relative_rms']:.4f} | "
            f"{fid['cosine_min']:.5f} / {fid['cosine_mean']:.6f} |")
    with_quality = [case for case in cases if "quality" in case]
    if with_quality:
        names = list(with_quality[0]["quality"]["heads"])
        lines += ["", "| head | " + " | ".join(f"{c['dataset']} / {c['encoder']}" for c in with_quality) + " |",
                  "|---|" + "---|" * len(with_quality)]
        for name in names:
            cells = []
            for case in with_quality:
                row = case["quality"]["heads"][name]
                same = "" if row["same_lr"] else f" (lr {row['reference_lr']:g} -> {row['lr']:g})"
                cells.append(f"{100 * row['reference_map']:.1f} / {100 * row['map']:.1f} "
                             f"({row['diff_points']:+.2f}){same}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=360, help="clips of the second (localised) set")
    parser.add_argument("--seconds", type=float, default=3.0, help="clip length of the second set")
    parser.add_argument("--encoders", default="melpatch,vit-small,vit-b", help="encoders of the second set")
    parser.add_argument("--seeds", type=int, default=3, help="probe seeds (0: skip the probes)")
    parser.add_argument("--epochs", type=int, default=20, help="probe epochs")
    parser.add_argument("--lrs", default="3e-3,3e-2", help="the probe's lr grid, the same for every head")
    parser.add_argument("--epoch-epochs", type=int, default=3, help="epochs of the epoch-time measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--noise-floor", default="melpatch",
                        help="encoders whose cases also probe a float32 store, to compare float16 with float32 too")
    parser.add_argument("--probe-threads", type=int, help="torch threads for the probes only (timings keep --threads)")
    parser.add_argument("--workdir", type=Path, help="keep stores and runs here (default: a temporary folder)")
    parser.add_argument("--sets", default="sample,localized", help="which data sets to run (sample, localized)")
    parser.add_argument("--heads", default=",".join(HEADS), help="which heads to probe (default: all clip heads)")
    parser.add_argument("--quick", action="store_true", help="toy sizes: 40 clips of 2 s, small encoders, 1 seed")
    args = parse_args(parser)
    args.lrs = [float(value) for value in args.lrs.split(",")]
    args.heads = args.heads.split(",")
    unknown_heads = set(args.heads) - set(HEADS)
    if unknown_heads:
        parser.error(f"--heads: unknown head(s) {', '.join(sorted(unknown_heads))}; choose from {', '.join(HEADS)}")
    if args.quick:
        args.clips, args.seconds, args.encoders, args.seeds, args.epochs = 40, 2.0, "melpatch,vit-small", 1, 2
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        builders = {"sample": lambda: build_sample_set(root / "sample", n_clips=40 if args.quick else 120),
                    "localized": lambda: build_sample_set(root / "localized", n_clips=args.clips,
                                                          clip_seconds=args.seconds, seed=1)}
        unknown = set(args.sets.split(",")) - set(builders)
        if unknown:
            parser.error(f"--sets: unknown set(s) {', '.join(sorted(unknown))}; choose from sample, localized")
        sets = [(name, builders[name](), ["melpatch"] if name == "sample" else args.encoders.split(","))
                for name in args.sets.split(",")]
        cases = [run_case(root, name, manifest, encoder, args) for name, manifest, encoders in sets
                 for encoder in encoders]
    summary = {"benchmark": "int8_vs_float16_stores", "machine": machine(), "bar_points": BAR_POINTS,
               "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
                            if key != "out"},
               "cases": cases,
               "all_within_bar": all(case["quality"]["within_bar"] for case in cases if "quality" in case)}
    emit(summary, args.out)
    print(markdown(cases), file=sys.stderr)


if __name__ == "__main__":
    main()
