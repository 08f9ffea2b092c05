"""Growing a store in place: append the new clips, or the new layers, of a second store made by the same encoder.

The second store comes from an ordinary `extract` (new clips: another manifest; new layers: the same manifest with
other --layers). Appending is resumable: the store is marked "writing" with a `growing` record first, every chunk it
touches loses its completion marker, and re-running the same append finishes whatever is pending.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from embedcache.errors import StoreError
from embedcache.store import layout, schema, urls
from embedcache.store.reader import TokenStore
from embedcache.store.writer import (
    StoreSpec,
    chunk_markers,
    create_layer_arrays,
    fingerprint_of,
    store_attrs,
    writable,
)

# Provenance that must agree for tokens to be comparable (the encoder and everything before it).
SAME_PROVENANCE = (
    "encoder.name", "encoder.class", "encoder.config", "encoder.checkpoint_sha256", "encoder.random_init",
    "frontend", "clip_policy.num_samples", "clip_policy.sample_rate", "dtype", "autocast",
)
SAME_LAYOUT = ("grid", "num_tokens", "num_prefix", "embed_dim", "dtype")


@dataclass
class AppendReport:
    """What one append did."""

    store: str
    mode: str
    clips_added: int
    layers_added: list[int]
    chunks_written: int
    seconds: float


def _lookup(mapping: dict, dotted: str):
    value = mapping
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def differing_field(base: dict, base_spec: StoreSpec, other: dict, other_spec: StoreSpec) -> str | None:
    """The first provenance or layout field where two stores differ, as 'field: a vs b'; None when compatible."""
    for name in SAME_PROVENANCE:
        if _lookup(base, name) != _lookup(other, name):
            return f"provenance.{name}: {_lookup(base, name)!r} vs {_lookup(other, name)!r}"
    for name in SAME_LAYOUT:
        if getattr(base_spec, name) != getattr(other_spec, name):
            return f"layout.{name}: {getattr(base_spec, name)!r} vs {getattr(other_spec, name)!r}"
    return None


def source_identity(source: TokenStore) -> str:
    """A hash naming one source store: its settings fingerprint, its clip ids and its layers."""
    return fingerprint_of({"fingerprint": source.fingerprint, "clip_ids": "\n".join(source.clip_ids.tolist()),
                           "layers": source.layers})


def _choose_mode(store: TokenStore, source: TokenStore, dst: str, src: str) -> str:
    for which, where in ((store, dst), (source, src)):
        problem = schema.quantized_prefix_problem(which.spec, which.format_version, where)
        if problem:
            raise StoreError(problem)
    # Formats 2 and 3 hold the same per-row arrays (3 adds int8 tokens, and dtypes must match anyway).
    if (store.format_version >= 2) != (source.format_version >= 2):
        raise StoreError(f"{src}: store format {source.format_version}, but {dst} is format {store.format_version}; "
                         "re-extract the older one with this embedcache so both record the same per-row arrays")
    same_ids = len(source.clip_ids) == len(store.clip_ids) and (source.clip_ids == store.clip_ids).all()
    if same_ids:
        new_layers = sorted(set(source.layers) - set(store.layers))
        if not new_layers:
            raise StoreError(f"{src}: holds the same clips and no layer that {dst} lacks (it has {store.layers}); "
                             "nothing to append")
        for name in ("labels", "valid_tokens", "num_samples", "split_codes"):
            if not np.array_equal(getattr(source, name), getattr(store, name)):
                raise StoreError(f"{src}: same clip ids as {dst} but different {name}; extract the new layers from "
                                 "the same manifest with the same settings")
        return "layers"
    overlap = np.intersect1d(source.clip_ids, store.clip_ids)
    if len(overlap):
        raise StoreError(f"{src}: {len(overlap)} clip id(s) are already in {dst} (e.g. {overlap[:3].tolist()}); "
                         "append only new clips, or the same clips with new layers")
    if source.label_names != store.label_names:
        raise StoreError(f"{src}: layout.label_names differ from {dst}'s ({source.label_names[:5]}... vs "
                         f"{store.label_names[:5]}...); extract the new clips with --labels set to the store's "
                         "vocabulary")
    with_events = [path for path, one in ((dst, store), (src, source)) if one.has_events]
    if with_events:
        raise StoreError(f"{with_events[0]}: keeps sound events (strong labels), which appending clips does not merge; "
                         "extract the clips together into one store")
    missing = sorted(set(store.layers) - set(source.layers))
    if missing:
        raise StoreError(f"{src}: lacks layer(s) {missing} that {dst} holds; extract the new clips with the same "
                         "--layers")
    return "clips"


def append_store(destination: str | Path, source: str | Path) -> AppendReport:
    """Append the clips (disjoint clip ids) or the layers (same clips) of `source` to `destination` in place."""
    started = time.perf_counter()
    dst, src = str(destination), str(source)
    group = urls.open_group(dst, "r+")
    attrs = store_attrs(group)
    incoming = TokenStore.open(src)
    growing = attrs.get("growing")
    if growing and growing.get("source_id") != source_identity(incoming):
        raise StoreError(f"{dst}: an append from {growing.get('source')} was interrupted; re-run that append to "
                         "finish it before appending another store")
    if not growing and attrs["status"] != layout.STATUS_COMPLETE:
        raise StoreError(f"{dst}: the store is incomplete; finish its extract before appending to it")
    base_spec = StoreSpec.from_attrs(growing["base_layout"]) if growing else StoreSpec.from_attrs(attrs["layout"])
    difference = differing_field(attrs["provenance"], base_spec, incoming.provenance, incoming.spec)
    if difference:
        raise StoreError(f"{src}: not made with the same encoder settings as {dst} ({difference}); only stores "
                         "with the same encoder provenance can be combined")
    if growing:
        mode = growing["mode"]
    else:
        base = TokenStore(group, dst)
        mode = _choose_mode(base, incoming, dst, src)
        growing = _begin(group, attrs, base_spec, incoming, mode, src)
    spec = StoreSpec.from_attrs(store_attrs(group)["layout"])
    if not growing.get("prepared"):
        _prepare(group, spec, base_spec, incoming, mode)
        _set_growing(group, {**growing, "prepared": True})
    written = _fill(group, spec, base_spec, incoming, mode)
    _finish(group, incoming, mode, base_spec, src)
    added = sorted(set(spec.layers) - set(base_spec.layers))
    return AppendReport(dst, mode, spec.n_clips - base_spec.n_clips, added, written, time.perf_counter() - started)


def _set_growing(group: zarr.Group, growing: dict) -> None:
    attrs = dict(group.attrs[layout.ATTRS_KEY])
    attrs["growing"] = growing
    group.attrs[layout.ATTRS_KEY] = attrs


def _begin(group: zarr.Group, attrs: dict, base: StoreSpec, incoming: TokenStore, mode: str, src: str) -> dict:
    """Record the append and the grown layout before touching any array (status "writing")."""
    grown = StoreSpec.from_attrs(base.to_attrs())
    if mode == "clips":
        grown.n_clips = base.n_clips + incoming.n_clips
        grown.split_names = base.split_names + [n for n in incoming.split_names if n not in base.split_names]
    else:
        grown.layers = sorted(set(base.layers) | set(incoming.layers))
    growing = {"mode": mode, "source": src, "source_id": source_identity(incoming),
               "base_layout": base.to_attrs(), "base_fingerprint": attrs.get("fingerprint"), "prepared": False}
    attrs = {**attrs, "status": layout.STATUS_WRITING, "layout": grown.to_attrs(), "growing": growing}
    # A new fingerprint now: the original extract command must not "resume" a half-grown store.
    attrs["fingerprint"] = fingerprint_of({"growing_from": attrs.get("fingerprint"), "source": incoming.fingerprint})
    group.attrs[layout.ATTRS_KEY] = attrs
    return growing


def _prepare(group: zarr.Group, spec: StoreSpec, base: StoreSpec, incoming: TokenStore, mode: str) -> None:
    """Resize or create arrays and unset the markers of every chunk to (re)write; idempotent."""
    if mode == "clips":
        n = spec.n_clips
        paths = ["valid_tokens", "num_samples", "labels", "splits", "clip_ids"]
        rows = [name for name in layout.ROW_ARRAYS if name in group]
        paths += rows
        paths += [path for layer in spec.layers for path, _ in layout.layer_arrays(layer, spec.dtype, spec.num_prefix)]
        for path in paths:
            array = group[path]
            if array.shape[0] != n:
                array.resize((n, *array.shape[1:]))
        group["chunk_done"].resize((spec.n_chunks,))
        first = base.n_clips // spec.chunk_clips
        if base.n_clips % spec.chunk_clips:
            group["chunk_done"][first] = 0  # the old last chunk is rewritten with its new clips
        codes = np.array([spec.split_names.index(incoming.split_names[c]) for c in incoming.split_codes], np.uint8)
        new = slice(base.n_clips, n)
        writable(group, "labels")[new] = incoming.labels
        writable(group, "splits")[new] = codes
        writable(group, "num_samples")[new] = incoming.num_samples
        writable(group, "clip_ids")[new] = np.asarray(incoming.clip_ids, dtype=str)
        if rows:
            writable(group, "recording_ids")[new] = np.asarray(incoming.recording_ids, dtype=str)
            writable(group, "offsets")[new] = incoming.offsets
            writable(group, "lost_samples")[new] = incoming.lost_samples
        return
    for layer in sorted(set(spec.layers) - set(base.layers)):
        if layout.tokens_path(layer) not in group:  # a resumed append made it already
            create_layer_arrays(group, spec, layer)
    group["chunk_done"][:] = np.zeros(spec.n_chunks, np.uint8)


def _fill(group: zarr.Group, spec: StoreSpec, base: StoreSpec, incoming: TokenStore, mode: str) -> int:
    """Write every pending chunk; returns how many."""
    pending = np.flatnonzero(chunk_markers(group) == 0)
    new_layers = sorted(set(spec.layers) - set(base.layers))
    written = 0
    for chunk in pending:
        start, stop = spec.chunk_range(int(chunk))
        if mode == "layers":
            for layer in new_layers:
                for path, _ in layout.layer_arrays(layer, spec.dtype, spec.num_prefix):
                    _copy_rows(group, incoming, path, start, stop, 0)
        else:
            for layer in spec.layers:
                for path, _ in layout.layer_arrays(layer, spec.dtype, spec.num_prefix):
                    _merge_rows(group, incoming, path, start, stop, base.n_clips)
            _merge_rows(group, incoming, "valid_tokens", start, stop, base.n_clips)
        group["chunk_done"][int(chunk)] = 1
        written += 1
    return written


def _copy_rows(group: zarr.Group, incoming: TokenStore, path: str, start: int, stop: int, offset: int) -> None:
    writable(group, path)[start:stop] = incoming.read_rows(path, start - offset, stop - offset)


def _merge_rows(group: zarr.Group, incoming: TokenStore, path: str, start: int, stop: int, base_n: int) -> None:
    """Rows [start, stop) of a grown chunk: the store's own rows below base_n, the incoming ones above."""
    if start >= base_n:
        _copy_rows(group, incoming, path, start, stop, base_n)
        return
    own = group[path][start:base_n]
    new = incoming.read_rows(path, 0, stop - base_n)
    writable(group, path)[start:stop] = np.concatenate([own, new])


def _finish(group: zarr.Group, incoming: TokenStore, mode: str, base: StoreSpec, src: str) -> None:
    attrs = dict(group.attrs[layout.ATTRS_KEY])
    spec = StoreSpec.from_attrs(attrs["layout"])
    provenance = dict(attrs["provenance"])
    entry = {"source": src, "fingerprint": incoming.fingerprint, "created": incoming.provenance.get("created"),
             "manifest": incoming.provenance.get("manifest")}
    if mode == "clips":
        entry["clips"] = incoming.n_clips
        attrs["skipped"] = list(attrs.get("skipped", [])) + list(incoming.skipped)
    else:
        entry["layers"] = sorted(set(spec.layers) - set(base.layers))
        provenance["layers"] = list(spec.layers)
    provenance["appended"] = list(provenance.get("appended", [])) + [entry]
    base_fingerprint = attrs["growing"].get("base_fingerprint")
    fields = provenance.get("fingerprint_fields")
    if isinstance(fields, dict):
        fields = {**fields, "layers": list(spec.layers),
                  "appended": list(fields.get("appended", [])) + [incoming.fingerprint]}
        provenance["fingerprint_fields"] = fields
        attrs["fingerprint"] = fingerprint_of(fields)
    else:
        attrs["fingerprint"] = fingerprint_of({"base": base_fingerprint, "appended": incoming.fingerprint})
    attrs["provenance"] = provenance
    attrs.pop("growing")
    attrs["status"] = layout.STATUS_COMPLETE
    group.attrs[layout.ATTRS_KEY] = attrs
