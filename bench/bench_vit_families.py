"""Throughput of the ViT families at their released sizes (random weights) on 10 s clips, and on a GPU the
agreement of GPU fp32 / bf16 / fp16 tokens with the CPU.

    python -m bench.bench_vit_families --batch 4 --repeats 2 --out runs/bench_vit_families.json

No weights are downloaded: each family is built from a state dict of the released shapes (ViT-B: 768-d, 12
blocks, 12 heads) filled by the seeded random init, through the same loader path as a real checkpoint.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from embedcache.encoders.vit import ViTEncoder, init_random_weights
from embedcache.encoders.vit_families import build_from_state

DIM, DEPTH, MLP = 768, 12, 3072


def released_shapes(family: str) -> dict[str, torch.Tensor]:
    """Canonical (remapped) state dict with the released ViT-B shapes of `family`, zero-filled."""
    state = {
        "patch_embed.proj.weight": torch.zeros(DIM, 1, 64, 4)
        if family == "atst_frame"
        else torch.zeros(DIM, 1, 16, 16),
        "patch_embed.proj.bias": torch.zeros(DIM),
    }
    rows = {"audiomae": 513, "ast": 1214, "eat": 6144, "sslam": 6144, "atst_frame": 251}[family]
    state["pos_embed"] = torch.zeros(1, rows, DIM)
    if family != "atst_frame":
        state["cls_token"] = torch.zeros(1, 1, DIM)
    if family == "ast":
        state["dist_token"] = torch.zeros(1, 1, DIM)
    norm = "pre_norm" if family in ("eat", "sslam") else "norm"
    state.update({f"{norm}.weight": torch.ones(DIM), f"{norm}.bias": torch.zeros(DIM)})
    for i in range(DEPTH):
        block = f"blocks.{i}."
        for name, shape in [
            ("norm1.weight", (DIM,)), ("norm1.bias", (DIM,)), ("attn.qkv.weight", (3 * DIM, DIM)),
            ("attn.proj.weight", (DIM, DIM)), ("attn.proj.bias", (DIM,)), ("norm2.weight", (DIM,)),
            ("norm2.bias", (DIM,)), ("mlp.fc1.weight", (MLP, DIM)), ("mlp.fc1.bias", (MLP,)),
            ("mlp.fc2.weight", (DIM, MLP)), ("mlp.fc2.bias", (DIM,)),
        ]:  # fmt: skip
            state[block + name] = torch.zeros(shape)
        if family != "atst_frame":
            state[block + "attn.qkv.bias"] = torch.zeros(3 * DIM)
    return state


def build(family: str) -> ViTEncoder:
    encoder = build_from_state(family, released_shapes(family), f"<{family} ViT-B shapes>", {})
    init_random_weights(encoder.model, seed=0)
    return encoder.eval()


def clips_per_second(encoder: ViTEncoder, wave: torch.Tensor, repeats: int, dtype: torch.dtype | None) -> float:
    device = wave.device.type
    with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        encoder(wave, [-1])  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            encoder(wave, [-1])
        if device == "cuda":
            torch.cuda.synchronize()
    return repeats * wave.shape[0] / (time.perf_counter() - started)


def max_error(encoder: ViTEncoder, wave: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype | None) -> float:
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        tokens = encoder(wave, [-1]).layers[encoder.num_layers - 1].float().cpu()
    return float((tokens - reference).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="audiomae,ast,eat,atst_frame")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gpu-batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    wave = torch.randn(args.batch, 160000, generator=generator) * 0.1
    results = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "families": {}}
    for family in args.families.split(","):
        encoder = build(family)
        row = {
            "grid_10s": list(encoder.token_grid(160000)),
            "prefix": encoder.num_prefix,
            "cpu_fp32_clips_per_s": round(clips_per_second(encoder, wave, args.repeats, None), 3),
        }
        if torch.cuda.is_available():
            with torch.inference_mode():
                reference = encoder(wave[:2], [-1]).layers[encoder.num_layers - 1]
            encoder = encoder.cuda()
            gpu_wave = torch.randn(args.gpu_batch, 160000, generator=generator).cuda() * 0.1
            row["gpu"] = torch.cuda.get_device_name()
            for label, dtype in [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)]:
                row[f"gpu_{label}_max_abs_error_vs_cpu"] = max_error(encoder, wave[:2].cuda(), reference, dtype)
                row[f"gpu_{label}_clips_per_s"] = round(clips_per_second(encoder, gpu_wave, 5, dtype), 1)
        results["families"][family] = row
        print(family, json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
