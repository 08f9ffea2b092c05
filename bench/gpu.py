"""The GPU benchmarks in one go (bench/gpu.sh runs this), within about 8 minutes on one H100/H200, into one JSON.

    bash bench/gpu.sh                                   # -> runs/gpu_bench.json
    python -m bench.gpu --tiny --out /tmp/gpu_tiny.json # the same logic at toy sizes, on the CPU when no GPU

Phases (each one's result, error or skip reason lands in the JSON, which is rewritten after every phase, so a run
cut short still leaves what it measured):
  extract_forward  clips/s of a ViT-B-sized encoder (the `vit` family with 768-d, 12 blocks, 12 heads, random
                   weights) on 10 s clips, forward only, fp32 (TF32 off) and bf16 autocast
  extract_store    clips/s of `embedcache extract` on generated 10 s wav files, fp32 and bf16 (decode workers on)
  store_write      the as20k-sized synthetic store: 20,000 clips x (512 patch + 1 cls) tokens x 768, float16
  protobin_30      protobin (527 classes, 10 prototypes per class) trained 30 epochs on it, batch 128, in GPU memory,
                   bf16 autocast: load and training seconds (goal: training under 60 s on one H100)
  head_bank        epoch seconds of K = 1 and 16 heads (linear, protobin) in one bank on the same split, and ratio
Peak GPU memory is reported per phase and overall. --budget-s skips phases that would start after it.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import soundfile
import torch

from bench.bench_head_bank import bank_specs
from bench.bench_probe import epoch_seconds
from bench.results import emit, machine, ratio, timed
from bench.synthetic import SyntheticSpec, write_synthetic_store
from embedcache import encoders
from embedcache.extract import ExtractConfig, extract
from embedcache.loader import SplitData
from embedcache.store import TokenStore
from embedcache.train import HeadBank, HeadSpec, TrainConfig

FULL = {
    "vit": {"embed_dim": 768, "depth": 12, "num_heads": 12, "n_mels": 128}, "clip_seconds": 10.0,
    "forward_batch": 64, "forward_batches": 8, "extract_clips": 1024, "extract_batch": 64, "workers": 12,
    "store": SyntheticSpec(n_clips=20_000, grid=(64, 8), embed_dim=768, num_prefix=1, n_classes=527,
                           split_fractions=(1.0, 0.0, 0.0)),
    "prototypes_per_class": 10, "epochs": 30, "batch_size": 128, "bank_epochs": 2, "bank_k": 16,
}
TINY = {
    "vit": {"embed_dim": 64, "depth": 2, "num_heads": 4, "n_mels": 128}, "clip_seconds": 2.0,
    "forward_batch": 2, "forward_batches": 2, "extract_clips": 4, "extract_batch": 2, "workers": 1,
    "store": SyntheticSpec(n_clips=96, grid=(8, 4), embed_dim=32, num_prefix=1, n_classes=12,
                           split_fractions=(1.0, 0.0, 0.0)),
    "prototypes_per_class": 2, "epochs": 2, "batch_size": 32, "bank_epochs": 2, "bank_k": 3,
}


@contextlib.contextmanager
def fp32_exact():
    """TF32 off for matmuls and cuDNN, so "fp32" means float32 arithmetic."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 1e9, 3) if device.type == "cuda" else None


def forward_clips_per_s(sizes: dict, device: torch.device) -> dict:
    """Forward-only clips/s of the ViT-B-sized encoder on 10 s clips, fp32 and bf16 autocast."""
    encoder = encoders.create("vit", random_init=True, **sizes["vit"]).to(device).eval()
    num_samples = int(sizes["clip_seconds"] * encoder.sample_rate)
    wave = torch.randn(sizes["forward_batch"], num_samples, generator=torch.Generator().manual_seed(0)).to(device)
    result = {"grid": list(encoder.token_grid(num_samples)), "batch": sizes["forward_batch"]}
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        autocast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
        with fp32_exact(), torch.inference_mode(), autocast:
            encoder(wave, [-1])  # warm-up (kernels, cuDNN autotune)
            seconds, _ = timed(lambda: [encoder(wave, [-1]) for _ in range(sizes["forward_batches"])])
        result[f"{label}_clips_per_s"] = round(sizes["forward_batches"] * len(wave) / seconds, 1)
    return result


def write_wavs(folder: Path, count: int, seconds: float, sample_rate: int = 16000) -> Path:
    """`count` noise clips of `seconds` as 16-bit wav files and their manifest (two classes, all train)."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["clip_id,path,labels,split"]
    for i in range(count):
        wave = (0.1 * rng.standard_normal(int(seconds * sample_rate))).astype(np.float32)
        soundfile.write(folder / "audio" / f"c{i:05d}.wav", wave, sample_rate, subtype="PCM_16")
        rows.append(f"c{i:05d},audio/c{i:05d}.wav,{'a' if i % 2 else 'b'},train")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


def extract_clips_per_s(sizes: dict, device: torch.device, workdir: Path) -> dict:
    """clips/s of the extract stage (decode workers, forward, chunk writes) in fp32 and bf16 autocast."""
    manifest = write_wavs(workdir / "wavs", sizes["extract_clips"], sizes["clip_seconds"])
    result = {"clips": sizes["extract_clips"], "batch": sizes["extract_batch"], "workers": sizes["workers"]}
    for label, mode in (("fp32", "none"), ("bf16", "bf16")):
        config = ExtractConfig(
            encoder="vit", manifest=str(manifest), out=str(workdir / f"extract_{label}.zarr"), random_init=True,
            encoder_options=dict(sizes["vit"]), batch_size=sizes["extract_batch"], workers=sizes["workers"],
            device=str(device), autocast=mode, progress=False, overwrite=True,
        )
        with fp32_exact():
            report = extract(config)
        result[f"{label}_clips_per_s"] = round(report.clips_per_second, 1)
        result[f"{label}_seconds"] = round(report.seconds, 2)
        shutil.rmtree(workdir / f"extract_{label}.zarr", ignore_errors=True)
    return result


def protobin_30(store: TokenStore, sizes: dict, device: torch.device) -> tuple[dict, SplitData]:
    """Load the train split into GPU memory and train one protobin head for the paper's 30 epochs."""
    load_s, train = timed(SplitData, store, "train", in_memory=True, device=device)
    config = TrainConfig(epochs=sizes["epochs"], batch_size=sizes["batch_size"], device=str(device),
                         warmup_epochs=0.0, data_path="in-memory")
    spec = HeadSpec("protobin", lr=1e-3, options={"prototypes_per_class": sizes["prototypes_per_class"]})
    fit_s, bank = timed(HeadBank([spec], config).fit, train)
    return {
        "train_clips": train.n_clips, "split_gb": round(train.nbytes / 1e9, 3), "load_s": round(load_s, 2),
        "epochs": sizes["epochs"], "train_s": round(fit_s, 2), "epoch_s_fastest": round(epoch_seconds(bank), 3),
        "prototypes": len(store.label_names) * sizes["prototypes_per_class"],
        "final_train_loss": round(bank.curves_[-1]["train_loss"], 5), "goal_s": 60,
        "under_goal": fit_s < 60,
    }, train


def head_bank(train: SplitData, sizes: dict, device: torch.device) -> dict:
    """Fastest-epoch seconds of 1 head vs a bank of K heads, per kind, on the split already in memory."""
    config = TrainConfig(epochs=sizes["bank_epochs"], batch_size=sizes["batch_size"], device=str(device),
                         warmup_epochs=0.0, data_path="in-memory")
    options = {"protobin": {"prototypes_per_class": sizes["prototypes_per_class"]}, "linear": {}}
    result = {"k": sizes["bank_k"], "epochs": sizes["bank_epochs"]}
    for kind in ("linear", "protobin"):
        one = epoch_seconds(HeadBank([HeadSpec(kind, 1e-3, options=options[kind])], config).fit(train))
        bank = epoch_seconds(HeadBank(bank_specs(kind, sizes["bank_k"], options[kind]), config).fit(train))
        result[kind] = {"one_head_epoch_s": round(one, 4), "bank_epoch_s": round(bank, 4),
                        "ratio_bank_vs_one": ratio(bank, one)}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes: check the logic anywhere (CPU without GPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="start no phase after this many seconds")
    parser.add_argument("--phases", default="extract_forward,extract_store,store_write,protobin_30,head_bank")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_bench.json"))
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type != "cuda" and not args.tiny:
        print("bench.gpu: no CUDA device here; pass --tiny for a CPU dry run of the same logic", file=sys.stderr)
        return 2
    sizes = TINY if args.tiny else FULL
    wanted = args.phases.split(",")
    summary: dict = {"benchmark": "gpu", "tiny": args.tiny, "device": str(device), "machine": machine(),
                     "sizes": {k: (v.__dict__ if isinstance(v, SyntheticSpec) else v) for k, v in sizes.items()},
                     "phases": {}}
    started = time.perf_counter()
    scratch = args.workdir or Path(tempfile.mkdtemp(prefix="embedcache_gpu_"))
    scratch.mkdir(parents=True, exist_ok=True)
    state: dict = {}

    def phase(name: str, function, *needs: str) -> None:
        elapsed = time.perf_counter() - started
        if name not in wanted:
            return
        if elapsed > args.budget_s or any(need not in state for need in needs):
            reason = f"over budget ({elapsed:.0f} s > {args.budget_s:.0f} s)" if elapsed > args.budget_s else \
                f"needs {', '.join(need for need in needs if need not in state)}"
            summary["phases"][name] = {"skipped": reason}
        else:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                seconds, result = timed(function)
                summary["phases"][name] = {**result, "phase_s": round(seconds, 2), "peak_gpu_gb": peak_gb(device)}
            except Exception as error:  # noqa: BLE001 - one failed phase must not lose the others' numbers
                summary["phases"][name] = {"error": f"{type(error).__name__}: {error}",
                                           "traceback": traceback.format_exc(limit=4)}
        summary["elapsed_s"] = round(time.perf_counter() - started, 1)
        emit(summary, args.out)

    def store_write() -> dict:
        seconds, store = timed(write_synthetic_store, scratch / "as20k_synthetic.zarr", sizes["store"],
                               dtype="float16", compression="none", device=device, write_threads=8)
        state["store"] = store
        spec = sizes["store"]
        return {"clips": spec.n_clips, "tokens": spec.num_tokens + spec.num_prefix, "embed_dim": spec.embed_dim,
                "classes": spec.n_classes, "gb": round(spec.token_nbytes("float16") / 1e9, 2),
                "write_s": round(seconds, 2)}

    def protobin() -> dict:
        result, state["train"] = protobin_30(state["store"], sizes, device)
        return result

    try:
        phase("extract_forward", lambda: forward_clips_per_s(sizes, device))
        phase("extract_store", lambda: extract_clips_per_s(sizes, device, scratch))
        phase("store_write", store_write)
        phase("protobin_30", protobin, "store")
        phase("head_bank", lambda: head_bank(state["train"], sizes, device), "train")
    finally:
        state.clear()
        if args.workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    peaks = [p["peak_gpu_gb"] for p in summary["phases"].values() if p.get("peak_gpu_gb") is not None]
    summary["peak_gpu_gb"] = max(peaks) if peaks else None
    summary["elapsed_s"] = round(time.perf_counter() - started, 1)
    emit(summary, args.out)
    return 1 if any("error" in p for p in summary["phases"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
