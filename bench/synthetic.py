"""Synthetic token stores for the benchmarks: class events planted in noise, written chunk by chunk.

Each class c owns a unit direction v_c [D] and a frequency row f_c = c % n_freq; a clip with label c gets
`event_strength * v_c` added to a short run of tokens at one random time step on row f_c, over N(0, 1) noise.
Probes can learn these stores, and a prototype head's similarity map lights up where the events are.
Chunks are generated on the fly (on the GPU when asked), so a store larger than memory can be written.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embedcache.store import TokenStore, layout
from embedcache.store.writer import StoreSpec, create_store, fingerprint_of, mark_complete_if_done, write_chunk


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape and content of a synthetic store; plain data recorded in the store's provenance."""

    n_clips: int = 1000
    grid: tuple[int, int] = (8, 4)
    embed_dim: int = 64
    # prefix (cls-like) tokens per clip: N(0, 1) noise plus the mean of the clip's event directions
    num_prefix: int = 0
    n_classes: int = 10
    max_labels: int = 2
    event_tokens: int = 2
    event_strength: float = 3.0
    # train / valid / test fractions, in that order
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def token_nbytes(self, dtype: str) -> int:
        """Uncompressed bytes of the token and prefix arrays in `dtype`."""
        return self.n_clips * (self.num_tokens + self.num_prefix) * self.embed_dim * layout.itemsize(dtype)


def class_directions(spec: SyntheticSpec) -> torch.Tensor:
    """The unit direction of every class [C, D]."""
    generator = torch.Generator().manual_seed(spec.seed)
    directions = torch.randn(spec.n_classes, spec.embed_dim, generator=generator)
    return torch.nn.functional.normalize(directions, dim=1)


def label_plan(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels [N, C] uint8, event time steps [N, C] int (-1: no event) and split codes [N] (0 train, 1 valid, 2 test).

    Every class gets a positive clip in every split whose share holds at least C clips (clip i starts with class
    i % C), so probes never meet a class with no positive.
    """
    rng = np.random.default_rng([spec.seed, 1])
    n, c = spec.n_clips, spec.n_classes
    labels = np.zeros((n, c), np.uint8)
    for i in range(n):
        extra = rng.choice(c, size=rng.integers(0, spec.max_labels), replace=False)
        labels[i, [i % c, *extra]] = 1
    onsets = np.where(labels > 0, rng.integers(0, max(1, spec.grid[0] - spec.event_tokens + 1), size=(n, c)), -1)
    # Whole blocks of C clips (one of each class first) go to train, valid, test in order.
    blocks = -(-n // c)
    edges = np.cumsum(spec.split_fractions) / sum(spec.split_fractions) * blocks
    splits = np.searchsorted(np.round(edges[:-1]), np.arange(n) // c, side="right").astype(np.uint8)
    return labels, onsets, splits


def synthetic_chunk(
    spec: SyntheticSpec, directions: torch.Tensor, labels: np.ndarray, onsets: np.ndarray, start: int, stop: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Tokens [stop - start, T, D] float32 of clips start..stop, a pure function of (spec, start, stop)."""
    n_time, n_freq = spec.grid
    generator = torch.Generator(device=device).manual_seed(spec.seed * 1_000_003 + start)
    tokens = torch.randn(stop - start, n_time, n_freq, spec.embed_dim, generator=generator, device=device)
    directions = directions.to(device)
    rows, classes = np.nonzero(labels[start:stop])
    for row, c in zip(rows.tolist(), classes.tolist()):
        onset = int(onsets[start + row, c])
        stop_t = min(n_time, onset + spec.event_tokens)
        tokens[row, onset:stop_t, c % n_freq] += spec.event_strength * directions[c]
    return tokens.reshape(stop - start, spec.num_tokens, spec.embed_dim)


def synthetic_prefix(
    spec: SyntheticSpec, directions: torch.Tensor, labels: np.ndarray, start: int, stop: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Prefix tokens [stop - start, P, D] float32: noise plus the mean event direction of each clip's labels."""
    generator = torch.Generator(device=device).manual_seed(spec.seed * 1_000_003 + start + 7)
    prefix = torch.randn(stop - start, spec.num_prefix, spec.embed_dim, generator=generator, device=device)
    weights = torch.from_numpy(labels[start:stop].astype(np.float32)).to(device)  # [B, C]
    means = weights @ directions.to(device) / weights.sum(dim=1, keepdim=True).clamp(min=1)
    return prefix + spec.event_strength * means[:, None, :]


def write_synthetic_store(
    path: str | Path,
    spec: SyntheticSpec,
    dtype: str = "float16",
    compression: str = "zstd",
    chunk_clips: int | None = None,
    device: torch.device | str = "cpu",
    write_threads: int = 1,
) -> TokenStore:
    """Write a complete synthetic store at `path`, one chunk at a time, and open it."""
    labels, onsets, split_codes = label_plan(spec)
    directions = class_directions(spec).to(device)
    store_spec = StoreSpec(
        n_clips=spec.n_clips, num_tokens=spec.num_tokens, num_prefix=spec.num_prefix, embed_dim=spec.embed_dim,
        grid=tuple(spec.grid), layers=[0], dtype=dtype,
        chunk_clips=chunk_clips or layout.choose_chunk_clips(spec.num_tokens, spec.embed_dim, dtype, spec.n_clips),
        label_names=[f"class_{c:03d}" for c in range(spec.n_classes)], split_names=["train", "valid", "test"],
        compression=compression,
    )
    provenance = {
        "source": "synthetic",
        "synthetic": {**spec.__dict__, "grid": list(spec.grid), "split_fractions": list(spec.split_fractions)},
        "encoder": {"name": "synthetic", "num_layers": 1, "embed_dim": spec.embed_dim},
    }
    group = create_store(
        path, store_spec, [f"syn{i:07d}" for i in range(spec.n_clips)], labels, split_codes,
        np.zeros(spec.n_clips, np.int64), provenance, fingerprint_of(provenance),
    )
    valid = np.full(spec.n_clips, spec.num_tokens, np.int32)

    def store_chunk(chunk: int, tokens: tuple, prefix: tuple | None) -> None:
        # tokens, prefix: (values as stored, int8 scales or None), as layout.encode gives them
        start, stop = store_spec.chunk_range(chunk)
        write_chunk(group, store_spec, chunk, {0: tokens[0]}, {0: prefix[0]} if spec.num_prefix else {},
                    valid[start:stop], scales={0: tokens[1]})

    # Generation stays on this thread (one device stream); chunk writes (codecs, file I/O) overlap it.
    with ThreadPoolExecutor(max_workers=max(1, write_threads)) as pool:
        pending = []
        for chunk in range(store_spec.n_chunks):
            start, stop = store_spec.chunk_range(chunk)
            tokens = synthetic_chunk(spec, directions, labels, onsets, start, stop, device)
            prefix = synthetic_prefix(spec, directions, labels, start, stop, device) if spec.num_prefix else None
            pending.append(pool.submit(
                store_chunk, chunk, layout.encode(tokens, dtype),
                None if prefix is None else layout.encode(prefix, layout.prefix_dtype(dtype)),
            ))
            if len(pending) > 2 * max(1, write_threads):
                pending.pop(0).result()
        for future in pending:
            future.result()
    mark_complete_if_done(group)
    return TokenStore.open(path)
