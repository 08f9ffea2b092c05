"""The token store's layout: array names, dtypes, chunking and the attribute schema (format version 4).

A store is a plain Zarr v3 group that anyone can open with `zarr.open_group` and no embedcache:

    zarr.json                  attributes["embedcache"] =
                                 {format_version, status, layout, provenance, fingerprint, skipped}
    tokens/layer_<i>           [N, T, D] patch tokens of block i, time-major (t * n_freq + f); chunks = whole clips
    prefix/layer_<i>           [N, P, D] prefix (cls, distillation) tokens of block i; absent when P = 0;
                               float16 in an int8 store                                          (format 4)
    scales/layer_<i>           [N, T] float16 per-token scales of int8 tokens (dtype "int8" only)    (format 3)
    valid_tokens               [N] int32: row n's first valid_tokens[n] tokens hold real audio, the rest is padding
    num_samples                [N] int64: real samples of the row's audio (the clip, or one window) before cropping
    recording_ids              [N] UTF-8: the manifest clip (recording) each row comes from        (format 2)
    offsets                    [N] int64: first sample of the row in its recording (windows; else 0) (format 2)
    lost_samples               [N] int64: samples of the row's audio cropped away (0 unless cropped) (format 2)
    labels                     [N, C] uint8 multi-hot, columns in layout.label_names order
    splits                     [N] uint8 codes into layout.split_names
    clip_ids                   [N] UTF-8 strings
    chunk_done                 [n_chunks] uint8 completion markers, one object per chunk, set after its data is written

bfloat16 has no numpy dtype: it is stored as its raw uint16 bits, with layout.dtype = "bfloat16".
int8 tokens are symmetric codes -127..127 with one float16 scale per token (its absmax / 127, rounded up):
token = codes * scale, `g["tokens/layer_0"][:8].astype(np.float32) * g["scales/layer_0"][:8][..., None]`.
An int8 store keeps its few prefix tokens in float16 (format 4): the cls token is what pooled heads read, and its
int8 error, small per token, is large against how little cls vectors differ between clips. Format 3 int8 stores
quantised them too, with `prefix_scales/layer_<i>` [N, P] beside them; they are still read.
Sample counts and offsets are at provenance.encoder.sample_rate. Format 1 stores (no row arrays) are still read:
each row is its own recording, at offset 0, with nothing known to be cropped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
# The first format whose layout may hold int8 tokens (with their scales arrays).
INT8_FORMAT = 3
# The first format whose int8 stores keep prefix tokens in float16 (format 3 quantised them, with prefix_scales).
FLOAT_PREFIX_FORMAT = 4
# Per-row arrays added in format 2: name -> (numpy dtype name as verify reports it, what it holds).
ROW_ARRAYS = {
    "recording_ids": "string",
    "offsets": "int64",
    "lost_samples": "int64",
}
ATTRS_KEY = "embedcache"
STATUS_WRITING = "writing"
STATUS_COMPLETE = "complete"

# Uncompressed bytes per token chunk to aim for: a few MB keeps object-store reads efficient
# and lets a streaming reader shuffle at chunk granularity.
TARGET_CHUNK_BYTES = 4 * 1024 * 1024

DTYPES = ("float16", "bfloat16", "float32", "int8")
# Dtypes stored as integer codes with a per-token scale beside them.
QUANTIZED = ("int8",)
_STORED_NUMPY = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32, "int8": np.int8}
_TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "int8": torch.int8}
INT8_MAX = 127  # symmetric codes: -128 is never written
SCALE_DTYPE = "float16"
SCALE_ITEMSIZE = 2
# What an int8 store keeps its prefix tokens in (format 4 on).
QUANTIZED_PREFIX_DTYPE = "float16"


def tokens_path(layer: int) -> str:
    return f"tokens/layer_{layer}"


def prefix_path(layer: int) -> str:
    return f"prefix/layer_{layer}"


def scales_path(layer: int) -> str:
    """Per-token scales [N, T] of layer `layer`'s int8 tokens."""
    return f"scales/layer_{layer}"


def prefix_scales_path(layer: int) -> str:
    """Per-token scales [N, P] of layer `layer`'s int8 prefix tokens."""
    return f"prefix_scales/layer_{layer}"


def is_quantized(dtype: str) -> bool:
    """Whether tokens of `dtype` are stored as codes with per-token scales (int8)."""
    return dtype in QUANTIZED


def prefix_dtype(dtype: str, version: int = FORMAT_VERSION) -> str:
    """The dtype prefix tokens are stored in, in a store of token `dtype` and format `version`: float16 for int8
    from format 4 on, else the tokens' own."""
    return QUANTIZED_PREFIX_DTYPE if is_quantized(dtype) and version >= FLOAT_PREFIX_FORMAT else dtype


def has_quantized_prefix(dtype: str, num_prefix: int, version: int) -> bool:
    """Whether a store's prefix tokens are int8 codes with prefix_scales (format 3 int8 stores with a prefix)."""
    return num_prefix > 0 and is_quantized(prefix_dtype(dtype, version))


def quantize(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes [..., D] and float16 scales [...] of `tensor` [..., D], one scale per token (last axis).

    The scale is the token's absmax / 127 rounded up to a float16, so no code is clipped and every element is within
    scale / 2 of codes * scale. NaN or inf tokens give a non-finite scale, which the writer refuses.
    """
    values = tensor.detach().float()
    absmax = values.abs().amax(dim=-1)
    scales = _float16_at_least(absmax / INT8_MAX)
    divisor = torch.where(scales > 0, scales.float(), torch.ones((), device=values.device))
    codes = torch.round(values / divisor.unsqueeze(-1)).clamp_(-INT8_MAX, INT8_MAX)
    codes = torch.where(torch.isfinite(codes), codes, torch.zeros((), device=values.device))
    return codes.to(torch.int8), scales


def _float16_at_least(values: torch.Tensor) -> torch.Tensor:
    """The smallest float16 >= each value (values >= 0; inf beyond float16's range, NaN stays NaN)."""
    rounded = values.to(torch.float16)
    # For a non-negative float16, the next bit pattern up is the next value up (any device, no nextafter needed).
    up = (rounded.view(torch.int16) + 1).view(torch.float16)
    return torch.where(rounded.float() < values, up, rounded)


def dequantize(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 tokens [..., D] from int8 codes [..., D] and their scales [...], on the codes' device."""
    return codes.float() * scales.to(codes.device).float().unsqueeze(-1)


def encode(tensor: torch.Tensor, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Tensor [..., D] -> (numpy array in the on-disk representation of `dtype`, float16 scales [...] or None)."""
    if is_quantized(dtype):
        codes, scales = quantize(tensor)
        return codes.cpu().numpy(), scales.cpu().numpy()
    return to_stored(tensor, dtype), None


def layer_arrays(layer: int, dtype: str, num_prefix: int, version: int = FORMAT_VERSION) -> list[tuple[str, str]]:
    """(path, part) of every array one layer owns in format `version`: "tokens", "prefix", "scales" and (format 3
    int8 stores only) "prefix_scales", the parts present."""
    arrays = [(tokens_path(layer), "tokens")]
    if num_prefix:
        arrays.append((prefix_path(layer), "prefix"))
    if is_quantized(dtype):
        arrays.append((scales_path(layer), "scales"))
    if has_quantized_prefix(dtype, num_prefix, version):
        arrays.append((prefix_scales_path(layer), "prefix_scales"))
    return arrays


def part_dtype(part: str, dtype: str, version: int = FORMAT_VERSION) -> str:
    """The dtype one layer array of `part` holds, in a store of token `dtype` and format `version`."""
    if part.endswith("scales"):
        return SCALE_DTYPE
    return prefix_dtype(dtype, version) if part == "prefix" else dtype


def stored_numpy_dtype(dtype: str) -> type:
    """The numpy dtype that holds `dtype` on disk (bfloat16 -> its uint16 bits)."""
    if dtype not in _STORED_NUMPY:
        raise ValueError(f"dtype {dtype!r} is not supported: choose one of {', '.join(DTYPES)}")
    return _STORED_NUMPY[dtype]


def torch_dtype(dtype: str) -> torch.dtype:
    return _TORCH[dtype]


def itemsize(dtype: str) -> int:
    return np.dtype(stored_numpy_dtype(dtype)).itemsize


def token_bytes(dtype: str, embed_dim: int) -> int:
    """Bytes one token takes on disk before compression: its D values and, for int8, its float16 scale."""
    return embed_dim * itemsize(dtype) + (SCALE_ITEMSIZE if is_quantized(dtype) else 0)


def to_stored(tensor: torch.Tensor, dtype: str) -> np.ndarray:
    """Tensor -> numpy array in the on-disk representation of a float `dtype` (int8 needs scales: `encode`)."""
    if is_quantized(dtype):
        raise ValueError(f"to_stored: {dtype} tokens need per-token scales; use layout.encode")
    converted = tensor.detach().to("cpu", torch_dtype(dtype)).contiguous()
    if dtype == "bfloat16":
        return converted.view(torch.int16).numpy().view(np.uint16)
    return converted.numpy()


def from_stored(array: np.ndarray, dtype: str) -> torch.Tensor:
    """On-disk numpy array -> tensor of `dtype`."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))


def nonfinite_rows(array: np.ndarray, dtype: str) -> np.ndarray:
    """Indices of the rows (first axis) of an on-disk array of `dtype` that hold NaN or inf."""
    if dtype == "bfloat16":  # exponent bits all ones: inf or NaN
        bad = (np.ascontiguousarray(array).view(np.uint16) & 0x7F80) == 0x7F80
    else:
        bad = ~np.isfinite(array)
    return np.flatnonzero(bad.reshape(len(array), -1).any(axis=1))


def choose_chunk_clips(num_tokens: int, embed_dim: int, dtype: str, n_clips: int) -> int:
    """Clips per chunk so one layer's chunk holds about TARGET_CHUNK_BYTES."""
    clip_bytes = max(1, num_tokens * embed_dim * itemsize(dtype))
    return int(max(1, min(n_clips, round(TARGET_CHUNK_BYTES / clip_bytes))))


@dataclass
class StoreSpec:
    """Shapes and naming of a store: everything needed to create its arrays."""

    n_clips: int
    num_tokens: int
    num_prefix: int
    embed_dim: int
    grid: tuple[int, int]
    layers: list[int]
    dtype: str
    chunk_clips: int
    label_names: list[str]
    split_names: list[str]
    compression: str = "zstd"
    extra: dict = field(default_factory=dict)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_clips // self.chunk_clips)

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_clips
        return start, min(self.n_clips, start + self.chunk_clips)

    def token_nbytes(self) -> int:
        """Uncompressed bytes of all token and prefix arrays (and int8 scales), as this format writes them."""
        per_clip = (self.num_tokens * token_bytes(self.dtype, self.embed_dim)
                    + self.num_prefix * token_bytes(prefix_dtype(self.dtype), self.embed_dim))
        return self.n_clips * per_clip * len(self.layers)

    def to_attrs(self) -> dict:
        attrs = asdict(self)
        attrs["grid"] = list(self.grid)
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict) -> StoreSpec:
        values = dict(attrs)
        values["grid"] = tuple(values["grid"])
        return cls(**values)
