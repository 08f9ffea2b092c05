"""protobin's forward similarity on int8 tokens: float GEMM vs int8 GEMM (torch._int_mm), side by side on the CPU.

    python -m bench.bench_int8_gemm --threads 1 --out runs/bench_int8_gemm.json

On an int8 store a token is codes x a positive scale, and protobin's prototypes are +-1, so the cosine of a token to
a prototype is (codes . signs) / (||codes|| sqrt(D)): the scale cancels and the dot products are one int8 x int8 ->
int32 GEMM, exact. Per shape [B, T, D] x J prototypes, fastest of --repeats:
  gemm       the bare [B*T, D] x [D, J] products: float32 matmul of float tokens vs torch._int_mm of the codes
             (and a float32 matmul of the int8 values, the "float GEMM on int8-valued tensors" option);
  forward    the whole max-cosine forward the head runs (float path: normalise, matmul, mask, max; int8 path:
             inverse norms of the codes, _int_mm, scale, mask, max), in the eval mode predict uses;
  epoch      protobin at 3 lrs in one bank on an int8 store of planted events, int8 GEMM on and off (HeadBank,
             in memory): the fastest epoch after the first, and the lr each path would choose on validation.
The int8 GEMM's outputs are checked equal to the float GEMM on the same integer values (exactly), and the forward
scores to the float path's (to 1e-5). CUDA's torch._int_mm is not measured here (no GPU in that session).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.bench_probe import epoch_seconds as fastest_epoch
from bench.results import emit, machine, parse_args, ratio
from bench.synthetic import SyntheticSpec, write_synthetic_store
from embedcache.heads import prototype
from embedcache.heads.base import TokenBatch
from embedcache.loader import SplitData
from embedcache.store import layout
from embedcache.train import HeadBank, HeadSpec, TrainConfig

# (name, B, T, D, J): the sample's melpatch batch, a ViT-B batch of 4 s clips, an AudioSet-like class count.
SHAPES = [
    ("melpatch sample, 6 classes x 20", 32, 124, 256, 120),
    ("ViT-B 4 s clips, 6 classes x 20", 32, 192, 768, 120),
    ("ViT-B 10 s clips, 50 classes x 20", 32, 496, 768, 1000),
]


def best_of(repeats: int, call) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def measure_shape(name: str, size: int, length: int, dim: int, count: int, repeats: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(size, length, dim, generator=generator)
    mask = torch.rand(size, length, generator=generator) > 0.1
    codes, scales = layout.quantize(tokens)
    dequantised = layout.dequantize(codes, scales)
    signs = prototype.binarize(torch.randn(count, dim, generator=generator)).detach()
    flat_codes = codes.reshape(-1, dim)
    flat_float = torch.nn.functional.normalize(dequantised, dim=-1).reshape(-1, dim)
    unit = torch.nn.functional.normalize(signs, dim=-1)
    int_signs = signs.to(torch.int8)
    codes_as_float, signs_as_float = flat_codes.float(), signs
    exact = torch.equal(torch._int_mm(flat_codes, int_signs.t().contiguous()).float(),
                        codes_as_float @ signs_as_float.t())
    gemm = {
        "float32_s": best_of(repeats, lambda: flat_float @ unit.t()),
        "int8_int_mm_s": best_of(repeats, lambda: torch._int_mm(flat_codes, int_signs.t().contiguous())),
        "float32_on_int8_values_s": best_of(repeats, lambda: flat_codes.float() @ signs_as_float.t()),
    }
    gemm["ratio_float32_vs_int8"] = ratio(gemm["float32_s"], gemm["int8_int_mm_s"])

    def forward(batch_of):
        def run():
            with torch.no_grad():
                batch = batch_of()  # a fresh batch each call: nothing cached between repeats
                return prototype.binary_prototype_scores(batch, signs)
        return run

    float_batch = lambda: TokenBatch(dequantised, mask)  # noqa: E731
    int8_batch = lambda: TokenBatch(dequantised, mask, codes=codes)  # noqa: E731
    agree = float((forward(float_batch)() - forward(int8_batch)()).abs().max())
    whole = {"float_path_s": best_of(repeats, forward(float_batch)),
             "int8_path_s": best_of(repeats, forward(int8_batch))}
    whole["ratio_float_vs_int8"] = ratio(whole["float_path_s"], whole["int8_path_s"])
    return {"shape": name, "B": size, "T": length, "D": dim, "J": count, "int_mm_exact": exact,
            "forward_max_abs_difference": agree, "gemm": gemm, "forward": whole}


def epoch_times(workdir: Path, clips: int, grid: tuple[int, int], dim: int, classes: int, epochs: int) -> dict:
    """protobin at three lrs in one bank on an int8 store of planted events (bench.synthetic), int8 GEMM on and off:
    the fastest epoch after the first, every lr's validation mAP, and the lr each would choose."""
    spec = SyntheticSpec(n_clips=clips, grid=grid, embed_dim=dim, n_classes=classes, event_strength=10.0,
                         split_fractions=(0.6, 0.4, 0.0))
    store = write_synthetic_store(workdir / "gemm_int8.zarr", spec, dtype="int8")
    config = TrainConfig(epochs=epochs, batch_size=32, device="cpu")
    lrs = (1e-3, 1e-2, 1e-1)
    specs = [HeadSpec("protobin", lr=lr, weight_decay=1e-4, seed=0) for lr in lrs]
    result = {}
    for label, devices in (("int8_gemm", ("cpu",)), ("float_path", ())):
        prototype.INT8_GEMM_DEVICES = devices
        bank = HeadBank(specs, config).fit(SplitData(store, "train"), SplitData(store, "valid"))
        result[f"{label}_epoch_s"] = fastest_epoch(bank)
        valid = [round(metrics["map"], 4) for metrics in bank.valid_metrics_]
        result[f"{label}_valid_map_per_lr"] = valid
        result[f"{label}_chosen_lr"] = lrs[int(np.argmax(valid))]
    prototype.INT8_GEMM_DEVICES = ("cpu",)
    result["same_choice"] = result["int8_gemm_chosen_lr"] == result["float_path_chosen_lr"]
    result["ratio_float_vs_int8"] = ratio(result["float_path_epoch_s"], result["int8_gemm_epoch_s"])
    result.update({"clips": clips, "grid": list(grid), "embed_dim": dim, "classes": classes, "epochs": epochs,
                   "lrs": list(lrs), "heads_per_bank": len(specs)})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    args = parse_args(parser)
    shapes = [measure_shape(*shape, repeats=args.repeats) for shape in SHAPES]
    with tempfile.TemporaryDirectory() as tmp:
        epoch = epoch_times(Path(tmp), 512, (24, 8), 768, 6, args.epochs)
    emit({"benchmark": "int8_gemm_protobin", "machine": machine(), "device": "cpu", "shapes": shapes,
          "protobin_epoch": epoch}, args.out)


if __name__ == "__main__":
    main()
