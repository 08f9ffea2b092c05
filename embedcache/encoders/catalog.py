"""What each encoder family takes in and gives out at its released size (input config, token grid, sizes), no weights.

Every entry builds the family's real encoder class through its own factory or spec builder, with parameters on the
meta device (no memory, no initialisation) and front ends on the CPU, and reads everything from that object: no
sizes or grids are repeated here. The only numbers here are the released ViT families' tensor shapes, which their
loaders otherwise read from the checkpoint file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from embedcache import encoders
from embedcache.encoders.base import Encoder
from embedcache.errors import EmbedcacheError

# Released ViT-B checkpoints (AudioMAE, AST, EAT/SSLAM, ATST-Frame, ASiT): width, depth, MLP width.
VIT_B = {"embed_dim": 768, "depth": 12, "mlp_hidden": 3072}
# Rows of each released file's position table (after the key remap): AudioMAE cls + 64 x 8; AST cls + dist +
# 12 x 101; EAT/SSLAM the 768 x 8 sin-cos table, no cls row; ATST-Frame an unused slot + 250 time patches; ASiT
# cls + 37 x 8 (592 frames).
VIT_POS_ROWS = {"audiomae": 513, "ast": 1214, "eat": 6144, "sslam": 6144, "atst_frame": 251, "asit": 297}


def released_vit_state(
    family: str, embed_dim: int = 768, depth: int = 12, mlp_hidden: int = 3072, device: str = "meta"
) -> dict[str, torch.Tensor]:
    """A canonical (remapped) state dict with the shapes of `family`'s released file (zeros; norms ones).

    Smaller `embed_dim`/`depth`/`mlp_hidden` keep the file's patch kernel and position rows, hence its token grid.
    """
    if family not in VIT_POS_ROWS:
        raise ValueError(f"released_vit_state: {family!r} is not one of {sorted(VIT_POS_ROWS)}")
    dim = embed_dim
    kernel = (64, 4) if family == "atst_frame" else (16, 16)
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.proj.weight": (dim, 1, *kernel),
        "patch_embed.proj.bias": (dim,),
        "pos_embed": (1, VIT_POS_ROWS[family], dim),
    }
    if family != "atst_frame":
        shapes["cls_token"] = (1, 1, dim)
    if family == "ast":
        shapes["dist_token"] = (1, 1, dim)
    # EAT/SSLAM (post-LN) normalise the input instead of the output.
    norm = "pre_norm" if family in ("eat", "sslam") else "norm"
    shapes[f"{norm}.weight"] = shapes[f"{norm}.bias"] = (dim,)
    for i in range(depth):
        block = f"blocks.{i}."
        shapes.update({
            block + "norm1.weight": (dim,), block + "norm1.bias": (dim,),
            block + "attn.qkv.weight": (3 * dim, dim), block + "attn.proj.weight": (dim, dim),
            block + "attn.proj.bias": (dim,), block + "norm2.weight": (dim,), block + "norm2.bias": (dim,),
            block + "mlp.fc1.weight": (mlp_hidden, dim), block + "mlp.fc1.bias": (mlp_hidden,),
            block + "mlp.fc2.weight": (dim, mlp_hidden), block + "mlp.fc2.bias": (dim,),
        })  # fmt: skip
        if family != "atst_frame":  # ATST-Frame's qkv has no bias
            shapes[block + "attn.qkv.bias"] = (3 * dim,)
    return {
        key: (torch.ones if key.endswith("norm.weight") else torch.zeros)(shape, device=device)
        for key, shape in shapes.items()
    }


def build_released_vit(family: str, device: str = "meta", **sizes) -> Encoder:
    """`family` built by its own loader from a released-shape state dict (`sizes` shrink it; grid unchanged)."""
    from embedcache.encoders.vit_families import build_from_state

    state = released_vit_state(family, device=device, **sizes)
    return build_from_state(family, state, f"<released {family} shapes>", {})


@dataclass(frozen=True)
class Family:
    """One catalog row: which released model the sizes are those of, what weights it needs, how to build it."""

    name: str
    model: str
    weights: str
    build: Callable[[], Encoder]


def _registry(name: str, random_init: bool) -> Callable[[], Encoder]:
    return lambda: encoders.create(name, random_init=random_init)


def _vit(family: str) -> Callable[[], Encoder]:
    return lambda: build_released_vit(family, **VIT_B)


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in [
        Family("audiomae", "AudioMAE ViT-B/16 (AS-2M pretrained.pth)", "--checkpoint", _vit("audiomae")),
        Family("ast", "AST ViT-B/16, fstride = tstride = 10 (audioset_10_10)", "--checkpoint", _vit("ast")),
        Family("eat", "EAT-base (ViT-B/16)", "--checkpoint", _vit("eat")),
        Family("sslam", "SSLAM (EAT-base architecture)", "--checkpoint", _vit("sslam")),
        Family("atst_frame", "ATST-Frame base (ViT-B, 64 x 4 patches)", "--checkpoint", _vit("atst_frame")),
        Family("asit", "ASiT ViT-B/16 (32 kHz, 592-frame input)", "--checkpoint", _vit("asit")),
        Family("beats", "BEATs iter3+ (AS2M)", "--checkpoint or --random-init", _registry("beats", True)),
        Family("dasheng", "dasheng-base", "--checkpoint or --random-init", _registry("dasheng", True)),
        Family("whisper", "Whisper tiny.en (the [demo] extra)", "--checkpoint or --random-init",
               _registry("whisper", True)),
        Family("melpatch", "log-mel patches (no weights)", "none", _registry("melpatch", False)),
        Family("vit", "small random ViT (64-d, 2 blocks)", "--random-init only", _registry("vit", True)),
    ]
}


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Inside: every new nn.Parameter lives on the meta device (shape only, init is a no-op); buffers stay real."""
    # Patches nn.Module.register_parameter while active: fine for a CLI listing, not for concurrent model building.
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def clip_policy(encoder: Encoder) -> str:
    """How `encoder` fits a clip's length, in one line, from the semantics it records in a store's provenance."""
    semantics = encoder.clip_semantics()
    if semantics.get("length") == "fixed":
        limit = encoder.max_input_samples() / encoder.sample_rate
        head = f"fixed input ({semantics.get('input_frames')} frames, {limit:.3f} s); padding: {semantics['padding']}"
    else:
        head = f"any length; padding: {semantics['padding']}"
    parts = [head]
    if semantics.get("chunking", "none") != "none":
        parts.append(f"chunks: {semantics['chunking']}")
    parts.append(f"mask: {semantics['mask']}")
    if semantics.get("crop", "none") != "none":
        parts.append(f"crop: {semantics['crop']}")
    return "; ".join(parts)


def describe_encoder(encoder: Encoder, seconds: float = 10.0) -> dict:
    """Input config, token grid, prefix tokens and sizes of a built `encoder` for a clip of `seconds` (a
    fixed-length encoder crops it to its input first, as extract does)."""
    num_samples = round(seconds * encoder.sample_rate)
    limit = encoder.max_input_samples()
    if limit is not None:
        num_samples = min(num_samples, limit)
    n_time, n_freq = encoder.token_grid(num_samples)
    frontend = encoder.frontend_config()
    return {
        "sample_rate": encoder.sample_rate,
        "frontend": frontend.get("kind", "?"),
        "n_mels": frontend.get("num_mel_bins", frontend.get("n_mels")),
        "frontend_config": frontend,
        "max_input_seconds": None if limit is None else limit / encoder.sample_rate,
        "min_seconds": encoder.min_samples() / encoder.sample_rate,
        "clip_semantics": encoder.clip_semantics(),
        "clip_policy": clip_policy(encoder),
        "seconds": seconds,
        "grid": [n_time, n_freq],
        "tokens": n_time * n_freq,
        "valid_tokens": encoder.valid_tokens(num_samples, num_samples),
        "prefix": encoder.num_prefix,
        "embed_dim": encoder.embed_dim,
        "layers": encoder.num_layers,
    }


def describe(name: str, seconds: float = 10.0) -> dict:
    """Catalog row for `name` at its released size; registered user encoders are tried with random_init=True."""
    family = FAMILIES.get(name)
    row = {
        "name": name,
        "model": family.model if family else "user-registered",
        "weights": family.weights if family else "see its factory",
    }
    build = family.build if family else _registry(name, True)
    try:
        with parameters_on_meta():
            encoder = build()
    except EmbedcacheError as error:
        # A user encoder that cannot be built without its checkpoint is listed by name with the reason.
        return {**row, "error": str(error)}
    return {**row, **describe_encoder(encoder, seconds)}


def catalog(seconds: float = 10.0) -> list[dict]:
    """One `describe` row for every available encoder name, in registry order."""
    return [describe(name, seconds) for name in encoders.available()]


def format_catalog(rows: list[dict]) -> str:
    """A plain-text table of `catalog` rows."""
    seconds = rows[0]["seconds"] if rows and "seconds" in rows[0] else 10.0
    header = ["encoder", "model", "sr", "front end", "mels", f"grid@{seconds:g}s", "tokens", "prefix", "dim",
              "layers", "weights"]
    table = [header]
    policies = []
    for row in rows:
        if "error" in row:
            table.append([row["name"], row["model"], *["-"] * 8, row["weights"]])
            policies.append(f"{row['name']}: {row['error']}")
            continue
        table.append([
            row["name"], row["model"], str(row["sample_rate"]), row["frontend"], str(row["n_mels"]),
            f"{row['grid'][0]} x {row['grid'][1]}", str(row["tokens"]), str(row["prefix"]), str(row["embed_dim"]),
            str(row["layers"]), row["weights"],
        ])
        semantics = row["clip_semantics"]
        limit = row["max_input_seconds"]
        length = f"fixed input of {limit:.3f} s" if limit is not None else "any length"
        policies.append(f"{row['name']}: {length}, shortest clip {row['min_seconds'] * 1000:.0f} ms")
        keys = ("padding", "crop", "chunking", "mask")
        policies += [f"    {key}: {semantics[key]}" for key in keys if key in semantics]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in table]
    return "\n".join(lines + ["", "clip semantics (grid is n_time x n_freq):", *(f"  {p}" for p in policies)])
