"""HDF5 interop: export a token store to one .h5 file with the same arrays, and import one back.

File layout (mirrors the Zarr store; readable with h5py alone):

    /tokens/layer_<i>   [N, T, D] float16/float32, or uint16 holding bfloat16 bits (attribute dtype="bfloat16")
    /prefix/layer_<i>   [N, P, D] (absent when P = 0)
    /valid_tokens [N] int32, /num_samples [N] int64, /labels [N, C] uint8, /splits [N] uint8, /clip_ids [N] UTF-8
    /recording_ids [N] UTF-8, /offsets [N] int64, /lost_samples [N] int64 (format 2)
    root attributes: embedcache = JSON of the store's attributes (format_version, status, layout, provenance,
    fingerprint, skipped); grid, label_names, split_names, dtype repeated as plain attributes for convenience.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from embedcache.errors import StoreError
from embedcache.store import layout, urls
from embedcache.store.reader import TokenStore
from embedcache.store.writer import (
    RowInfo,
    StoreSpec,
    create_store,
    mark_complete_if_done,
    remove_store,
    store_attrs,
    write_chunk,
)

HDF5_FORMAT = "embedcache-hdf5"
PER_CLIP = {"valid_tokens": "int32", "num_samples": "int64", "labels": "uint8", "splits": "uint8"}


def export_hdf5(
    store_url: str | Path, out: str | Path, compression: str | None = None, overwrite: bool = False
) -> Path:
    """Write a complete store to `out` (.h5), chunk by chunk; compression: None, "gzip" or "lzf"."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out}: already exists; choose another name or pass --overwrite")
    store = TokenStore.open(store_url)
    attrs = store_attrs(store._group)
    spec = store.spec
    stored = layout.stored_numpy_dtype(spec.dtype)
    partial = out.with_name(out.name + ".partial")
    with h5py.File(partial, "w") as handle:
        handle.attrs["format"] = HDF5_FORMAT
        handle.attrs[layout.ATTRS_KEY] = json.dumps(attrs)
        handle.attrs["grid"] = np.asarray(spec.grid, np.int64)
        handle.attrs["dtype"] = spec.dtype
        handle.attrs["label_names"] = np.asarray(spec.label_names, dtype=h5py.string_dtype("utf-8"))
        handle.attrs["split_names"] = np.asarray(spec.split_names, dtype=h5py.string_dtype("utf-8"))
        paths = [layout.tokens_path(layer) for layer in spec.layers]
        if spec.num_prefix:
            paths += [layout.prefix_path(layer) for layer in spec.layers]
        for path in paths:
            width = spec.num_tokens if path.startswith("tokens/") else spec.num_prefix
            dataset = handle.create_dataset(
                path, shape=(spec.n_clips, width, spec.embed_dim), dtype=stored,
                chunks=(min(spec.chunk_clips, max(1, spec.n_clips)), width, spec.embed_dim), compression=compression,
            )
            dataset.attrs["dtype"] = spec.dtype
            if spec.dtype == "bfloat16":
                dataset.attrs["encoding"] = "bfloat16 stored as its raw uint16 bits"
            for chunk in range(spec.n_chunks):
                start, stop = spec.chunk_range(chunk)
                dataset[start:stop] = store.read_rows(path, start, stop)  # checked: damage stops the export
        for name in PER_CLIP:
            handle.create_dataset(name, data=store.read_rows(name), compression=compression)
        handle.create_dataset("clip_ids", data=np.asarray(store.clip_ids, dtype=object),
                              dtype=h5py.string_dtype("utf-8"))
        if store.format_version >= 2:
            handle.create_dataset("recording_ids", data=np.asarray(store.recording_ids, dtype=object),
                                  dtype=h5py.string_dtype("utf-8"))
            handle.create_dataset("offsets", data=store.offsets, compression=compression)
            handle.create_dataset("lost_samples", data=store.lost_samples, compression=compression)
    partial.replace(out)
    return out


def _read_attrs(handle: h5py.File, path: Path) -> dict:
    if handle.attrs.get("format") != HDF5_FORMAT or layout.ATTRS_KEY not in handle.attrs:
        raise StoreError(f"{path}: not an embedcache HDF5 export (no '{layout.ATTRS_KEY}' attribute); write one with "
                         "`embedcache export STORE out.h5`")
    try:
        attrs = json.loads(handle.attrs[layout.ATTRS_KEY])
        spec = StoreSpec.from_attrs(attrs["layout"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise StoreError(f"{path}: attribute '{layout.ATTRS_KEY}' is not a valid store description ({error})") from None
    if attrs.get("format_version") not in layout.READABLE_VERSIONS:
        raise StoreError(f"{path}: store format version {attrs.get('format_version')!r}, this embedcache reads "
                         f"versions {', '.join(map(str, layout.READABLE_VERSIONS))}")
    attrs["_spec"] = spec
    return attrs


def _dataset(handle: h5py.File, path: Path, name: str, shape: tuple, dtype) -> h5py.Dataset:
    """The dataset `name`, refusing a missing one, another shape, or a non-numeric dtype (opaque, reference...)."""
    if name not in handle or not isinstance(handle[name], h5py.Dataset):
        raise StoreError(f"{path}: dataset /{name} is missing")
    dataset = handle[name]
    if tuple(dataset.shape) != tuple(shape):
        raise StoreError(f"{path}: /{name} has shape {list(dataset.shape)}, the layout promises {list(shape)}")
    if dtype == "string":
        if h5py.check_string_dtype(dataset.dtype) is None:
            raise StoreError(f"{path}: /{name} must hold strings, it holds {dataset.dtype}")
    elif dataset.dtype != np.dtype(dtype):
        raise StoreError(f"{path}: /{name} has dtype {dataset.dtype}, the layout promises {np.dtype(dtype)}")
    return dataset


def _strings(values: np.ndarray) -> list[str]:
    return [value.decode("utf-8") if isinstance(value, bytes) else str(value) for value in values]


def import_hdf5(path: str | Path, out_url: str | Path, overwrite: bool = False) -> TokenStore:
    """Create the store `out_url` from an embedcache HDF5 export; layout, provenance and fingerprint are kept."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    with h5py.File(path, "r") as handle:
        attrs = _read_attrs(handle, path)
        spec: StoreSpec = attrs.pop("_spec")
        n = spec.n_clips
        stored = layout.stored_numpy_dtype(spec.dtype)
        arrays = {name: _dataset(handle, path, name, (n,) if name != "labels" else (n, len(spec.label_names)),
                                 dtype)[()] for name, dtype in PER_CLIP.items()}
        clip_ids = _strings(_dataset(handle, path, "clip_ids", (n,), "string")[()])
        rows = RowInfo.whole(clip_ids)
        if attrs["format_version"] >= 2:
            rows = RowInfo(
                _strings(_dataset(handle, path, "recording_ids", (n,), "string")[()]),
                _dataset(handle, path, "offsets", (n,), "int64")[()],
                _dataset(handle, path, "lost_samples", (n,), "int64")[()],
            )
        tokens = {layer: _dataset(handle, path, layout.tokens_path(layer), (n, spec.num_tokens, spec.embed_dim),
                                  stored) for layer in spec.layers}
        prefix = {layer: _dataset(handle, path, layout.prefix_path(layer), (n, spec.num_prefix, spec.embed_dim),
                                  stored) for layer in spec.layers} if spec.num_prefix else {}
        if overwrite:
            remove_store(out_url)
        elif urls.store_exists(out_url):
            raise StoreError(f"{out_url}: a store is already there; choose another destination or pass --overwrite")
        group = create_store(
            out_url, spec, clip_ids, arrays["labels"], arrays["splits"], arrays["num_samples"],
            attrs["provenance"], attrs["fingerprint"], attrs.get("skipped", []), rows,
        )
        for chunk in range(spec.n_chunks):
            start, stop = spec.chunk_range(chunk)
            write_chunk(
                group, spec, chunk, {layer: tokens[layer][start:stop] for layer in spec.layers},
                {layer: prefix[layer][start:stop] for layer in prefix}, arrays["valid_tokens"][start:stop],
            )
    mark_complete_if_done(group)
    return TokenStore.open(out_url)
