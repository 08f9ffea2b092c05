"""Dasheng (RicherMans/Dasheng, PyPI `dasheng`) in plain PyTorch, loaded from the official `{'model', 'config'}` files.

Architecture: torchaudio mel (64 bins, n_fft 512) -> dB (top_db 120) -> per-mel-bin BatchNorm (running stats from the
checkpoint) -> Conv2d (64 x 4) full-band patches -> separable learned positions (time table + one freq vector) ->
pre-LN ViT blocks -> final LayerNorm. The patch sequence is cut into chunks of `target_length // 4` patches (252 =
10.08 s) that run independently, time positions restarting per chunk, the last chunk shorter and unpadded, as
`Dasheng.forward_spectrogram` does in dasheng 0.0.9 (an older revision zero-padded the last chunk instead).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from embedcache.encoders.base import Encoder, EncoderOutput
from embedcache.encoders.vit import Attention, Mlp
from embedcache.errors import ConfigError
from embedcache.events import TimeSteps
from embedcache.frontends import MelDb, dasheng_mel_config

# Constructor arguments of the official encoder that do not change inference (dropouts, masking, pooling eval).
_INFERENCE_IRRELEVANT = frozenset(
    {"drop_rate", "attn_drop_rate", "time_patch_out", "freq_patch_out", "eval_avg", "group_masking", "mask_ratio"}
)
# Head counts of the released sizes, which `dasheng_base/06B/12B()` force over the stored config.
_OFFICIAL_HEADS = {(768, 12): 12, (1280, 32): 16, (1536, 40): 24}


@dataclass(frozen=True)
class DashengConfig:
    """Architecture and front end of a Dasheng model (defaults: dasheng-base)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_hidden: int = 3072
    qkv_bias: bool = True
    layer_scale: bool = False
    pooling: str = "mean"
    patch_size: tuple[int, int] = (64, 4)
    target_length: int = 1008
    pos_time_slots: int = 252
    n_fft: int = 512
    win_size: int = 512
    hop_size: int = 160
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8000.0
    top_db: float = 120.0

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"dasheng: embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.patch_size[0] != self.n_mels:
            raise ConfigError(
                f"dasheng: patch_size {self.patch_size} does not span all {self.n_mels} mel bins; only full-band "
                "(time-only) patches are supported"
            )
        if self.pooling not in ("mean", "token"):
            raise ConfigError(f"dasheng: pooling {self.pooling!r} is not 'mean' or 'token'")
        if self.target_length // self.patch_size[1] > self.pos_time_slots:
            raise ConfigError(
                f"dasheng: target_length {self.target_length} needs {self.target_length // self.patch_size[1]} time "
                f"positions but time_pos_embed has {self.pos_time_slots}"
            )

    @property
    def patch_frames(self) -> int:
        return self.patch_size[1]


class LayerScale(nn.Module):
    """Per-channel residual branch scale (official `ls1`/`ls2` when `init_values` is set)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DashengBlock(nn.Module):
    """Pre-LN transformer block (the ViT family's attention and MLP, official names), LayerNorm eps 1e-6."""

    def __init__(self, cfg: DashengConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, cfg.mlp_hidden)
        self.ls1 = LayerScale(dim) if cfg.layer_scale else nn.Identity()
        self.ls2 = LayerScale(dim) if cfg.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), attend))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DashengModel(nn.Module):
    """Mel-dB [B, frames, n_mels] -> BatchNorm -> chunked ViT -> per-layer tokens [B, n_time, D]."""

    def __init__(self, cfg: DashengConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.init_bn = nn.BatchNorm2d(cfg.n_mels, momentum=0.01)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(1, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.time_pos_embed = nn.Parameter(torch.randn(1, dim, 1, cfg.pos_time_slots) * 0.02)
        self.freq_pos_embed = nn.Parameter(torch.randn(1, dim, 1, 1) * 0.02)
        if cfg.pooling == "token":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.token_pos_embed = nn.Parameter(torch.randn(1, dim) * 0.02)
        self.blocks = nn.ModuleList(DashengBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def normalise(self, mel_db: torch.Tensor) -> torch.Tensor:
        """Per-mel-bin BatchNorm with the stored running stats: [B, frames, M] -> [B, 1, M, frames]."""
        spec = mel_db.transpose(1, 2).unsqueeze(2)  # [B, M, 1, frames]: BatchNorm2d channels are the mel bins
        return self.init_bn(spec).transpose(1, 2)

    def chunk_sizes(self, n_patches: int) -> list[int]:
        """Patches per chunk: runs of `target_length // 4` patches, the last one shorter."""
        size = self.cfg.target_length // self.cfg.patch_frames
        return [min(size, n_patches - start) for start in range(0, n_patches, size)]

    def _run_blocks(
        self, x: torch.Tensor, wanted: set[int], real: list[int] | None = None
    ) -> dict[int, torch.Tensor]:
        """Positions + blocks on patches [n, D, 1, t] -> {layer: [n, P + t, D]} (last layer after `norm`).

        real: row i's patches from real[i] on are padding, kept out of attention (the official x_length mask).
        """
        x = x + self.time_pos_embed[..., : x.shape[-1]] + self.freq_pos_embed  # positions restart per chunk
        x = x.flatten(2).transpose(1, 2)  # [n, t, D]
        num_prefix = 0
        if self.cfg.pooling == "token":
            x = torch.cat([(self.cls_token + self.token_pos_embed).expand(x.shape[0], -1, -1), x], dim=1)
            num_prefix = 1
        attend = None
        if real is not None and min(real) < x.shape[1] - num_prefix:
            limits = torch.tensor(real, device=x.device)
            patches = torch.arange(x.shape[1] - num_prefix, device=x.device)[None, :] < limits[:, None]
            patches |= (limits == 0)[:, None]  # a row of padding only: attend to all (finite; it is discarded)
            prefix = torch.ones(len(real), num_prefix, dtype=torch.bool, device=x.device)
            attend = torch.cat([prefix, patches], dim=1)
        outputs = {}
        for index, block in enumerate(self.blocks[: max(wanted) + 1]):
            x = block(x, attend)
            if index in wanted:
                outputs[index] = self.norm(x) if index == self.cfg.depth - 1 else x
        return outputs

    def forward(
        self, spec: torch.Tensor, layers: Sequence[int], real_patches: list[int] | None = None
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """Normalised spectrogram [B, 1, M, frames] -> ({layer: patch tokens [B, n_time, D]}, {layer: prefix}).

        real_patches: clip b's patches from real_patches[b] on are padding (None: every patch is real).
        """
        batch = spec.shape[0]
        patches = self.patch_embed.proj(spec)  # [B, D, 1, n_time]; trailing frames short of a patch are dropped
        sizes = self.chunk_sizes(patches.shape[-1])
        full = sizes.count(sizes[0])
        wanted = set(layers)

        def real_in(start: int, size: int) -> list[int] | None:
            return None if real_patches is None else [min(size, max(0, n - start)) for n in real_patches]

        # Equal-length chunks share one pass ([n_full * B, ...], chunk-major); a shorter tail runs on its own.
        head = torch.cat(patches[..., : full * sizes[0]].split(sizes[0], dim=-1), dim=0)
        head_real = None
        if real_patches is not None:
            head_real = [n for k in range(full) for n in real_in(k * sizes[0], sizes[0])]
        runs = [(self._run_blocks(head, wanted, head_real), full)]
        if full < len(sizes):
            tail = patches[..., full * sizes[0] :]
            runs.append((self._run_blocks(tail, wanted, real_in(full * sizes[0], tail.shape[-1])), 1))
        num_prefix = 1 if self.cfg.pooling == "token" else 0
        tokens, prefix = {}, {}
        for index in wanted:
            chunks = [c for out, n in runs for c in out[index].split(batch, dim=0)]
            tokens[index] = torch.cat([c[:, num_prefix:] for c in chunks], dim=1)
            if num_prefix:
                prefix[index] = chunks[0][:, :num_prefix]  # the first chunk's cls token
        return tokens, prefix


def dasheng_config_from_checkpoint(
    config: Mapping, state: Mapping[str, torch.Tensor], source: str, num_heads: int | None = None
) -> DashengConfig:
    """Sizes from the state dict's shapes, the rest from the stored `config`; refuse unknown config fields."""
    known = {
        "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "target_length", "pooling", "patch_size",
        "patch_stride", "n_fft", "n_mels", "hop_size", "win_size", "f_min", "f_max", "center", "top_db",
        "init_values", "norm_layer", "act_layer", "block_type", "attention_type",
    }
    unknown = sorted(set(config) - known - _INFERENCE_IRRELEVANT)
    if unknown:
        raise ConfigError(f"{source}: Dasheng config has fields this loader does not know: {', '.join(unknown)}")
    for field, allowed in (("block_type", "Block"), ("attention_type", "Attention")):
        if config.get(field, allowed) != allowed:
            raise ConfigError(f"{source}: Dasheng config {field}={config[field]!r} is not supported (only {allowed!r})")
    for field in ("norm_layer", "act_layer"):
        if config.get(field) is not None:
            raise ConfigError(f"{source}: Dasheng config {field}={config[field]!r}: only the defaults are supported")
    if not config.get("center", True):
        raise ConfigError(f"{source}: Dasheng config center=False is not supported (released models use True)")
    for key in ("patch_embed.proj.weight", "time_pos_embed", "front_end.0.mel_scale.fb", "blocks.0.mlp.fc1.weight"):
        if key not in state:
            raise ConfigError(f"{source}: not a Dasheng checkpoint, state dict lacks {key}")
    weight = state["patch_embed.proj.weight"]  # [D, 1, mels, frames]
    embed_dim = weight.shape[0]
    depth = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks."))
    for field, found in (("embed_dim", embed_dim), ("depth", depth)):
        if field in config and config[field] != found and num_heads is None:
            official = _OFFICIAL_HEADS.get((embed_dim, depth))
            if official is None:
                raise ConfigError(
                    f"{source}: config says {field}={config[field]} but the weights have {found}; pass "
                    "num_heads=... to say how many heads these weights use"
                )
            num_heads = official  # a released size whose stored config is stale: use the official head count
    patch = tuple(config.get("patch_size", (64, 4)))
    stride = tuple(config.get("patch_stride", patch))
    if stride != patch or tuple(weight.shape[2:]) != patch:
        raise ConfigError(
            f"{source}: Dasheng patch {tuple(weight.shape[2:])} / stride {stride} vs config patch {patch}: only "
            "non-overlapping patches matching the weights are supported"
        )
    return DashengConfig(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=int(num_heads if num_heads is not None else config.get("num_heads", 8)),
        mlp_hidden=state["blocks.0.mlp.fc1.weight"].shape[0],
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        layer_scale="blocks.0.ls1.gamma" in state,
        pooling=config.get("pooling", "mean"),
        patch_size=patch,
        target_length=int(config.get("target_length", 1008)),
        pos_time_slots=state["time_pos_embed"].shape[-1],
        n_fft=int(config.get("n_fft", 512)),
        win_size=int(config.get("win_size", 512)),
        hop_size=int(config.get("hop_size", 160)),
        n_mels=state["front_end.0.mel_scale.fb"].shape[1],
        f_min=float(config.get("f_min", 0)),
        f_max=float(config.get("f_max", 8000)),
        top_db=float(config.get("top_db", 120)),
    )


def dasheng_state_dicts(
    official: Mapping[str, torch.Tensor], cfg: DashengConfig, source: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split an official state dict into (front-end buffers for `MelDb`, `DashengModel` weights), checking keys."""
    frontend_names = {
        "front_end.0.spectrogram.window": "mel.spectrogram.window",
        "front_end.0.mel_scale.fb": "mel.mel_scale.fb",
    }
    frontend, model = {}, {}
    for key, value in official.items():
        if key in frontend_names:
            frontend[frontend_names[key]] = value
        elif key.startswith("init_bn.1."):
            model["init_bn." + key[len("init_bn.1."):]] = value
        else:
            model[key] = value
    expected = DashengModel(cfg).state_dict()
    problems = []
    unknown = sorted(set(model) - set(expected))
    missing = sorted(set(expected) - set(model)) + sorted(set(frontend_names.values()) - set(frontend))
    if unknown:
        problems.append(f"unexpected keys {', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}")
    if missing:
        problems.append(f"missing keys {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if problems:
        raise ConfigError(f"{source}: not a Dasheng checkpoint matching its config: {'; '.join(problems)}")
    for key, value in model.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ConfigError(f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
    return frontend, model


class Dasheng(Encoder):
    """Dasheng tokens: 40 ms full-band patches, grid (n_time, 1); no prefix unless the model pools with a cls token.

    Layer i < depth - 1 is the output of `blocks[i]` (the un-normalised residual stream, as a forward hook sees it);
    the last layer is the official `forward` output, i.e. after the final `norm` (the ViT family's "last" convention).
    The mel-dB of each clip is computed on its real samples, with its own dB floor (max - top_db): the official 3-D
    call floors a whole batch at once, which would make a clip's tokens depend on its batch mates (identical for
    batch size 1, the clip run alone). Padded patches are kept out of attention, as the official `x_length` mask.
    """

    name = "dasheng"
    sample_rate = 16000
    supports_lengths = True

    def __init__(self, cfg: DashengConfig, provenance: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.num_layers = cfg.depth
        self.embed_dim = cfg.embed_dim
        self.num_prefix = 1 if cfg.pooling == "token" else 0
        self.provenance = dict(provenance or {})
        self.frontend = MelDb(
            dasheng_mel_config(
                n_fft=cfg.n_fft, win_length=cfg.win_size, hop_length=cfg.hop_size, n_mels=cfg.n_mels,
                f_min=cfg.f_min, f_max=cfg.f_max, top_db=cfg.top_db,
            )
        )
        self.model = DashengModel(cfg)

    def config(self) -> dict:
        architecture = dataclasses.asdict(self.cfg)
        architecture["patch_size"] = list(self.cfg.patch_size)
        return {"family": "dasheng", **self.provenance, "architecture": architecture}

    def frontend_config(self) -> dict:
        return {
            **self.frontend.config.describe(),
            "normalisation": "per-mel-bin BatchNorm2d (eval, running stats from the checkpoint, eps 1e-5)",
            "chunk_frames": self.cfg.target_length,
        }

    def clip_semantics(self) -> dict:
        size = self.cfg.target_length // self.cfg.patch_frames
        return {
            "length": "any",
            "padding": "mel-dB of each clip's real samples (its own top_db floor), zero-padded to the longest clip "
                       "in the batch",
            "crop": "none",
            "chunking": f"runs of {size} patches ({self.cfg.target_length} frames) encoded independently, time "
                        "positions restarting, the last run shorter",
            "mask": "padded patches are kept out of attention (the official x_length mask), so a clip's tokens "
                    "equal those of the clip alone",
        }

    def min_samples(self) -> int:
        return max(super().min_samples(), getattr(self.frontend.config, "min_samples", 1))

    def token_grid(self, num_samples: int) -> tuple[int, int]:
        return self.frontend.config.num_frames(num_samples) // self.cfg.patch_frames, 1

    def time_steps(self) -> dict:
        """A step is one full-band patch of `patch_frames` centred mel frames."""
        return TimeSteps.of_patches(*self.frontend.config.frame_samples(), self.cfg.patch_frames).to_dict()

    def valid_tokens(self, num_real: int, num_total: int) -> int:
        """The tokens of the clip alone (whole 4-frame patches of its own mel-dB)."""
        return min(self.token_grid(num_total)[0], self.token_grid(num_real)[0])

    def forward(
        self, wave: torch.Tensor, layers: Sequence[int] = (-1,), lengths: torch.Tensor | None = None
    ) -> EncoderOutput:
        layers = [index + self.num_layers if index < 0 else index for index in layers]
        if not layers or min(layers) < 0 or max(layers) >= self.num_layers:
            raise ConfigError(f"dasheng: layers {layers} out of range 0..{self.num_layers - 1}")
        n_time, _ = self.token_grid(wave.shape[-1])
        if n_time < 1:
            raise ConfigError(f"dasheng: a clip of {wave.shape[-1]} samples is shorter than one 40 ms patch")
        # The official front end runs with autocast disabled; so does the BatchNorm on its output.
        with torch.autocast(device_type=wave.device.type, enabled=False):
            mel_db, frames = self.frontend.features(wave, lengths)
            spec = self.model.normalise(mel_db)  # [B, 1, M, frames]
        real = None if lengths is None else [n // self.cfg.patch_frames for n in frames]
        patches, prefix = self.model(spec, layers, real)
        return EncoderOutput(layers=patches, prefix=prefix, grid=(patches[layers[0]].shape[1], 1))


def create_dasheng(checkpoint: str | None = None, random_init: bool = False, num_heads: int | None = None,
                   seed: int = 0, **sizes) -> Dasheng:
    """Registry factory: Dasheng from an official `{'model', 'config'}` file, or seeded random weights (base sizes)."""
    if checkpoint is None and not random_init:
        raise ConfigError("dasheng needs --checkpoint (an official file such as dasheng_base.pt)")
    if checkpoint is not None:
        if sizes:
            raise ConfigError(f"dasheng: sizes come from the checkpoint; drop {', '.join(sorted(sizes))}")
        from embedcache.checkpoints import load_checkpoint, sha256_file

        source = str(checkpoint)
        data = load_checkpoint(checkpoint)
        if "model" not in data or "config" not in data:
            raise ConfigError(
                f"{source}: not an official Dasheng checkpoint (expected 'model' and 'config', found {sorted(data)})"
            )
        cfg = dasheng_config_from_checkpoint(data["config"], data["model"], source, num_heads)
        frontend_state, model_state = dasheng_state_dicts(data["model"], cfg, source)
        provenance = {"checkpoint": source, "checkpoint_sha256": sha256_file(checkpoint)}
        encoder = Dasheng(cfg, provenance)
        encoder.frontend.load_state_dict(frontend_state, strict=True)
        encoder.model.load_state_dict(model_state, strict=True)
        return encoder
    fields = {field.name for field in dataclasses.fields(DashengConfig)}
    unknown = sorted(set(sizes) - fields)
    if unknown:
        raise ConfigError(f"dasheng: unknown options {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    if num_heads is not None:
        sizes["num_heads"] = num_heads
    if "patch_size" in sizes:
        sizes["patch_size"] = tuple(sizes["patch_size"])
    provenance = {"random_init": True, "seed": seed, "options": {**sizes, "seed": seed}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = Dasheng(DashengConfig(**sizes), provenance)
    return encoder
