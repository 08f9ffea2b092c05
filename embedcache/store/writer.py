"""Creating, resuming and filling token stores, one whole-clip chunk at a time."""

from __future__ import annotations

import errno
import hashlib
import json
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from embedcache.errors import StoreError
from embedcache.events import Events
from embedcache.store import events as store_events
from embedcache.store import layout, schema, urls
from embedcache.store.layout import StoreSpec

# Every chunk is stored even when it equals the fill value, so a missing chunk key always means damage.
ARRAY_CONFIG = {"write_empty_chunks": True}


def _codecs(compression: str) -> list:
    # crc32c on every chunk so corruption is detected on read, compressed or not.
    if compression == "zstd":
        return [ZstdCodec(level=1), Crc32cCodec()]
    if compression == "none":
        return [Crc32cCodec()]
    raise StoreError(f"compression {compression!r} is not supported: use 'zstd' or 'none'")


def disk_full_error(where: str, error: OSError) -> StoreError:
    """The StoreError for a full disk: what happened and that the same command resumes."""
    return StoreError(
        f"{where}: the disk is full ({error.strerror or error}); nothing already marked done is lost: free space "
        "and re-run the same command to resume"
    )


def writable(group: zarr.Group, path: str) -> zarr.Array:
    """The array at `path`, configured to store every chunk."""
    return group[path].with_config(ARRAY_CONFIG)


def create_store(
    path: str | Path,
    spec: StoreSpec,
    clip_ids: Sequence[str],
    labels: np.ndarray,
    split_codes: np.ndarray,
    num_samples: np.ndarray,
    provenance: dict,
    fingerprint: str,
    skipped: Sequence[dict] = (),
    rows: RowInfo | None = None,
    events: Events | None = None,
) -> zarr.Group:
    """Create an empty store (status "writing") with every per-clip array except the tokens filled in.

    `rows` gives each row's recording, offset and cropped samples (default: every row its own whole recording);
    `events` the recordings' sound events (strong labels), kept when given.
    """
    rows = rows or RowInfo.whole(clip_ids)
    try:
        return _create_store(path, spec, clip_ids, labels, split_codes, num_samples, provenance, fingerprint, skipped,
                             rows, events)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise disk_full_error(str(path), error) from error
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise StoreError(f"{path}: cannot write there ({error.strerror}); choose a writable --out") from error
        raise


def create_layer_arrays(group: zarr.Group, spec: StoreSpec, layer: int) -> None:
    """Create the (empty) token array of one layer, its prefix array when the encoder has prefix tokens (float16 in
    an int8 store), and for int8 the tokens' per-token scales."""
    for path, part in layout.layer_arrays(layer, spec.dtype, spec.num_prefix):
        width = spec.num_prefix if part.startswith("prefix") else spec.num_tokens
        scales = part.endswith("scales")
        group.create_array(
            path,
            shape=(spec.n_clips, width) if scales else (spec.n_clips, width, spec.embed_dim),
            chunks=(spec.chunk_clips, width) if scales else (spec.chunk_clips, width, spec.embed_dim),
            dtype=layout.stored_numpy_dtype(layout.part_dtype(part, spec.dtype)),
            compressors=_codecs(spec.compression),
            fill_value=0,
            config=ARRAY_CONFIG,
        )


def _create_store(path, spec, clip_ids, labels, split_codes, num_samples, provenance, fingerprint, skipped, rows,
                  events=None):
    group = urls.open_group(path, mode="w-")
    n = spec.n_clips
    codecs = _codecs(spec.compression)
    for layer in spec.layers:
        create_layer_arrays(group, spec, layer)
    small = {"chunks": (max(1, n),), "compressors": codecs, "config": ARRAY_CONFIG}
    group.create_array(
        "valid_tokens", shape=(n,), dtype="int32", chunks=(spec.chunk_clips,), compressors=codecs, config=ARRAY_CONFIG
    )
    group.create_array("num_samples", shape=(n,), dtype="int64", **small)[:] = np.asarray(num_samples, np.int64)
    group.create_array(
        "labels", shape=(n, len(spec.label_names)), dtype="uint8",
        chunks=(max(1, n), max(1, len(spec.label_names))), compressors=codecs, config=ARRAY_CONFIG,
    )[:] = labels
    group.create_array("splits", shape=(n,), dtype="uint8", **small)[:] = split_codes
    group.create_array("clip_ids", shape=(n,), dtype=str, **small)[:] = np.asarray(clip_ids, dtype=str)
    write_row_arrays(group, rows, small)
    announced = {} if events is None else {store_events.ATTR: store_events.write_events(group, events, small)}
    # Markers start absent (read as 0); each is written once its chunk's data is stored.
    group.create_array(
        "chunk_done", shape=(spec.n_chunks,), dtype="uint8", chunks=(1,), fill_value=0, compressors=codecs
    )
    # Root attributes last: a reader that sees them sees a fully created (if not yet filled) store.
    group.attrs[layout.ATTRS_KEY] = {
        "format_version": layout.FORMAT_VERSION,
        "status": layout.STATUS_WRITING,
        "layout": spec.to_attrs(),
        "provenance": provenance,
        "fingerprint": fingerprint,
        "skipped": list(skipped),
        **announced,
    }
    return group


@dataclass
class RowInfo:
    """Where each stored row comes from: its recording (manifest clip), first sample there, samples cropped away."""

    recording_ids: list[str]
    offsets: np.ndarray
    lost_samples: np.ndarray

    @classmethod
    def whole(cls, clip_ids: Sequence[str]) -> RowInfo:
        """Every row is a whole recording, nothing cropped."""
        n = len(clip_ids)
        return cls(list(clip_ids), np.zeros(n, np.int64), np.zeros(n, np.int64))


def write_row_arrays(group: zarr.Group, rows: RowInfo, array_options: dict) -> None:
    """Create and fill the format-2 row arrays (recording_ids, offsets, lost_samples)."""
    n = len(rows.recording_ids)
    group.create_array("recording_ids", shape=(n,), dtype=str, **array_options)[:] = np.asarray(
        rows.recording_ids, dtype=str)
    group.create_array("offsets", shape=(n,), dtype="int64", **array_options)[:] = np.asarray(rows.offsets, np.int64)
    group.create_array("lost_samples", shape=(n,), dtype="int64", **array_options)[:] = np.asarray(
        rows.lost_samples, np.int64)


def store_attrs(group: zarr.Group) -> dict:
    """The embedcache attributes of a group once they match the schema, or a one-line StoreError."""
    attrs, _ = schema.parse_attrs(group.attrs.asdict().get(layout.ATTRS_KEY), str(group.store))
    return attrs


# Every node `create_store` makes: a group holding only these and no embedcache attributes is a creation that was
# killed before its attributes (written last) were; it holds no tokens yet and is safe to start again.
CREATED_NODES = frozenset({
    "tokens", "prefix", "scales", "prefix_scales", "valid_tokens", "num_samples", "labels", "splits", "clip_ids",
    "chunk_done",
    *layout.ROW_ARRAYS, "events",
})


def interrupted_creation(group: zarr.Group) -> bool:
    """Whether `group` is a store whose creation was killed before its root attributes were written."""
    # Tokens are written only after the attributes, so such a group holds none.
    return layout.ATTRS_KEY not in group.attrs.asdict() and set(group.keys()) <= CREATED_NODES


def open_for_resume(path: str | Path, fingerprint: str, fingerprint_fields: dict) -> zarr.Group | None:
    """Open an existing store to resume it, None when nothing is there (or only a creation killed before it wrote
    its attributes, which is removed); refuse one made with other settings."""
    try:
        group = urls.open_group(path, mode="r+")
    except urls.MissingStoreError:
        refuse_foreign_folder(path)
        return None
    if interrupted_creation(group):
        remove_store(path)  # nothing was extracted into it yet: start it again
        return None
    attrs = store_attrs(group)
    problem = schema.quantized_prefix_problem(StoreSpec.from_attrs(attrs["layout"]), attrs["format_version"], str(path))
    if problem:
        raise StoreError(f"{problem}, or pass --overwrite to extract it again")
    if attrs["fingerprint"] != fingerprint:
        old = attrs["provenance"].get("fingerprint_fields", {})
        keys = set(old) | set(fingerprint_fields)
        changed = sorted(key for key in keys if old.get(key) != fingerprint_fields.get(key))
        raise StoreError(
            f"{path}: a store made with different settings is already there "
            f"(differs in: {', '.join(changed) or 'unknown fields'}); resume with the same arguments, "
            "choose another --out, or pass --overwrite to replace it"
        )
    return group


def refuse_foreign_folder(path: str | Path) -> None:
    """A local folder that exists, holds files and is not a store is the user's: never write a store into it."""
    if urls.is_remote(path) or urls.is_zip(path):
        return
    folder = urls.local_path(path)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "a file" if not folder.is_dir() else "a folder with other files in it"
        raise StoreError(f"{path}: is {what}, not a token store; choose a new or empty --out (nothing was written)")


def remove_store(path: str | Path) -> None:
    """Delete a store, local or remote (used by --overwrite); a folder that is not an embedcache store is refused."""
    if urls.store_exists(path) and not urls.is_zip(path):
        try:
            group = urls.open_group(path, mode="r")
        except StoreError:
            group = None
        if group is not None and layout.ATTRS_KEY not in group.attrs.asdict() and not interrupted_creation(group):
            raise StoreError(f"{path}: is a Zarr group but not an embedcache token store; --overwrite only replaces "
                             "token stores: choose another --out")
    else:
        refuse_foreign_folder(path)
    urls.remove_store(path)


def chunk_markers(group: zarr.Group) -> np.ndarray:
    """[n_chunks] uint8 completion markers; a marker that does not decode counts as unset (its chunk is redone)."""
    array = group["chunk_done"]
    try:
        return array[:]
    except ValueError:  # a damaged marker object: read the others one by one
        markers = np.zeros(array.shape[0], np.uint8)
        for chunk in range(array.shape[0]):
            try:
                markers[chunk] = array[chunk]
            except ValueError:
                markers[chunk] = 0
        return markers


def pending_chunks(group: zarr.Group) -> np.ndarray:
    """Indices of chunks whose completion marker is not set."""
    return np.flatnonzero(chunk_markers(group) == 0)


def write_chunk(
    group: zarr.Group,
    spec: StoreSpec,
    chunk: int,
    tokens: dict[int, np.ndarray],
    prefix: dict[int, np.ndarray],
    valid_tokens: np.ndarray,
    scales: dict[int, np.ndarray] | None = None,
) -> None:
    """Write one chunk's arrays (already in the stored dtype: int8 codes with their float16 `scales`, and float16
    prefix tokens, in an int8 store), then set its completion marker.

    Tokens that are not finite are refused before anything of the chunk is written, naming the clips (for int8: a
    non-finite scale, which NaN or inf tokens and float16 overflow of absmax / 127 give).
    """
    start, stop = spec.chunk_range(chunk)
    parts = {"tokens": tokens, "prefix": prefix, "scales": scales or {}}
    arrays = {path: (parts[part].get(layer), layout.part_dtype(part, spec.dtype)) for layer in spec.layers
              for path, part in layout.layer_arrays(layer, spec.dtype, spec.num_prefix)}
    missing = [path for path, (values, _) in arrays.items() if values is None]
    if missing:
        raise StoreError(f"chunk {chunk}: no data given for {', '.join(missing)}; {spec.dtype} chunks need it")
    # int8 codes cannot be NaN; their scales can (NaN or inf tokens give a non-finite scale).
    for path, (values, kind_dtype) in arrays.items():
        if layout.is_quantized(kind_dtype):
            continue
        rows = layout.nonfinite_rows(values, kind_dtype)
        if len(rows):
            layer = path.rsplit("_", 1)[1]
            kind = "prefix tokens" if path.startswith("prefix") else "tokens"
            ids = [group["clip_ids"][start + int(row)] for row in rows[:3]]
            raise StoreError(
                f"{', '.join(map(str, ids[:3]))}{' ...' if len(rows) > 3 else ''}: {kind} of layer {layer} "
                f"hold NaN or inf in {spec.dtype}; nothing of chunk {chunk} was marked done. Check that clip's "
                "audio for extreme values, or extract with --dtype float32 if float16 overflows"
            )
    for path, (values, _) in arrays.items():
        writable(group, path)[start:stop] = values
    writable(group, "valid_tokens")[start:stop] = valid_tokens
    # The marker goes last: a crash before it leaves the chunk pending, and the resume rewrites it whole.
    group["chunk_done"][chunk] = 1


def mark_complete_if_done(group: zarr.Group) -> bool:
    """Set status "complete" once every chunk marker is set; returns whether the store is complete."""
    if len(pending_chunks(group)):
        return False
    attrs = dict(group.attrs[layout.ATTRS_KEY])
    if attrs["status"] != layout.STATUS_COMPLETE:
        attrs["status"] = layout.STATUS_COMPLETE
        try:
            group.attrs[layout.ATTRS_KEY] = attrs
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise disk_full_error(str(group.store), error) from error
            raise
    return True


class BackgroundChunkWriter:
    """Writes chunks on a thread so compression and I/O overlap the encoder's forward pass."""

    def __init__(self, group: zarr.Group, spec: StoreSpec, max_pending: int = 3):
        self._group, self._spec = group, spec
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="embedcache-chunk-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    write_chunk(self._group, self._spec, *item)
                except BaseException as error:  # re-raised in the caller's thread
                    self._error = error

    def _raise_if_failed(self) -> None:
        error = self._error
        if error is None:
            return
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise disk_full_error(f"writing to {self._group.store}", error) from error
        if isinstance(error, StoreError):
            raise error
        raise StoreError(f"writing to {self._group.store} failed: {error}") from error

    def submit(self, chunk: int, tokens: dict, prefix: dict, valid_tokens: np.ndarray,
               scales: dict | None = None) -> None:
        self._raise_if_failed()
        self._queue.put((chunk, tokens, prefix, valid_tokens, scales))

    def close(self) -> None:
        """Wait for every submitted chunk to be written; raise if any write failed."""
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()


def fingerprint_of(fields: dict) -> str:
    """A stable hash of the settings that determine a store's bytes."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
