"""Reading token stores: metadata as numpy, tokens as torch tensors, whole chunks at a time."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import zarr

from embedcache.errors import StoreError
from embedcache.store import layout
from embedcache.store.writer import StoreSpec, pending_chunks, store_attrs


class TokenStore:
    """A read-only view of one token store; open it with `TokenStore.open(path)`."""

    def __init__(self, group: zarr.Group, path: str):
        self._group = group
        self.path = path
        self._attrs = store_attrs(group)
        self.spec = StoreSpec.from_attrs(self._attrs["layout"])

    @classmethod
    def open(cls, path: str | Path, allow_incomplete: bool = False) -> TokenStore:
        """Open a store read-only; refuse one that is still being written unless `allow_incomplete`."""
        try:
            group = zarr.open_group(str(path), mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise StoreError(
                f"{path}: no token store there (run `embedcache extract ... --out {path}` first)"
            ) from None
        store = cls(group, str(path))
        if not allow_incomplete and not store.is_complete:
            missing = len(pending_chunks(group))
            raise StoreError(
                f"{path}: the store is still being written or was interrupted ({missing} of "
                f"{store.spec.n_chunks} chunks missing); finish it by re-running the same `embedcache extract` command"
            )
        return store

    # -- metadata ------------------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return self._attrs["status"]

    @property
    def is_complete(self) -> bool:
        return self.status == layout.STATUS_COMPLETE

    @property
    def provenance(self) -> dict:
        return self._attrs["provenance"]

    @property
    def skipped(self) -> list[dict]:
        return self._attrs.get("skipped", [])

    @property
    def n_clips(self) -> int:
        return self.spec.n_clips

    @property
    def layers(self) -> list[int]:
        return list(self.spec.layers)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.spec.grid)

    @property
    def num_tokens(self) -> int:
        return self.spec.num_tokens

    @property
    def num_prefix(self) -> int:
        return self.spec.num_prefix

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    @property
    def dtype(self) -> str:
        return self.spec.dtype

    @property
    def chunk_clips(self) -> int:
        return self.spec.chunk_clips

    @property
    def label_names(self) -> list[str]:
        return list(self.spec.label_names)

    @property
    def split_names(self) -> list[str]:
        return list(self.spec.split_names)

    @cached_property
    def labels(self) -> np.ndarray:
        """[N, C] uint8 multi-hot labels."""
        return self._group["labels"][:]

    @cached_property
    def is_multilabel(self) -> bool:
        """True unless every clip has exactly one label."""
        return bool((self.labels.sum(axis=1) != 1).any())

    @cached_property
    def clip_ids(self) -> np.ndarray:
        return np.array(self._group["clip_ids"][:].tolist(), dtype=str)

    @cached_property
    def split_codes(self) -> np.ndarray:
        return self._group["splits"][:]

    @cached_property
    def valid_tokens(self) -> np.ndarray:
        return self._group["valid_tokens"][:]

    @cached_property
    def num_samples(self) -> np.ndarray:
        return self._group["num_samples"][:]

    def split_indices(self, name: str) -> np.ndarray:
        """Sorted clip indices of split `name`."""
        if name not in self.spec.split_names:
            raise StoreError(f"{self.path}: no split {name!r}; this store has splits {self.split_names}")
        return np.flatnonzero(self.split_codes == self.spec.split_names.index(name)).astype(np.int64)

    def resolve_layer(self, layer: int | None) -> int:
        """None -> the last stored layer; negative -> counted from the encoder's last block."""
        if layer is None:
            return self.spec.layers[-1]
        if layer < 0:
            layer += int(self.provenance.get("encoder", {}).get("num_layers", max(self.spec.layers) + 1))
        if layer not in self.spec.layers:
            raise StoreError(f"{self.path}: layer {layer} was not extracted; stored layers are {self.layers}")
        return layer

    # -- tokens --------------------------------------------------------------------------------------------
    def token_array(self, layer: int | None = None) -> zarr.Array:
        """The raw Zarr array [N, T, D] of one layer (bfloat16 appears as uint16 bits)."""
        return self._group[layout.tokens_path(self.resolve_layer(layer))]

    def read_tokens(self, layer: int | None, start: int, stop: int) -> torch.Tensor:
        """Tokens [stop - start, T, D] of a contiguous clip range, in the stored dtype."""
        return layout.from_stored(self.token_array(layer)[start:stop], self.dtype)

    def read_prefix(self, layer: int | None, start: int, stop: int) -> torch.Tensor | None:
        """Prefix tokens [stop - start, P, D], or None when the encoder has none."""
        if not self.num_prefix:
            return None
        array = self._group[layout.prefix_path(self.resolve_layer(layer))]
        return layout.from_stored(array[start:stop], self.dtype)

    def token_mask(self, start: int, stop: int) -> torch.Tensor:
        """[stop - start, T] bool: True where a token holds real audio."""
        valid = torch.from_numpy(self.valid_tokens[start:stop].astype(np.int64))
        return torch.arange(self.num_tokens)[None, :] < valid[:, None]

    def token_nbytes(self, layer: int | None = None) -> int:
        """Uncompressed bytes of one layer's tokens."""
        return self.n_clips * self.num_tokens * self.embed_dim * layout.itemsize(self.dtype)

    def disk_nbytes(self) -> int | None:
        """Bytes on disk for a local store, None for remote ones."""
        root = Path(self.path)
        if not root.is_dir():
            return None
        return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())

    def __repr__(self) -> str:
        return f"TokenStore({self.path!r}, clips={self.n_clips}, layers={self.layers}, grid={self.grid})"
