"""One generic spectrogram ViT, configured per model family (AudioMAE, AST, EAT/SSLAM, ATST-Frame, random `vit`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from embedcache.encoders.base import Encoder, EncoderOutput
from embedcache.errors import ConfigError
from embedcache.events import TimeSteps
from embedcache.frontends import KaldiFbank, KaldiFbankConfig, MelDb, MelDbConfig

TIME_FIRST = "time_first"
FREQ_FIRST = "freq_first"


@dataclass(frozen=True)
class ViTSpec:
    """Architecture of one spectrogram ViT; sizes in (time, freq) terms whatever the input layout.

    input_layout: "time_first" feeds the conv [B, 1, T, F] (tokens come out time-major), "freq_first" feeds
      [B, 1, F, T] (tokens come out frequency-major and are reordered to time-major on output).
    prefix: names of the prefix tokens in order ("cls", "dist"); prefix_pos: whether they take table rows.
    pos_kind: "table" (stored/learned rows) or "sincos" (2-D sin-cos generated for each grid).
    pos_grid: (n_time, n_freq) the table's patch rows cover, in the model's own token order.
    pos_offset: unused table rows between the prefix rows and the first patch row (ATST's slot 0).
    pos_resize: "crop" keeps the first time steps of the table, "interpolate" resamples it (bicubic).
    final_norm_layers: which returned layers get the final norm: "last", "all" (ATST) or "none".
    chunk_frames: run the transformer on chunks of this many frames and concatenate in time (None = whole clip).
    """

    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    n_freq_bins: int
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    post_ln: bool = False
    input_norm: bool = False
    final_norm: bool = True
    final_norm_layers: str = "last"
    input_layout: str = TIME_FIRST
    patch: tuple[int, int] = (16, 16)
    stride: tuple[int, int] = (16, 16)
    prefix: tuple[str, ...] = ("cls",)
    prefix_pos: bool = True
    pos_kind: str = "table"
    pos_grid: tuple[int, int] = (64, 8)
    pos_offset: int = 0
    pos_resize: str = "crop"
    chunk_frames: int | None = None

    def __post_init__(self):
        checks = [
            (self.input_layout in (TIME_FIRST, FREQ_FIRST), f"input_layout {self.input_layout!r}"),
            (self.pos_kind in ("table", "sincos"), f"pos_kind {self.pos_kind!r}"),
            (self.pos_resize in ("crop", "interpolate"), f"pos_resize {self.pos_resize!r}"),
            (
                self.final_norm_layers in ("last", "all", "none"),
                f"final_norm_layers {self.final_norm_layers!r}",
            ),
            (self.embed_dim % self.num_heads == 0, f"embed_dim {self.embed_dim} not divisible by heads"),
            (
                self.n_freq_bins >= self.patch[1],
                f"n_freq_bins {self.n_freq_bins} < patch freq {self.patch[1]}",
            ),
        ]
        for ok, what in checks:
            if not ok:
                raise ConfigError(f"vit: invalid architecture setting: {what}")

    def grid(self, frames: int) -> tuple[int, int]:
        """(n_time, n_freq) of the patches for a spectrogram of `frames` frames (no chunking)."""
        n_time = max(0, (frames - self.patch[0]) // self.stride[0] + 1)
        n_freq = (self.n_freq_bins - self.patch[1]) // self.stride[1] + 1
        return n_time, n_freq


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """MAE 1-D sin-cos embedding: [N] positions -> [N, dim] = [sin(p w_k), cos(p w_k)], w_k = 10000^(-2k/dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """MAE 2-D sin-cos table [height * width, dim], rows row-major over (h, w); first half encodes w, second h."""
    rows = torch.arange(height * width)
    table = torch.cat([sincos_1d(dim // 2, rows % width), sincos_1d(dim // 2, rows // width)], dim=1)
    return table.float()


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm names: qkv, proj)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, D]; attend [B, L] bool: which keys may be attended to (None: all)."""
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, L, Dh]
        mask = None if attend is None else attend[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Transformer block, pre-LN (timm ViT) or post-LN (EAT/SSLAM AltBlock)."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.post_ln = spec.post_ln
        self.norm1 = nn.LayerNorm(spec.embed_dim, eps=spec.norm_eps)
        self.attn = Attention(spec.embed_dim, spec.num_heads, spec.qkv_bias)
        self.norm2 = nn.LayerNorm(spec.embed_dim, eps=spec.norm_eps)
        self.mlp = Mlp(spec.embed_dim, spec.mlp_hidden)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None = None) -> torch.Tensor:
        if self.post_ln:
            x = self.norm1(x + self.attn(x, attend))
            return self.norm2(x + self.mlp(x))
        x = x + self.attn(self.norm1(x), attend)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Conv2d patch embedding in the model's own input layout (timm name: proj)."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        kernel, stride = spec.patch, spec.stride
        if spec.input_layout == FREQ_FIRST:
            kernel, stride = kernel[::-1], stride[::-1]
        self.proj = nn.Conv2d(1, spec.embed_dim, kernel_size=kernel, stride=stride)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(image).flatten(2).transpose(1, 2)  # [B, N, D] in the model's own order


class SpectrogramViT(nn.Module):
    """The transformer on a normalised spectrogram [B, frames, bins]; parameters carry timm-style names."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.spec = spec
        dim = spec.embed_dim
        self.patch_embed = PatchEmbed(spec)
        for name in spec.prefix:
            self.register_parameter(f"{name}_token", nn.Parameter(torch.zeros(1, 1, dim)))
        if spec.pos_kind == "table":
            rows = (len(spec.prefix) if spec.prefix_pos else 0) + spec.pos_offset + math.prod(spec.pos_grid)
            self.pos_embed = nn.Parameter(torch.zeros(1, rows, dim))
        self.pre_norm = nn.LayerNorm(dim, eps=spec.norm_eps) if spec.input_norm else None
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(dim, eps=spec.norm_eps) if spec.final_norm else None

    def own_order_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The grid as the conv output lays it out: (time, freq) or (freq, time)."""
        return grid if self.spec.input_layout == TIME_FIRST else grid[::-1]

    def patch_positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position rows [N, D] for a (n_time, n_freq) grid, in the model's own token order."""
        spec = self.spec
        if spec.pos_kind == "sincos":
            return sincos_2d(spec.embed_dim, *grid).to(self.patch_embed.proj.weight.device)
        start = (len(spec.prefix) if spec.prefix_pos else 0) + spec.pos_offset
        table = self.pos_embed[0, start : start + math.prod(spec.pos_grid)]
        own_full = self.own_order_grid(spec.pos_grid)
        own_want = self.own_order_grid(grid)
        table = table.reshape(*own_full, -1)
        if spec.pos_resize == "crop" and (grid[1] != spec.pos_grid[1] or grid[0] > spec.pos_grid[0]):
            raise ConfigError(
                f"vit: a clip with a {grid[0]} x {grid[1]} (time x freq) patch grid does not fit the "
                f"{spec.pos_grid[0]} x {spec.pos_grid[1]} position table; shorten clip_seconds or use "
                "pos_resize='interpolate'"
            )
        if spec.pos_resize == "interpolate" and own_want != own_full:
            image = table.permute(2, 0, 1).unsqueeze(0)
            image = F.interpolate(image, size=own_want, mode="bicubic", align_corners=False)
            table = image[0].permute(1, 2, 0)
        elif spec.input_layout == TIME_FIRST:
            table = table[: grid[0]]
        else:
            table = table[:, : grid[0]]
        return table.reshape(-1, spec.embed_dim)

    def embed(self, features: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Spectrogram [B, frames, bins] -> tokens [B, P + N, D] with positions, and the (n_time, n_freq) grid."""
        spec = self.spec
        grid = spec.grid(features.shape[1])
        if grid[0] < 1:
            raise ConfigError(
                f"vit: {features.shape[1]} frames are fewer than one patch ({spec.patch[0]} frames); "
                "give longer clips (clip_seconds)"
            )
        image = features.unsqueeze(1)  # [B, 1, T, F]
        if spec.input_layout == FREQ_FIRST:
            image = image.transpose(2, 3)  # [B, 1, F, T]
        x = self.patch_embed(image) + self.patch_positions(grid).to(features.dtype)
        if spec.prefix:
            prefix = torch.cat([getattr(self, f"{name}_token") for name in spec.prefix], dim=1)
            if spec.prefix_pos:
                prefix = prefix + self.pos_embed[:, : len(spec.prefix)]
            x = torch.cat([prefix.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        return x, grid

    def key_mask(self, grid: tuple[int, int], real_time: list[int], device: torch.device) -> torch.Tensor:
        """[B, P + N] bool: prefix tokens and patches of the first real_time[b] time steps (own token order).

        A clip with no real patch here attends to everything (finite values in place of NaN; its tokens are padding).
        """
        n_time, n_freq = grid
        time_index = torch.arange(n_time, device=device)
        own = time_index[:, None].expand(n_time, n_freq)  # [T, F] time index of each patch
        if self.spec.input_layout == FREQ_FIRST:
            own = own.T
        limits = torch.tensor(real_time, device=device)
        patches = own.reshape(1, -1) < limits[:, None]
        patches |= (limits == 0)[:, None]
        prefix = torch.ones(len(real_time), len(self.spec.prefix), dtype=torch.bool, device=device)
        return torch.cat([prefix, patches], dim=1)

    def forward(
        self, features: torch.Tensor, layers: Sequence[int], real_time: list[int] | None = None
    ) -> tuple[dict[int, torch.Tensor], tuple]:
        """Block outputs {layer: [B, P + N, D]} (own token order) for `layers`, and the grid.

        real_time: clip b's patches past time step real_time[b] are padding, kept out of attention (None: no mask).
        """
        spec = self.spec
        x, grid = self.embed(features)
        attend = None
        if real_time is not None and min(real_time) < grid[0]:
            attend = self.key_mask(grid, real_time, x.device)
        wanted, outputs = set(layers), {}
        for index, block in enumerate(self.blocks[: max(wanted) + 1]):
            x = block(x, attend)
            if index in wanted:
                last = index == spec.depth - 1
                normed = self.norm is not None and (
                    spec.final_norm_layers == "all" or (spec.final_norm_layers == "last" and last)
                )
                outputs[index] = self.norm(x) if normed else x
        return outputs, grid

    def to_time_major(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Patch tokens [B, N, D] in the model's own order -> canonical time-major (t * n_freq + f)."""
        if self.spec.input_layout == TIME_FIRST:
            return tokens
        n_time, n_freq = grid
        return tokens.reshape(tokens.shape[0], n_freq, n_time, -1).transpose(1, 2).reshape(tokens.shape)


class ViTEncoder(Encoder):
    """Front end + SpectrogramViT behind the Encoder contract; carries its own front-end config.

    A Kaldi front end with `target_frames` makes the model fixed-length (AudioMAE, AST, EAT, SSLAM): each clip's
    fbank is zero-padded or cropped to that many frames in the log domain and the model attends to the padding, as
    the official pipelines do. Otherwise any length is encoded whole (chunked when `spec.chunk_frames` is set), with
    each clip's padded patches kept out of attention so its tokens do not depend on its batch mates.
    """

    supports_lengths = True

    def __init__(
        self,
        name: str,
        spec: ViTSpec,
        frontend: KaldiFbankConfig | MelDbConfig,
        provenance: dict | None = None,
    ):
        super().__init__()
        self.name = name
        self.spec = spec
        self.sample_rate = frontend.sample_rate
        self.num_layers = spec.depth
        self.embed_dim = spec.embed_dim
        self.num_prefix = len(spec.prefix)
        self.frontend = KaldiFbank(frontend) if isinstance(frontend, KaldiFbankConfig) else MelDb(frontend)
        self.model = SpectrogramViT(spec)
        self.provenance = dict(provenance or {})

    @property
    def target_frames(self) -> int | None:
        return getattr(self.frontend.config, "target_frames", None)

    def config(self) -> dict:
        spec = dataclasses.asdict(self.spec)
        return {
            "family": self.name,
            **self.provenance,
            "sample_rate": self.sample_rate,
            "architecture": {key: list(v) if isinstance(v, tuple) else v for key, v in spec.items()},
        }

    def frontend_config(self) -> dict:
        return self.frontend.config.describe()

    def max_input_samples(self) -> int | None:
        target = self.target_frames
        if target is None:
            return None
        cfg = self.frontend.config
        return cfg.window_samples + (target - 1) * cfg.hop_samples

    def clip_semantics(self) -> dict:
        target, chunk = self.target_frames, self.spec.chunk_frames
        if target is not None:
            seconds = self.max_input_samples() / self.sample_rate
            return {
                "length": "fixed",
                "input_frames": target,
                "padding": f"log-mel of the clip's real samples, zero-padded at the end to {target} frames in the "
                           "log domain, before normalisation (the official dataloader's ZeroPad2d)",
                "crop": f"frames past {target} are dropped: audio after {seconds:.3f} s is lost",
                "chunking": "none",
                "mask": "none: the model attends to padded patches, as the official model does",
            }
        return {
            "length": "any",
            "padding": "features of each clip's real samples, zero-padded after normalisation to the longest clip "
                       "in the batch",
            "crop": "none",
            "chunking": f"runs of {chunk} frames encoded independently, positions restarting, the last run shorter"
                        if chunk else "none",
            "mask": "padded patches are kept out of attention, so a clip's tokens equal those of the clip alone",
        }

    def _chunks(self, frames: int) -> list[tuple[int, int]]:
        size = self.spec.chunk_frames
        if size is None or frames <= size:
            return [(0, frames)]
        spans = [(start, min(start + size, frames)) for start in range(0, frames, size)]
        # A tail shorter than one patch gives no tokens; the official chunkers drop it too.
        return [(a, b) for a, b in spans if b - a >= self.spec.patch[0]]

    def min_samples(self) -> int:
        return max(super().min_samples(), getattr(self.frontend.config, "min_samples", 1))

    def token_grid(self, num_samples: int) -> tuple[int, int]:
        frames = self.frontend.config.num_frames(num_samples)
        spans = self._chunks(frames)
        n_freq = self.spec.grid(frames)[1]
        return sum(self.spec.grid(b - a)[0] for a, b in spans), n_freq

    def time_steps(self) -> dict | None:
        """A step is one patch row (`spec.patch[0]` frames every `spec.stride[0]`). Exact within one chunk; a chunked
        encoder whose chunk is not a whole number of strides drops chunk % stride frames per chunk (ATST-Frame: one
        10 ms frame per 10 s). None for overlapping patches in chunks."""
        patch, stride, chunk = self.spec.patch[0], self.spec.stride[0], self.spec.chunk_frames
        if chunk is not None and patch != stride:
            return None
        start, span, hop = self.frontend.config.frame_samples()
        return TimeSteps(start, (patch - 1) * hop + span, stride * hop).to_dict()

    def valid_tokens(self, num_real: int, num_total: int) -> int:
        """Tokens of time steps that start inside the clip's real frames, counted time-major."""
        n_time, n_freq = self.token_grid(num_total)
        if self.target_frames is None:
            return min(n_time, self.token_grid(num_real)[0]) * n_freq
        real_frames = min(self.frontend.config.raw_frames(num_real), self.target_frames)
        return min(n_time, math.ceil(real_frames / self.spec.stride[0])) * n_freq

    def forward(
        self, wave: torch.Tensor, layers: Sequence[int] = (-1,), lengths: torch.Tensor | None = None
    ) -> EncoderOutput:
        layers = [index + self.num_layers if index < 0 else index for index in layers]
        bad = [index for index in layers if not 0 <= index < self.num_layers]
        if bad or not layers:
            raise ConfigError(
                f"{self.name}: layers {bad or layers} do not exist; use 0..{self.num_layers - 1}"
            )
        # The front end stays in float32 under autocast (log-mel of half-precision FFTs loses ~1e-2).
        with torch.autocast(device_type=wave.device.type, enabled=False):
            features, frames = self.frontend.features(wave.float(), lengths)  # [B, frames, bins]
        masked = self.target_frames is None and lengths is not None
        per_chunk = []
        for start, stop in self._chunks(features.shape[1]):
            real_time = [self.spec.grid(max(0, min(n, stop) - start))[0] for n in frames] if masked else None
            outputs, grid = self.model(features[:, start:stop], layers, real_time)
            per_chunk.append((outputs, grid))
        num_prefix = self.num_prefix
        patches, prefix = {}, {}
        for index in layers:
            parts = [self.model.to_time_major(out[index][:, num_prefix:], grid) for out, grid in per_chunk]
            patches[index] = torch.cat(parts, dim=1)
            if num_prefix:
                # With chunking each chunk has its own prefix tokens; the first chunk's are kept.
                prefix[index] = per_chunk[0][0][index][:, :num_prefix]
        n_time = sum(grid[0] for _, grid in per_chunk)
        return EncoderOutput(layers=patches, prefix=prefix, grid=(n_time, per_chunk[0][1][1]))


def random_vit_spec(
    embed_dim: int = 64,
    depth: int = 2,
    num_heads: int = 4,
    mlp_ratio: float = 4.0,
    patch_size: int = 16,
    n_mels: int = 128,
    num_prefix: int = 1,
) -> ViTSpec:
    """A small pre-LN ViT on time-first fbank patches with sin-cos positions generated for any grid."""
    if num_prefix not in (0, 1, 2):
        raise ConfigError(f"vit: num_prefix must be 0, 1 (cls) or 2 (cls, dist), got {num_prefix}")
    return ViTSpec(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_hidden=int(embed_dim * mlp_ratio),
        n_freq_bins=n_mels,
        patch=(patch_size, patch_size),
        stride=(patch_size, patch_size),
        prefix=("cls", "dist")[:num_prefix],
        prefix_pos=False,
        pos_kind="sincos",
        pos_grid=(0, n_mels // patch_size),
    )


def init_random_weights(module: nn.Module, seed: int) -> None:
    """Deterministic weights from one seeded generator: Xavier-uniform matrices, N(0, 0.02) tokens, zero biases."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("_token") or name == "pos_embed":
                values = torch.randn(parameter.shape, generator=generator) * 0.02
            elif parameter.dim() >= 2:
                fan_out, fan_in = parameter.shape[0], parameter[0].numel()
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                values = (torch.rand(parameter.shape, generator=generator) * 2 - 1) * bound
            elif "norm" in name and name.endswith("weight"):
                values = torch.ones(parameter.shape)
            else:
                values = torch.zeros(parameter.shape)
            parameter.copy_(values)


def create_vit(checkpoint: str | None = None, random_init: bool = False, **options) -> ViTEncoder:
    """The generic `vit`: a seeded random-weight ViT (random_init=True) for tests and baselines.

    Options: embed_dim (64), depth (2), num_heads (4), mlp_ratio (4.0), patch_size (16), n_mels (128),
    num_prefix (1), seed (0). Any clip length: sin-cos positions are generated for each grid.
    """
    if checkpoint is not None:
        raise ConfigError(
            "encoder 'vit' takes no --checkpoint (it is the random-weight ViT); for official weights use "
            "--encoder audiomae, ast, eat, sslam, atst_frame or asit"
        )
    if not random_init:
        raise ConfigError(
            "encoder 'vit' has no pretrained weights: pass --random-init (seeded) or --checkpoint "
            "with --encoder audiomae/ast/eat/sslam/atst_frame/asit"
        )
    seed = int(options.pop("seed", 0))
    known = {"embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "n_mels", "num_prefix"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"encoder 'vit': unknown option(s) {unknown}; known: {sorted(known | {'seed'})}"
        )
    spec = random_vit_spec(**options)
    frontend = KaldiFbankConfig(num_mel_bins=spec.n_freq_bins, target_frames=None)
    # `options` + seed are exactly what create("vit", random_init=True, ...) needs to rebuild it.
    provenance = {"random_init": True, "seed": seed, "options": {**options, "seed": seed}}
    encoder = ViTEncoder("vit", spec, frontend, provenance=provenance)
    init_random_weights(encoder.model, seed)
    return encoder
