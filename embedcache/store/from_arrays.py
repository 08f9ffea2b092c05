"""Build a complete store straight from in-memory arrays (tests, synthetic benchmarks, imports)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from embedcache.store import layout
from embedcache.store.reader import TokenStore
from embedcache.store.writer import (
    StoreSpec,
    create_store,
    fingerprint_of,
    mark_complete_if_done,
    write_chunk,
)


def _as_tensor(array) -> torch.Tensor:
    return array if isinstance(array, torch.Tensor) else torch.from_numpy(np.asarray(array))


def write_store(
    path: str | Path,
    tokens: dict[int, np.ndarray | torch.Tensor],
    labels: np.ndarray,
    label_names: Sequence[str],
    clip_ids: Sequence[str],
    splits: Sequence[str],
    grid: tuple[int, int],
    prefix: dict[int, np.ndarray | torch.Tensor] | None = None,
    valid_tokens: np.ndarray | None = None,
    dtype: str = "float16",
    chunk_clips: int | None = None,
    compression: str = "zstd",
    provenance: dict | None = None,
) -> TokenStore:
    """Write tokens {layer: [N, T, D]} and their labels as a complete store, and open it."""
    layers = sorted(tokens)
    n, num_tokens, embed_dim = _as_tensor(tokens[layers[0]]).shape
    if num_tokens != grid[0] * grid[1]:
        raise ValueError(f"grid {grid} has {grid[0] * grid[1]} tokens but the arrays have T = {num_tokens}")
    num_prefix = _as_tensor(prefix[layers[0]]).shape[1] if prefix else 0
    split_names = list(dict.fromkeys(splits))
    spec = StoreSpec(
        n_clips=int(n), num_tokens=int(num_tokens), num_prefix=int(num_prefix), embed_dim=int(embed_dim),
        grid=tuple(grid), layers=layers, dtype=dtype,
        chunk_clips=chunk_clips or layout.choose_chunk_clips(num_tokens, embed_dim, dtype, n),
        label_names=list(label_names), split_names=split_names, compression=compression,
    )
    valid = np.full(n, num_tokens, np.int32) if valid_tokens is None else np.asarray(valid_tokens, np.int32)
    provenance = {"source": "arrays", **(provenance or {})}
    group = create_store(
        path, spec, clip_ids, np.asarray(labels, np.uint8),
        np.array([split_names.index(s) for s in splits], np.uint8), np.zeros(n, np.int64),
        provenance, fingerprint_of(provenance),
    )
    for chunk in range(spec.n_chunks):
        start, stop = spec.chunk_range(chunk)
        chunk_tokens = {layer: layout.encode(_as_tensor(tokens[layer])[start:stop], dtype) for layer in layers}
        chunk_prefix = {
            layer: layout.encode(_as_tensor(prefix[layer])[start:stop], layout.prefix_dtype(dtype)) for layer in layers
        } if prefix else {}
        write_chunk(group, spec, chunk, {layer: pair[0] for layer, pair in chunk_tokens.items()},
                    {layer: pair[0] for layer, pair in chunk_prefix.items()}, valid[start:stop],
                    scales={layer: pair[1] for layer, pair in chunk_tokens.items()})
    mark_complete_if_done(group)
    return TokenStore.open(path)
