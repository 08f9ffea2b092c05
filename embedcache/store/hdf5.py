"""HDF5 interop: export a token store to one .h5 file with the same arrays, and import one back.

File layout (mirrors the Zarr store; readable with h5py alone):

    /tokens/layer_<i>   [N, T, D] float16/float32, or uint16 holding bfloat16 bits (attribute dtype="bfloat16")
    /prefix/layer_<i>   [N, P, D] (absent when P = 0)
    /prefix/layer_<i>   float16 in an int8 store (format 4 on)
    /scales/layer_<i>   [N, T] float16: int8 tokens' per-token scales (int8 only); a format 3 int8 export also has
                        /prefix_scales/layer_<i> [N, P] beside its int8 prefix, which an import turns to float16
    /valid_tokens [N] int32, /num_samples [N] int64, /labels [N, C] uint8, /splits [N] uint8, /clip_ids [N] UTF-8
    /recording_ids [N] UTF-8, /offsets [N] int64, /lost_samples [N] int64 (format 2)
    /events/recording_ids [E] UTF-8, /events/onsets, /events/offsets [E] int64, /events/labels [E] int32: sound
    events (strong labels), when the store keeps them (store/events.py)
    root attributes: embedcache = JSON of the store's attributes (format_version, status, layout, provenance,
    fingerprint, skipped); grid, label_names, split_names, dtype repeated as plain attributes for convenience.

An imported file passes the trust boundary (store.safety) before any dataset is read: plain datasets only (no
external or soft links, virtual datasets or external raw storage), declared sizes that fit the file and a memory
budget, then attributes checked against the store schema; tokens are copied one chunk at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from embedcache.errors import StoreError
from embedcache.events import Events
from embedcache.store import events as store_events
from embedcache.store import layout, safety, schema, urls
from embedcache.store.reader import TokenStore
from embedcache.store.writer import (
    RowInfo,
    StoreSpec,
    create_store,
    mark_complete_if_done,
    store_attrs,
    write_chunk,
)

HDF5_FORMAT = "embedcache-hdf5"
PER_CLIP = {"valid_tokens": "int32", "num_samples": "int64", "labels": "uint8", "splits": "uint8"}


@contextmanager
def _writing(out: str | Path) -> Iterator[None]:
    """Failed writes to `out` as one line naming it (permission denied, disk full, a file in the way)."""
    try:
        yield
    except OSError as error:
        raise urls.write_error(out, error) from error


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Whatever h5py raises on a damaged or odd file, as one line naming it."""
    try:
        yield
    except (OSError, KeyError, TypeError, ValueError, RuntimeError, RecursionError) as error:
        raise StoreError(f"{path}: cannot be read as an embedcache HDF5 export ({type(error).__name__}: "
                         f"{str(error)[:200]}); re-export it with `embedcache export`") from None


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def export_hdf5(
    store_url: str | Path, out: str | Path, compression: str | None = None, overwrite: bool = False
) -> Path:
    """Write a complete store to `out` (.h5), chunk by chunk; compression: None, "gzip" or "lzf"."""
    out = Path(out)
    if out.is_dir():
        raise StoreError(f"{out}: is a folder; give the path of the .h5 file to write, e.g. {out / 'store.h5'}")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise StoreError(f"{out}: already exists; choose another name or pass --overwrite")
    urls.ensure_writable(out)
    store = TokenStore.open(store_url)
    partial = out.with_name(out.name + ".partial")
    try:
        with _writing(out):
            out.parent.mkdir(parents=True, exist_ok=True)
            _write_hdf5(store, partial, compression)
            partial.replace(out)
    except BaseException:
        _unlink_quietly(partial)
        raise
    return out


def _write_hdf5(store: TokenStore, partial: Path, compression: str | None) -> None:
    attrs = store_attrs(store._group)
    spec = store.spec
    with h5py.File(partial, "w") as handle:
        handle.attrs["format"] = HDF5_FORMAT
        handle.attrs[layout.ATTRS_KEY] = json.dumps(attrs)
        handle.attrs["grid"] = np.asarray(spec.grid, np.int64)
        handle.attrs["dtype"] = spec.dtype
        handle.attrs["label_names"] = np.asarray(spec.label_names, dtype=h5py.string_dtype("utf-8"))
        handle.attrs["split_names"] = np.asarray(spec.split_names, dtype=h5py.string_dtype("utf-8"))
        version = store.format_version
        arrays = [array for layer in spec.layers
                  for array in layout.layer_arrays(layer, spec.dtype, spec.num_prefix, version)]
        for path, part in arrays:
            shape = _part_shape(spec, part)
            kind = layout.part_dtype(part, spec.dtype, version)
            dataset = handle.create_dataset(
                path, shape=shape, dtype=layout.stored_numpy_dtype(kind),
                chunks=(min(spec.chunk_clips, max(1, spec.n_clips)), *shape[1:]), compression=compression,
            )
            dataset.attrs["dtype"] = kind
            if kind == "bfloat16":
                dataset.attrs["encoding"] = "bfloat16 stored as its raw uint16 bits"
            elif part in ("tokens", "prefix") and layout.is_quantized(kind):
                scales = layout.prefix_scales_path if part == "prefix" else layout.scales_path
                dataset.attrs["encoding"] = f"int8 codes: value = code * /{scales(int(path.rsplit('_', 1)[1]))}"
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
        if store.has_events:
            for name, kind in store_events.ARRAYS.items():
                values = store.read_rows(name)
                if kind == "string":
                    handle.create_dataset(name, data=np.asarray(values.tolist(), dtype=object),
                                          dtype=h5py.string_dtype("utf-8"))
                else:
                    handle.create_dataset(name, data=values, compression=compression)


def _part_shape(spec: StoreSpec, part: str) -> tuple[int, ...]:
    """Shape of one layer's array of `part` ("tokens", "prefix", "scales", "prefix_scales")."""
    width = spec.num_prefix if part.startswith("prefix") else spec.num_tokens
    return (spec.n_clips, width) if part.endswith("scales") else (spec.n_clips, width, spec.embed_dim)


def _text(value) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _read_attrs(handle: h5py.File, path: Path) -> tuple[dict, StoreSpec]:
    """The store attributes of an export, checked against the store schema before anything is sized from them."""
    raw = _text(handle.attrs.get(layout.ATTRS_KEY))
    if _text(handle.attrs.get("format")) != HDF5_FORMAT or raw is None:
        raise StoreError(f"{path}: not an embedcache HDF5 export (no '{layout.ATTRS_KEY}' attribute); write one with "
                         "`embedcache export STORE out.h5`")
    try:
        attrs = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as error:
        raise StoreError(f"{path}: attribute '{layout.ATTRS_KEY}' is not a valid store description ({error})") from None
    problems = schema.attrs_problems(attrs)
    if problems:
        key, what = problems[0]
        raise StoreError(f"{path}: attribute '{layout.ATTRS_KEY}' is not a valid store description: "
                         f"{key.replace(schema.KEY, layout.ATTRS_KEY)}: {what}; re-export it with `embedcache export`")
    return attrs, StoreSpec.from_attrs(attrs["layout"])


def _dataset(handle: h5py.File, path: Path, name: str, shape: tuple, dtype) -> h5py.Dataset:
    """The dataset `name`, refusing a missing one, another shape, or a non-numeric dtype (opaque, reference...)."""
    # Links were checked by safety.ensure_safe_hdf5: every name here is a hard link inside this file.
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


# Python str objects of the id arrays: a rough per-string cost for the memory budget.
STRING_BYTES = 64


@dataclass
class _Export:
    """What an import reads from the file before writing: per-row arrays whole, token datasets left on disk."""

    attrs: dict
    spec: StoreSpec
    arrays: dict[str, np.ndarray]
    clip_ids: list[str]
    rows: RowInfo
    # One layer's datasets by part: "tokens", and "prefix", "scales", "prefix_scales" where the layout has them.
    layers: dict[int, dict[str, h5py.Dataset]]
    events: Events | None  # sound events (strong labels), when the store kept them


def _read_export(handle: h5py.File, path: Path) -> _Export:
    attrs, spec = _read_attrs(handle, path)
    n = spec.n_clips
    version = attrs["format_version"]
    per_row = {name: _dataset(handle, path, name, (n,) if name != "labels" else (n, len(spec.label_names)), dtype)
               for name, dtype in PER_CLIP.items()}
    strings = ["clip_ids"] + (["recording_ids"] if version >= 2 else [])
    per_row.update({name: _dataset(handle, path, name, (n,), "string") for name in strings})
    if version >= 2:
        per_row.update({name: _dataset(handle, path, name, (n,), "int64") for name in ("offsets", "lost_samples")})
    layers = {layer: {part: _dataset(handle, path, name, _part_shape(spec, part),
                                     layout.stored_numpy_dtype(layout.part_dtype(part, spec.dtype, version)))
                      for name, part in layout.layer_arrays(layer, spec.dtype, spec.num_prefix, version)}
              for layer in spec.layers}
    whole = sum(n * (STRING_BYTES if name in strings else per_row[name].dtype.itemsize) *
                int(np.prod(per_row[name].shape[1:])) for name in per_row)
    safety.ensure_within_memory(path, "its per-clip arrays (read whole)", whole)
    chunk = spec.chunk_clips * (spec.num_tokens + spec.num_prefix) * layout.token_bytes(spec.dtype, spec.embed_dim)
    safety.ensure_within_memory(path, "one chunk of every layer", chunk * len(spec.layers))
    arrays = {name: per_row[name][()] for name in PER_CLIP}
    clip_ids = _strings(per_row["clip_ids"][()])
    rows = RowInfo.whole(clip_ids)
    if version >= 2:
        rows = RowInfo(_strings(per_row["recording_ids"][()]), per_row["offsets"][()], per_row["lost_samples"][()])
    return _Export(attrs, spec, arrays, clip_ids, rows, layers, _read_events(handle, path, attrs, spec, rows))


def _read_events(handle: h5py.File, path: Path, attrs: dict, spec: StoreSpec, rows: RowInfo) -> Events | None:
    """The export's sound events (strong labels) when its attributes announce them, checked like a store's."""
    promised = store_events.event_arrays(attrs)
    if not promised:
        return None
    datasets = {name: _dataset(handle, path, name, shape, kind) for name, (shape, kind) in promised.items()}
    count = next(iter(promised.values()))[0][0]
    safety.ensure_within_memory(path, "its sound events (read whole)", count * (STRING_BYTES + 8 + 8 + 4))
    events = store_events.read_events(lambda name: (np.array(_strings(datasets[name][()]), dtype=str)
                                                    if promised[name][1] == "string" else datasets[name][()]))
    problems = store_events.event_problems(events, len(spec.label_names), set(rows.recording_ids))
    if problems:
        name, what = problems[0]
        raise StoreError(f"{path}: /{name}: {what}; the file is damaged or was edited: re-export it with "
                         "`embedcache export`")
    return events


def import_hdf5(path: str | Path, out_url: str | Path, overwrite: bool = False) -> TokenStore:
    """Create the store `out_url` from an embedcache HDF5 export; layout, provenance and fingerprint are kept."""
    path = Path(path)
    problem = safety.regular_file_problem(path)
    if problem:
        raise StoreError(f"{path}: {problem}; give the .h5 file written by `embedcache export`")
    with _reading(path):
        handle = h5py.File(path, "r")
    with handle:
        safety.ensure_safe_hdf5(handle, path)
        with _reading(path):
            source = _read_export(handle, path)
        urls.clear_destination(out_url, overwrite)
        existed = not urls.is_remote(out_url) and urls.local_path(out_url).is_dir()
        try:
            _write_store(source, path, out_url)
        except BaseException:
            urls.discard(out_url, existed)  # ours, half written: a retry starts clean
            raise
    return TokenStore.open(out_url)


def _write_store(source: _Export, path: Path, out_url: str | Path) -> None:
    spec, arrays = source.spec, source.arrays
    with _writing(out_url):
        group = create_store(
            out_url, spec, source.clip_ids, arrays["labels"], arrays["splits"], arrays["num_samples"],
            source.attrs["provenance"], source.attrs["fingerprint"], source.attrs.get("skipped", []), source.rows,
            events=source.events,
        )
    for chunk in range(spec.n_chunks):
        start, stop = spec.chunk_range(chunk)
        with _reading(path):
            parts = {part: {layer: datasets[part][start:stop] for layer, datasets in source.layers.items()
                            if part in datasets} for part in ("tokens", "prefix", "scales", "prefix_scales")}
        # A format 3 int8 export's prefix is int8 codes: the store this writes keeps prefix tokens in float16.
        for layer, scales in parts["prefix_scales"].items():
            parts["prefix"][layer] = layout.to_stored(layout.dequantize(
                torch.from_numpy(parts["prefix"][layer]), torch.from_numpy(scales)), layout.prefix_dtype(spec.dtype))
        with _writing(out_url):
            write_chunk(group, spec, chunk, parts["tokens"], parts["prefix"], arrays["valid_tokens"][start:stop],
                        scales=parts["scales"])
    with _writing(out_url):
        mark_complete_if_done(group)
