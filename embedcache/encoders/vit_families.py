"""Official-checkpoint ViT families: AudioMAE, AST, EAT, SSLAM, ATST-Frame, ASiT, each a ViTSpec + front end + key
remap."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

from embedcache.checkpoints import find_state_dict, load_checkpoint, sha256_file
from embedcache.encoders.vit import FREQ_FIRST, TIME_FIRST, ViTEncoder, ViTSpec
from embedcache.encoders.vit_checkpoints import REMAPS, Tensors, guess_family
from embedcache.errors import ConfigError
from embedcache.frontends import (
    ASIT_FRAMES,
    KaldiFbankConfig,
    MelDbConfig,
    asit_fbank_config,
    atst_mel_config,
    audioset_fbank_config,
    eat_fbank_config,
)

# Where each family's official file keeps its weights (first match wins; else the top level).
CONTAINERS: dict[str, tuple[str, ...]] = {
    "audiomae": ("model",),
    "ast": ("model", "state_dict"),
    "eat": ("model",),
    "sslam": ("model",),
    "atst_frame": ("state_dict", "teacher"),
    # main_ASiT.py saves {'student', 'teacher', ...}; the EMA teacher is the model to use.
    "asit": ("teacher", "student", "model", "state_dict"),
}

LABELS = {
    "audiomae": "AudioMAE",
    "ast": "AST",
    "eat": "EAT",
    "sslam": "SSLAM",
    "atst_frame": "ATST-Frame",
    "asit": "ASiT",
}


def _require(state: Tensors, keys: list[str], family: str, path: str) -> None:
    missing = [key for key in keys if key not in state]
    if missing:
        raise ConfigError(_wrong_layout(family, path, state, f"missing {missing}"))


def _wrong_layout(family: str, path: str, state: Tensors, problem: str) -> str:
    guess = guess_family(state)
    hint = f"; it looks like a {guess} checkpoint: use --encoder {guess.split()[0]}" if guess else ""
    sample = sorted(state)[:6]
    return f"checkpoint {path}: not a {LABELS[family]} checkpoint ({problem}; its keys start {sample}){hint}"


def _depth(state: Tensors) -> int:
    indices = {int(match.group(1)) for key in state if (match := re.match(r"blocks\.(\d+)\.", key))}
    if not indices or indices != set(range(max(indices) + 1)):
        raise ConfigError(f"transformer blocks are missing or not numbered 0..N-1 (found {sorted(indices)})")
    return max(indices) + 1


def _heads(embed_dim: int, options: dict) -> int:
    # Shapes cannot tell the head count; every released model here uses 64-dim heads.
    heads = int(options.pop("num_heads", 0) or max(1, embed_dim // 64))
    if embed_dim % heads:
        raise ConfigError(f"num_heads={heads} does not divide embed_dim={embed_dim}; pass num_heads")
    return heads


def _common(state: Tensors, options: dict, final_norm_layers: str = "last") -> dict:
    """Sizes every family reads from shapes (embed dim, depth, MLP width, qkv bias) plus heads and
    which returned layers get the final norm (options num_heads, final_norm_layers)."""
    embed_dim = state["patch_embed.proj.weight"].shape[0]
    return {
        "embed_dim": embed_dim,
        "depth": _depth(state),
        "num_heads": _heads(embed_dim, options),
        "mlp_hidden": state["blocks.0.mlp.fc1.weight"].shape[0],
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "final_norm_layers": options.pop("final_norm_layers", final_norm_layers),
    }


def audiomae_spec(state: Tensors, frontend: KaldiFbankConfig, options: dict) -> ViTSpec:
    """AudioMAE: time-first 16x16 patches, cls with table row 0, stored sin-cos table, pre-LN, final norm."""
    kernel = tuple(state["patch_embed.proj.weight"].shape[2:])
    n_freq = frontend.num_mel_bins // kernel[1]
    rows = state["pos_embed"].shape[1] - 1
    return ViTSpec(
        **_common(state, options),
        n_freq_bins=frontend.num_mel_bins,
        final_norm="norm.weight" in state,
        input_layout=TIME_FIRST,
        patch=kernel,
        stride=kernel,
        prefix=("cls",),
        prefix_pos=True,
        pos_grid=(rows // n_freq, n_freq),
    )


def ast_spec(state: Tensors, frontend: KaldiFbankConfig, options: dict) -> ViTSpec:
    """AST: freq-first 16x16 patches at stride 10 (overlapping), cls + dist with table rows, pre-LN, final norm."""
    kernel_f, kernel_t = state["patch_embed.proj.weight"].shape[2:]
    stride_f, stride_t = int(options.pop("fstride", 10)), int(options.pop("tstride", 10))
    n_freq = (frontend.num_mel_bins - kernel_f) // stride_f + 1
    n_time = (frontend.target_frames - kernel_t) // stride_t + 1
    rows = state["pos_embed"].shape[1] - 2
    if rows != n_freq * n_time:
        raise ConfigError(
            f"AST: the position table has {rows} patch rows but fstride={stride_f}, tstride={stride_t}, "
            f"target_frames={frontend.target_frames} give {n_freq} x {n_time}; pass the fstride/tstride/"
            "target_frames the model was trained with"
        )
    return ViTSpec(
        **_common(state, options),
        n_freq_bins=frontend.num_mel_bins,
        input_layout=FREQ_FIRST,
        patch=(kernel_t, kernel_f),
        stride=(stride_t, stride_f),
        prefix=("cls", "dist"),
        prefix_pos=True,
        pos_grid=(n_time, n_freq),
    )


def eat_spec(state: Tensors, frontend: KaldiFbankConfig, options: dict) -> ViTSpec:
    """EAT/SSLAM: time-first 16x16, cls without position, sin-cos rows sliced in time, post-LN after an input LN."""
    kernel = tuple(state["patch_embed.proj.weight"].shape[2:])
    n_freq = frontend.num_mel_bins // kernel[1]
    if state["cls_token"].shape[1] != 1:
        raise ConfigError(f"EAT: expected one extra (cls) token, found {state['cls_token'].shape[1]}")
    rows = state["pos_embed"].shape[1]
    # layer_norm_first=False (the released models): LN on the input, post-LN blocks, no final norm.
    post_ln = "pre_norm.weight" in state
    return ViTSpec(
        **_common(state, options),
        n_freq_bins=frontend.num_mel_bins,
        post_ln=post_ln,
        input_norm=post_ln,
        final_norm="norm.weight" in state,
        input_layout=TIME_FIRST,
        patch=kernel,
        stride=kernel,
        prefix=("cls",),
        prefix_pos=False,
        pos_grid=(rows // n_freq, n_freq),
    )


def atst_frame_spec(state: Tensors, frontend: MelDbConfig, options: dict) -> ViTSpec:
    """ATST-Frame: freq-first 64x4 patches, no prefix, learned table used from row 1, pre-LN, no qkv bias,
    `norm_frame` on every returned layer (as the official get_intermediate_layers), 1001-frame chunks."""
    kernel_f, kernel_t = state["patch_embed.proj.weight"].shape[2:]
    rows = state["pos_embed"].shape[1] - 1
    return ViTSpec(
        **_common(state, options, final_norm_layers="all"),
        n_freq_bins=frontend.n_mels,
        input_layout=FREQ_FIRST,
        patch=(kernel_t, kernel_f),
        stride=(kernel_t, kernel_f),
        prefix=(),
        prefix_pos=False,
        pos_grid=(rows, 1),
        pos_offset=1,
        chunk_frames=int(options.pop("chunk_frames", 1 + rows * kernel_t)),
    )


def asit_spec(state: Tensors, frontend: KaldiFbankConfig, options: dict) -> ViTSpec:
    """ASiT: AudioMAE's layout (time-first 16x16 patches, cls with table row 0, pre-LN, final norm) with a learned
    table sized for the trained input; `target_frames` may use fewer time patches than the table, never more."""
    spec = audiomae_spec(state, frontend, options)
    rows, n_freq = state["pos_embed"].shape[1] - 1, spec.pos_grid[1]
    if rows % n_freq:
        raise ConfigError(f"the position table has {rows} patch rows, not a multiple of {n_freq} frequency patches")
    n_time = spec.grid(frontend.target_frames)[0]
    if not 1 <= n_time <= spec.pos_grid[0]:
        raise ConfigError(
            f"target_frames={frontend.target_frames} gives {n_time} time patches but the position table covers "
            f"1..{spec.pos_grid[0]} ({spec.pos_grid[0] * spec.patch[0]} frames); pass a target_frames in that range"
        )
    return spec


def asit_trained_frames(state: Tensors, raw: dict | None) -> int:
    """The input length ASiT was pre-trained on: the saved `args.num_frames`, else what its position table covers."""
    frames = getattr((raw or {}).get("args"), "num_frames", None)
    if frames:
        return int(frames)
    kernel_t, kernel_f = state["patch_embed.proj.weight"].shape[2:]
    n_freq = asit_fbank_config().num_mel_bins // kernel_f
    return (state["pos_embed"].shape[1] - 1) // n_freq * kernel_t


SpecBuilder = Callable[[Tensors, "KaldiFbankConfig | MelDbConfig", dict], ViTSpec]

FAMILIES: dict[str, tuple[SpecBuilder, list[str]]] = {
    "audiomae": (audiomae_spec, ["patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.0.mlp.fc1.weight"]),
    "ast": (ast_spec, ["patch_embed.proj.weight", "cls_token", "dist_token", "pos_embed", "blocks.0.mlp.fc1.weight"]),
    "eat": (eat_spec, ["patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.0.mlp.fc1.weight"]),
    "sslam": (eat_spec, ["patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.0.mlp.fc1.weight"]),
    "atst_frame": (atst_frame_spec, ["patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight"]),
    "asit": (asit_spec, ["patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.0.mlp.fc1.weight"]),
}


def default_frontend(family: str, options: dict) -> KaldiFbankConfig | MelDbConfig:
    """The official front end of `family`; `target_frames` (Kaldi families) may be overridden."""
    if family == "atst_frame":
        return atst_mel_config()
    target = options.pop("target_frames", ASIT_FRAMES if family == "asit" else 1024)
    target = None if target is None else int(target)
    if family in ("eat", "sslam"):
        if target is not None and target % 16:
            raise ConfigError(f"{LABELS[family]}: target_frames={target} must be a multiple of 16")
        return eat_fbank_config(target)
    if target is None:
        raise ConfigError(f"{LABELS[family]}: needs a fixed target_frames (its position table has a fixed size)")
    if family == "asit":
        return asit_fbank_config(target)
    return audioset_fbank_config(target)


class ASiTEncoder(ViTEncoder):
    """ASiT as a fixed-length ViT whose clip semantics say why clips past its trained input are cropped."""

    def clip_semantics(self) -> dict:
        semantics = super().clip_semantics()
        window = math.floor(self.max_input_samples() / self.sample_rate * 100) / 100
        semantics["crop"] += (
            "; the official code has no recipe for longer inputs (pre-training cuts 6 s crops to "
            f"{self.target_frames} frames), so they are cropped like AudioMAE/AST; --window {window:g} encodes long "
            "recordings as consecutive windows"
        )
        return semantics


def load_weights(encoder: ViTEncoder, state: Tensors, family: str, path: str) -> None:
    """Copy `state` into the encoder's transformer, naming every unknown, missing or mis-shaped key."""
    expected = encoder.model.state_dict()
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    if unknown or missing:
        parts = ([f"unknown keys {unknown[:8]}"] if unknown else []) + (
            [f"missing keys {missing[:8]}"] if missing else []
        )
        raise ConfigError(_wrong_layout(family, path, state, "; ".join(parts)))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape
    ]
    if shapes:
        raise ConfigError(f"checkpoint {path}: {LABELS[family]} tensors with unexpected shapes: {shapes[:4]}")
    encoder.model.load_state_dict({key: value.float() for key, value in state.items()})


def create_family(family: str, checkpoint: str | None = None, random_init: bool = False, **options) -> ViTEncoder:
    """Build `family` from its official checkpoint file (or, for tests, a state dict already in memory)."""
    if checkpoint is None:
        raise ConfigError(
            f"encoder {family!r} needs its official weights: pass --checkpoint PATH "
            "(for a random-weight ViT use --encoder vit --random-init)"
        )
    if random_init:
        raise ConfigError(f"encoder {family!r}: --random-init and --checkpoint exclude each other")
    path = str(checkpoint)
    raw = load_checkpoint(path)
    state = REMAPS[family](find_state_dict(raw, path, CONTAINERS[family]))
    return build_from_state(family, state, path, options, raw=raw, sha256=sha256_file(path))


def build_from_state(
    family: str, state: Tensors, path: str, options: dict, raw: dict | None = None, sha256: str | None = None
) -> ViTEncoder:
    """Infer the spec from canonical `state`, build the encoder and load the weights."""
    options = dict(options)
    builder, required = FAMILIES[family]
    _require(state, required, family, path)
    if family == "audiomae" and raw is not None and "target_frames" not in options:
        # AudioMAE saves its training args: use the length it was trained on.
        target = getattr(raw.get("args"), "target_length", None)
        if target:
            options["target_frames"] = int(target)
    if family == "asit" and "target_frames" not in options:
        options["target_frames"] = asit_trained_frames(state, raw)
    frontend = default_frontend(family, options)
    try:
        spec = builder(state, frontend, options)
    except ConfigError as error:
        raise ConfigError(f"checkpoint {path}: {LABELS[family]}: {error}") from None
    if options:
        raise ConfigError(f"encoder {family!r}: unknown option(s) {sorted(options)}")
    provenance = {"random_init": False, "checkpoint": str(Path(path).name), "checkpoint_sha256": sha256}
    encoder = (ASiTEncoder if family == "asit" else ViTEncoder)(family, spec, frontend, provenance)
    load_weights(encoder, state, family, path)
    return encoder


def create_audiomae(checkpoint: str | None = None, random_init: bool = False, **options) -> ViTEncoder:
    """AudioMAE from `checkpoint` (pre-trained `{'model', 'args', ...}` or fine-tuned)."""
    return create_family("audiomae", checkpoint, random_init, **options)


def create_ast(checkpoint: str | None = None, random_init: bool = False, **options) -> ViTEncoder:
    """AST from its released DataParallel state dict; options fstride, tstride, target_frames."""
    return create_family("ast", checkpoint, random_init, **options)


def create_eat(checkpoint: str | None = None, random_init: bool = False, **options) -> ViTEncoder:
    """EAT from a fairseq checkpoint (pre-trained or AS-fine-tuned); option target_frames (multiple of 16)."""
    return create_family("eat", checkpoint, random_init, **options)


def create_sslam(checkpoint: str | None = None, random_init: bool = False, **options) -> ViTEncoder:
    """SSLAM (EAT architecture and front end) from a fairseq checkpoint."""
    return create_family("sslam", checkpoint, random_init, **options)


def create_atst_frame(checkpoint: str | None = None, random_init: bool = False, **options) -> ViTEncoder:
    """ATST-Frame from its Lightning .ckpt (teacher encoder); options final_norm_layers, chunk_frames."""
    return create_family("atst_frame", checkpoint, random_init, **options)


def create_asit(checkpoint: str | None = None, random_init: bool = False, **options) -> ViTEncoder:
    """ASiT from a main_ASiT.py checkpoint (`teacher` with `backbone.` keys; else the DDP `student`, or a bare
    backbone), at 32 kHz.

    Option target_frames: the fbank is zero-padded or cropped to it in the log domain (default: the length it was
    trained on, `args.num_frames` or what the position table covers: 592 frames = 5.935 s for the released shapes,
    37 x 8 patches + cls). Longer clips are cropped to it, as `extract` reports: the official code gives no recipe
    for longer inputs; use `extract --window` for long recordings. Smaller values use the table's first time rows.
    """
    return create_family("asit", checkpoint, random_init, **options)
