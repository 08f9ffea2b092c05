"""BEATs (microsoft/unilm `beats/`) in plain PyTorch, loaded from the official `{'cfg', 'model'}` checkpoints.

Architecture: Kaldi fbank (x 2^15, povey) -> Conv2d 16x16 patches [B, T'*F', 512] -> LayerNorm -> Linear -> grouped,
weight-normed Conv1d positional embedding over the flattened sequence -> LayerNorm -> post-LN DeepNorm blocks whose
attention adds a T5-style bucketed relative position bias (one table shared by all layers), gated per layer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from embedcache.encoders.base import Encoder, EncoderOutput
from embedcache.errors import ConfigError
from embedcache.events import TimeSteps
from embedcache.frontends import KaldiFbank, beats_fbank_config

# cfg entries that only matter for training or for the fine-tuned classifier head.
_TRAINING_ONLY_CFG = frozenset(
    {
        "dropout",
        "attention_dropout",
        "activation_dropout",
        "encoder_layerdrop",
        "dropout_input",
        "layer_wise_gradient_decay_ratio",
        "finetuned_model",
        "predictor_dropout",
        "predictor_class",
    }
)


@dataclass(frozen=True)
class BeatsConfig:
    """Architecture of a BEATs model; the defaults are the values stored in BEATs_iter3_plus_AS2M.pt.

    (The official `BEATsConfig` class defaults differ, e.g. max_distance=1280 and deep_norm=False, which is why a
    checkpoint's `cfg` is always read instead.)
    """

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    deep_norm: bool = True
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True

    def __post_init__(self):
        if self.activation_fn != "gelu":
            raise ConfigError(f"BEATs cfg: activation_fn {self.activation_fn!r} is not supported (only 'gelu')")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ConfigError(
                f"BEATs cfg: encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                f"encoder_attention_heads {self.encoder_attention_heads}"
            )

    @classmethod
    def from_checkpoint_cfg(cls, cfg: Mapping, source: str) -> BeatsConfig:
        """Read a checkpoint's `cfg` dict; every architecture field must be present, unknown fields are refused."""
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - fields - _TRAINING_ONLY_CFG)
        if unknown:
            raise ConfigError(f"{source}: BEATs cfg has fields this loader does not know: {', '.join(unknown)}")
        missing = sorted(fields - set(cfg))
        if missing:
            raise ConfigError(
                f"{source}: BEATs cfg lacks {', '.join(missing)}; the official class defaults differ from the "
                "released models, so they are not guessed: add them to ckpt['cfg']"
            )
        return cls(**{name: cfg[name] for name in fields})

    @property
    def deep_norm_alpha(self) -> float:
        """Residual scale of the post-LN blocks: (2 * layers)^(1/4) with DeepNorm, else 1."""
        return (2.0 * self.encoder_layers) ** 0.25 if self.deep_norm else 1.0


def relative_position_buckets(
    query_length: int, key_length: int, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """Bidirectional T5 buckets [query_length, key_length] of (key index - query index) on the flat sequence."""
    relative = torch.arange(key_length)[None, :] - torch.arange(query_length)[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).long() * half
    distance = relative.abs()
    max_exact = half // 2
    # Distances past max_exact share logarithmically wider buckets up to max_distance.
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


def weight_norm_weight(weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
    """Weight of a legacy `weight_norm(conv, dim=2)`: g * v / ||v||, the norm taken per kernel tap."""
    return weight_g * weight_v / weight_v.norm(dim=(0, 1), keepdim=True)


class ConvPositionalEmbedding(nn.Module):
    """Grouped Conv1d over the token sequence [B, N, D] (weight-normed, same length for odd/even kernels) + GELU."""

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        if dim % groups:
            raise ConfigError(f"BEATs cfg: encoder_embed_dim {dim} is not divisible by conv_pos_groups {groups}")
        self.kernel, self.groups = kernel, groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.randn(dim, dim // groups, kernel) * 0.02)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = weight_norm_weight(self.weight_g, self.weight_v)
        y = F.conv1d(x.transpose(1, 2), weight, self.bias, padding=self.kernel // 2, groups=self.groups)
        if self.kernel % 2 == 0:
            y = y[:, :, :-1]  # padding k//2 on both sides yields one step too many for an even kernel
        return F.gelu(y).transpose(1, 2)


class BeatsAttention(nn.Module):
    """Multi-head self-attention with an additive relative position bias, optionally gated by the query."""

    def __init__(self, dim: int, num_heads: int, relative: bool, gated: bool, num_buckets: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gated = relative and gated
        if self.gated:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, num_heads, 1, 1))

    def forward(
        self, x: torch.Tensor, position_bias: torch.Tensor | None, padding: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x [B, N, D]; position_bias [H, N, N]; padding [B, 1, 1, N] additive key mask (-inf on padded keys)."""
        batch, length, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, H, N, hd]
            return t.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        mask = None
        if position_bias is not None:  # [H, N, N]
            mask = position_bias.unsqueeze(0).to(q.dtype)
            if self.gated:
                # The gate reads the unscaled query: [B, H, N, 8] -> two sigmoid gates [B, H, N, 1].
                gates = torch.sigmoid(self.grep_linear(q).view(batch, self.num_heads, length, 2, 4).sum(-1))
                gate_a, gate_b = gates.chunk(2, dim=-1)
                mask = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * mask
        if padding is not None:
            mask = padding.to(q.dtype) if mask is None else mask + padding.to(q.dtype)
        # The official alpha=32 rescaling / max subtraction is only stabilisation: plain softmax(qk/sqrt(d) + bias).
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


class BeatsLayer(nn.Module):
    """One TransformerSentenceEncoderLayer: post-LN with DeepNorm residual scaling, or pre-LN when asked."""

    def __init__(self, cfg: BeatsConfig):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.self_attn = BeatsAttention(
            dim, cfg.encoder_attention_heads, cfg.relative_position_embedding, cfg.gru_rel_pos, cfg.num_buckets
        )
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = cfg.layer_norm_first
        self.alpha = cfg.deep_norm_alpha

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x).float()).type_as(x))

    def forward(
        self, x: torch.Tensor, position_bias: torch.Tensor | None, padding: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.self_attn(self.self_attn_layer_norm(x), position_bias, padding)
            return x + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x * self.alpha + self.self_attn(x, position_bias, padding))
        return self.final_layer_norm(x * self.alpha + self._ffn(x))


class BeatsTransformer(nn.Module):
    """The `encoder` sub-module: positional conv, its LayerNorm and the layers (one relative bias table)."""

    def __init__(self, cfg: BeatsConfig):
        super().__init__()
        self.cfg = cfg
        self.pos_conv = ConvPositionalEmbedding(cfg.encoder_embed_dim, cfg.conv_pos, cfg.conv_pos_groups)
        self.layer_norm = nn.LayerNorm(cfg.encoder_embed_dim)
        self.layers = nn.ModuleList(BeatsLayer(cfg) for _ in range(cfg.encoder_layers))
        if cfg.relative_position_embedding:
            # Official files save this table under every layer's key; all layers use layer 0's.
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, cfg.encoder_attention_heads)

    def position_bias(self, length: int) -> torch.Tensor | None:
        """Ungated relative bias [H, N, N] for a sequence of `length` tokens, or None without relative positions."""
        if not self.cfg.relative_position_embedding:
            return None
        buckets = relative_position_buckets(length, length, self.cfg.num_buckets, self.cfg.max_distance)
        return self.relative_attention_bias(buckets.to(self.relative_attention_bias.weight.device)).permute(2, 0, 1)


class BeatsModel(nn.Module):
    """BEATs token extractor: normalised fbank [B, T, F] -> per-layer tokens [B, T'*F', D] (time-major)."""

    def __init__(self, cfg: BeatsConfig):
        super().__init__()
        self.cfg = cfg
        p = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=p, stride=p, bias=cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = (
            nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim) if cfg.embed_dim != cfg.encoder_embed_dim else None
        )
        self.encoder = BeatsTransformer(cfg)

    def forward(
        self, fbank: torch.Tensor, layers: Sequence[int], real_time: list[int] | None = None
    ) -> tuple[dict[int, torch.Tensor], tuple[int, int]]:
        """Outputs of the requested layers ({index: [B, N, D]}) and the (n_time, n_freq) patch grid.

        real_time: clip b's patches from time step real_time[b] on are padding: zeroed before the positional
        convolution (which then sees what a lone clip's zero padding gives) and kept out of attention, as the
        official padding mask does.
        """
        x = self.patch_embedding(fbank.unsqueeze(1))  # [B, C, T', F']
        grid = (x.shape[2], x.shape[3])
        x = self.layer_norm(x.flatten(2).transpose(1, 2))  # [B, T'*F', C], time-major
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        encoder = self.encoder
        padding = None
        if real_time is not None and min(real_time) < grid[0]:
            token_time = torch.arange(grid[0], device=x.device).repeat_interleave(grid[1])  # [N], time-major
            padded = token_time[None, :] >= torch.tensor(real_time, device=x.device)[:, None]  # [B, N]
            x = x.masked_fill(padded[..., None], 0.0)
            padding = torch.zeros(padded.shape, dtype=x.dtype, device=x.device).masked_fill(padded, float("-inf"))
            padding = padding[:, None, None, :]
        x = x + encoder.pos_conv(x)
        if not self.cfg.layer_norm_first:
            x = encoder.layer_norm(x)
        bias = encoder.position_bias(x.shape[1])
        wanted, outputs = set(layers), {}
        for index, layer in enumerate(encoder.layers[: max(wanted) + 1]):
            x = layer(x, bias, padding)
            if index in wanted:
                outputs[index] = x
        last = self.cfg.encoder_layers - 1
        if self.cfg.layer_norm_first and last in outputs:
            outputs[last] = encoder.layer_norm(outputs[last])  # pre-LN variant: the model output is normed
        return outputs, grid


def beats_state_dict(official: Mapping[str, torch.Tensor], cfg: BeatsConfig, source: str) -> dict[str, torch.Tensor]:
    """Map an official BEATs state dict onto `BeatsModel` keys; refuse unknown or missing keys by name."""
    remapped: dict[str, torch.Tensor] = {}
    shared_tables: list[tuple[str, torch.Tensor]] = []
    weight_norm_names = {
        "encoder.pos_conv.0.weight_g": "encoder.pos_conv.weight_g",
        "encoder.pos_conv.0.weight_v": "encoder.pos_conv.weight_v",
        # torch.nn.utils.parametrizations.weight_norm naming, for files re-saved by newer PyTorch.
        "encoder.pos_conv.0.parametrizations.weight.original0": "encoder.pos_conv.weight_g",
        "encoder.pos_conv.0.parametrizations.weight.original1": "encoder.pos_conv.weight_v",
        "encoder.pos_conv.0.bias": "encoder.pos_conv.bias",
    }
    for key, value in official.items():
        if key.startswith("predictor."):
            continue  # fine-tuned classifier head: not part of the token extractor
        if key in weight_norm_names:
            remapped[weight_norm_names[key]] = value
        elif key.startswith("encoder.layers.") and key.endswith(".self_attn.relative_attention_bias.weight"):
            shared_tables.append((key, value))
        else:
            remapped[key] = value
    if shared_tables:
        first_key, table = shared_tables[0]
        for key, other in shared_tables[1:]:
            if other.shape != table.shape or not torch.equal(other, table):
                raise ConfigError(
                    f"{source}: {key} differs from {first_key}; BEATs shares one relative position table across "
                    "layers, so this file was not saved by the official code"
                )
        remapped["encoder.relative_attention_bias.weight"] = table
    expected = BeatsModel(cfg).state_dict()
    unknown = sorted(set(remapped) - set(expected))
    missing = sorted(set(expected) - set(remapped))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unexpected keys {', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}")
        if missing:
            parts.append(f"missing keys {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        raise ConfigError(f"{source}: not a BEATs checkpoint matching its cfg: {'; '.join(parts)}")
    for key, value in remapped.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ConfigError(
                f"{source}: {key} has shape {tuple(value.shape)} but cfg implies {tuple(expected[key].shape)}"
            )
    return remapped


class Beats(Encoder):
    """BEATs patch tokens: no prefix tokens, grid (n_time, 8) time-major, any clip length of >= 16 fbank frames.

    "Layer i" is the output of `encoder.layers[i]` as the official code returns it in `layer_results`: for the
    released post-LN models that is after the block's `final_layer_norm` (already normalised), unlike the pre-LN
    ViT family whose intermediate layers are the un-normalised residual stream. The last layer equals the official
    `extract_features` output. Clips of any length are encoded whole; in a batch, each clip's padded patches are
    zeroed and masked, so its tokens equal those of the clip alone.
    """

    name = "beats"
    sample_rate = 16000
    num_prefix = 0
    supports_lengths = True

    def __init__(self, cfg: BeatsConfig, provenance: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.provenance = dict(provenance or {})
        self.num_layers = cfg.encoder_layers
        self.embed_dim = cfg.encoder_embed_dim
        self.fbank = KaldiFbank(beats_fbank_config())
        self.model = BeatsModel(cfg)

    def config(self) -> dict:
        return {"family": "beats", **self.provenance, "cfg": dataclasses.asdict(self.cfg)}

    def frontend_config(self) -> dict:
        return self.fbank.config.describe()

    def clip_semantics(self) -> dict:
        return {
            "length": "any",
            "padding": "fbank of each clip's real samples (no waveform padding), zero-padded after normalisation to "
                       "the longest clip in the batch",
            "crop": "none",
            "chunking": "none (the whole clip is attended; relative position buckets grow logarithmically)",
            "mask": "padded patches are zeroed before the positional convolution and kept out of attention (the "
                    "official padding_mask), so a clip's tokens equal those of the clip alone",
        }

    def token_grid(self, num_samples: int) -> tuple[int, int]:
        patch = self.cfg.input_patch_size
        frames = self.fbank.config.raw_frames(num_samples)
        return frames // patch, self.fbank.config.num_mel_bins // patch

    def time_steps(self) -> dict:
        """A step is one 16-frame patch of the snip-edges fbank."""
        return TimeSteps.of_patches(*self.fbank.config.frame_samples(), self.cfg.input_patch_size).to_dict()

    def valid_tokens(self, num_real: int, num_total: int) -> int:
        """The tokens of the clip alone (whole 16-frame patches of its own fbank), counted time-major."""
        n_time, n_freq = self.token_grid(num_total)
        return min(n_time, self.token_grid(num_real)[0]) * n_freq

    def forward(
        self, wave: torch.Tensor, layers: Sequence[int] = (-1,), lengths: torch.Tensor | None = None
    ) -> EncoderOutput:
        layers = [index + self.num_layers if index < 0 else index for index in layers]
        if not layers or min(layers) < 0 or max(layers) >= self.num_layers:
            raise ConfigError(f"beats: layers {layers} out of range 0..{self.num_layers - 1}")
        n_time, _ = self.token_grid(wave.shape[-1])
        if n_time < 1:
            raise ConfigError(
                f"beats: a clip of {wave.shape[-1]} samples gives fewer than {self.cfg.input_patch_size} fbank "
                "frames (one patch); use clips of at least 0.175 s"
            )
        # The front end stays in float32 under autocast (half-precision log-mel loses ~1e-2).
        with torch.autocast(device_type=wave.device.type, enabled=False):
            fbank, frames = self.fbank.features(wave, lengths)  # [B, frames, 128]
        real_time = None if lengths is None else [n // self.cfg.input_patch_size for n in frames]
        outputs, grid = self.model(fbank, layers, real_time)
        return EncoderOutput(layers=outputs, prefix={}, grid=grid)


def load_beats_checkpoint(path: str | Path) -> tuple[BeatsConfig, dict[str, torch.Tensor]]:
    """Read an official BEATs file (`{'cfg': dict, 'model': state_dict}`) into a config and a remapped state dict."""
    from embedcache.checkpoints import load_checkpoint

    source = str(path)
    data = load_checkpoint(path)
    if not isinstance(data, Mapping) or "cfg" not in data or "model" not in data:
        keys = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise ConfigError(
            f"{source}: not an official BEATs checkpoint (expected a dict with 'cfg' and 'model', found {keys})"
        )
    cfg = BeatsConfig.from_checkpoint_cfg(data["cfg"], source)
    return cfg, beats_state_dict(data["model"], cfg, source)


def create_beats(checkpoint: str | None = None, random_init: bool = False, seed: int = 0, **cfg_overrides) -> Beats:
    """Registry factory: BEATs from an official checkpoint, or seeded random weights (iter3 sizes unless overridden)."""
    if checkpoint is None and not random_init:
        raise ConfigError("beats needs --checkpoint (an official file such as BEATs_iter3_plus_AS2M.pt)")
    if checkpoint is not None:
        if cfg_overrides:
            raise ConfigError(f"beats: sizes come from the checkpoint's cfg; drop {', '.join(sorted(cfg_overrides))}")
        from embedcache.checkpoints import sha256_file

        cfg, state = load_beats_checkpoint(checkpoint)
        provenance = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint)}
        encoder = Beats(cfg, provenance)
        encoder.model.load_state_dict(state, strict=True)
        return encoder
    unknown = sorted(set(cfg_overrides) - {field.name for field in dataclasses.fields(BeatsConfig)})
    if unknown:
        raise ConfigError(f"beats: unknown options {', '.join(unknown)}")
    provenance = {"random_init": True, "seed": seed, "options": {**cfg_overrides, "seed": seed}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = Beats(BeatsConfig(**cfg_overrides), provenance)
    return encoder
