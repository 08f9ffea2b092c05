"""Every encoder family on a GPU: do its tokens agree with the CPU's (fp32; bf16/fp16 autocast), and how fast is it.

    python -m bench.gpu_encoders --out runs/gpu_encoders.json     # one CUDA GPU: about 3 minutes on an H100
    python -m bench.gpu_encoders --device cpu --quick             # dry run of the same logic on the CPU

Models, all seeded, nothing downloaded:
  fixtures: the official-layout tiny checkpoints of ../shared/fixtures/encoders (BEATs, Dasheng, AST, AudioMAE) on
    their 3 s input; their tokens are also compared with the official code's (`expected_tokens.npy`).
  released: every registered family at its released size (`embedcache.encoders.catalog`) with random weights, on
    10 s clips; --quick shrinks them to 64-d, 2 blocks (same code paths, same grids).
Each model's last-layer tokens (prefix tokens first) on the device are compared with the same model on the CPU:
  fp32   (TF32 off for matmuls and cuDNN convs): max |gpu - cpu| <= 1e-4; the tokens are unit-scale (every family
         normalises its last layer). `fp32_tf32_max_abs` reports PyTorch's default, where cuDNN convs (all patch
         embeddings, BEATs' 128-tap positional conv) run in TF32 (10-bit mantissa), for information.
  bf16 / fp16 autocast: relative RMS error ||gpu - cpu|| / ||cpu|| <= 4e-2 (bf16), 5e-3 (fp16). Why: autocast rounds
         the inputs of ~6 matmuls per block (qkv, attention's two, out proj, fc1, fc2) to 8 (bf16) or 11 (fp16)
         significant bits, relative RMS u / sqrt(3) each with u = 2^-8 or 2^-11; over 12 blocks ~72 independent
         roundings add in quadrature: ~4.9 u = 1.9e-2 (bf16), 2.4e-3 (fp16). The bound is twice that. Measured on the
         CPU (2 cores, released sizes, random weights): bf16 2.8e-3..1.4e-2, fp16 3.5e-4..1.8e-3. Random weights cannot
         show a trained model's outlier activations (fp16 overflow), so a real checkpoint deserves its own check.
Throughput: clips/s of the encoder forward (front end included, last layer) on batches of 10 s clips, fp32 (TF32
off) and bf16 autocast, timed after a warm-up until `--min-seconds` have passed. Prints one JSON; exits 1 if a
check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from embedcache import encoders
from embedcache.encoders.catalog import FAMILIES, VIT_POS_ROWS, build_released_vit
from embedcache.encoders.vit import init_random_weights

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "encoders"
# name -> (file, factory options, (n_time, n_freq) when the official tokens are frequency-major, atol vs official)
# (the atol is each fixture README's suggestion; rtol 1e-4 throughout).
FIXTURE_FILES = {
    "beats": ("beats_tiny.pt", {}, None, 1e-4),
    "dasheng": ("dasheng_tiny.pt", {}, None, 1e-4),
    "ast": ("ast_tiny.pth", {"num_heads": 4}, (101, 12), 2e-4),
    "audiomae": ("audiomae_tiny.pth", {"num_heads": 4}, None, 1e-4),
}
FP32_ATOL = 1e-4
OFFICIAL_RTOL = 1e-4
AUTOCAST_REL_RMS = {"bf16": 4e-2, "fp16": 5e-3}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# --quick: the released families shrunk to 64-d, 2 blocks, 4 heads (grids unchanged).
QUICK_SIZES = {
    "beats": {"encoder_layers": 2, "encoder_embed_dim": 64, "encoder_ffn_embed_dim": 128,
              "encoder_attention_heads": 4},
    "dasheng": {"embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_hidden": 128},
    "whisper": {"n_audio_state": 64, "n_audio_head": 4, "n_audio_layer": 2},
}  # fmt: skip
QUICK_VIT = {"embed_dim": 64, "depth": 2, "mlp_hidden": 128}


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 on or off for CUDA matmuls and cuDNN convolutions inside the block."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch suggests its fp32_precision API; the flags still act
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def released_model(name: str, quick: bool) -> encoders.Encoder:
    """`name` at its released size (tiny with `quick`) with seeded random weights, on the CPU, in eval mode."""
    if name in VIT_POS_ROWS:
        sizes = QUICK_VIT if quick else {"embed_dim": 768, "depth": 12, "mlp_hidden": 3072}
        encoder = build_released_vit(name, device="cpu", **sizes)
        init_random_weights(encoder.model, seed=0)
        return encoder.eval()
    if name == "melpatch":
        return encoders.create(name)
    return encoders.create(name, random_init=True, **(QUICK_SIZES.get(name, {}) if quick else {}))


def noisy_tones(batch: int, num_samples: int, seed: int = 0) -> torch.Tensor:
    """Seeded noise over two tones [batch, num_samples]: every mel band carries energy."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples) / 16000
    tones = 0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.2 * torch.sin(2 * torch.pi * 1000 * t)
    return (0.1 * torch.randn(batch, num_samples, generator=generator) + tones).float()


def last_tokens(encoder: encoders.Encoder, wave: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Prefix + patch tokens of the last layer [B, P + T, D], float32 on the CPU."""
    last = encoder.num_layers - 1
    device = wave.device.type
    with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        output = encoder(wave, [last])
    parts = ([output.prefix[last]] if output.prefix else []) + [output.layers[last]]
    return torch.cat(parts, dim=1).float().cpu()


def errors(reference: torch.Tensor, got: torch.Tensor) -> dict:
    """Max abs error, relative RMS error and the lowest per-token cosine similarity of `got` vs `reference`."""
    diff = got - reference
    cosine = torch.nn.functional.cosine_similarity(got, reference, dim=-1)
    return {
        "max_abs": float(diff.abs().max()),
        "rel_rms": float(diff.norm() / reference.norm()),
        "min_cos": round(float(cosine.min()), 6),
    }


def agreement(encoder: encoders.Encoder, wave: torch.Tensor, device: torch.device) -> dict:
    """The device's fp32 / bf16 / fp16 tokens vs the CPU's fp32 tokens, with pass/fail per check."""
    with tf32(False):
        started = time.perf_counter()
        reference = last_tokens(encoder, wave, None)
        cpu_seconds = time.perf_counter() - started
        encoder.to(device)
        on_device = wave.to(device)
        fp32 = errors(reference, last_tokens(encoder, on_device, None))
    row = {
        # One un-warmed CPU pass: a rough CPU figure beside the GPU's, not a benchmark.
        "cpu_fp32_clips_per_s_first_pass": round(wave.shape[0] / cpu_seconds, 2),
        "fp32_max_abs": fp32["max_abs"],
        "fp32_ok": fp32["max_abs"] <= FP32_ATOL,
    }
    if device.type == "cuda":
        with tf32(True):
            row["fp32_tf32_max_abs"] = errors(reference, last_tokens(encoder, on_device, None))["max_abs"]
    for label, dtype in DTYPES.items():
        with tf32(False):
            found = errors(reference, last_tokens(encoder, on_device, dtype))
        row.update({f"{label}_{key}": value for key, value in found.items()})
        row[f"{label}_ok"] = found["rel_rms"] <= AUTOCAST_REL_RMS[label]
    return row


def clips_per_second(encoder: encoders.Encoder, wave: torch.Tensor, dtype: torch.dtype | None,
                     min_seconds: float, max_iters: int) -> float:
    """Encoder forward throughput on `wave` (already on its device), after one warm-up pass."""
    device = wave.device.type
    last = [encoder.num_layers - 1]

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    with tf32(False), torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.float32,
                                                              enabled=dtype is not None):
        encoder(wave, last)
        sync()
        started, iterations = time.perf_counter(), 0
        while iterations < max_iters and (iterations == 0 or time.perf_counter() - started < min_seconds):
            encoder(wave, last)
            sync()
            iterations += 1
    return iterations * wave.shape[0] / (time.perf_counter() - started)


def check_fixture(name: str, device: torch.device) -> dict:
    """A fixture checkpoint: CPU vs the official tokens, and the device vs the CPU."""
    file, options, freq_major, atol = FIXTURE_FILES[name]
    folder = FIXTURES / name
    encoder = encoders.create(name, checkpoint=str(folder / file), **options)
    wave = torch.from_numpy(np.load(folder / "input.npy"))
    official = torch.from_numpy(np.load(folder / "expected_tokens.npy")).float()  # [1, P + T, D]
    if freq_major:
        n_time, n_freq = freq_major
        prefix, patches = official[:, : encoder.num_prefix], official[:, encoder.num_prefix :]
        patches = patches.reshape(1, n_freq, n_time, -1).transpose(1, 2).reshape(patches.shape)
        official = torch.cat([prefix, patches], dim=1)
    with tf32(False):
        cpu = last_tokens(encoder, wave, None)
    close = torch.isclose(cpu, official, atol=atol, rtol=OFFICIAL_RTOL).all()
    row = {"file": file, "tokens": list(cpu.shape), "cpu_vs_official_max_abs": float((cpu - official).abs().max()),
           "official_atol": atol, "cpu_vs_official_ok": bool(close)}
    row.update(agreement(encoder, wave, device))
    return row


def check_released(name: str, device: torch.device, args: argparse.Namespace, deadline: float) -> dict:
    """A released-size random model: agreement on 2 clips of 10 s, then throughput on `args.batch` clips."""
    encoder = released_model(name, args.quick)
    num_samples = round(10.0 * encoder.sample_rate)
    row = {"grid_10s": list(encoder.token_grid(num_samples)), "prefix": encoder.num_prefix,
           "embed_dim": encoder.embed_dim, "layers": encoder.num_layers}
    row.update(agreement(encoder, noisy_tones(2, num_samples), device))
    if time.perf_counter() > deadline:
        row["throughput"] = "skipped: --budget-s spent"
        return row
    batch = noisy_tones(args.batch, num_samples, seed=1).to(device)
    for label, dtype in [("fp32", None), ("bf16", torch.bfloat16)]:
        rate = clips_per_second(encoder, batch, dtype, args.min_seconds, args.max_iters)
        row[f"{label}_clips_per_s"] = round(rate, 2)
    del encoder, batch
    if device.type == "cuda":
        row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return row


def failures(report: dict) -> list[str]:
    """Every check that failed, as 'section/model/check'."""
    return [
        f"{section}/{name}/{key}"
        for section in ("fixtures", "released")
        for name, row in report[section].items()
        for key, value in row.items()
        if key.endswith("_ok") and value is False
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, or cpu (a dry run: the CPU against itself)")
    parser.add_argument("--quick", action="store_true", help="tiny models, batch 2, one timed pass")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated released families")
    parser.add_argument("--batch", type=int, default=32, help="10 s clips per forward pass when timing")
    parser.add_argument("--min-seconds", type=float, default=1.5, help="time each throughput at least this long")
    parser.add_argument("--max-iters", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=200.0, help="skip further throughput after this long")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.min_seconds, args.max_iters = 2, 0.0, 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: use --device cpu --quick for a dry run")
    started = time.perf_counter()
    report = {
        "benchmark": "gpu_encoders",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "quick": args.quick,
        "batch": args.batch,
        "tolerances": {"fp32_max_abs": FP32_ATOL, "official_rtol": OFFICIAL_RTOL,
                       "autocast_rel_rms": AUTOCAST_REL_RMS},
        "fixtures": {},
        "released": {},
    }
    for name in FIXTURE_FILES:
        if (FIXTURES / name).is_dir():
            report["fixtures"][name] = check_fixture(name, device)
            print(f"fixture {name}: {json.dumps(report['fixtures'][name])}", file=sys.stderr, flush=True)
    deadline = started + args.budget_s
    for name in args.families.split(","):
        report["released"][name] = check_released(name, device, args, deadline)
        print(f"released {name}: {json.dumps(report['released'][name])}", file=sys.stderr, flush=True)
    report["failed"] = failures(report)
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
