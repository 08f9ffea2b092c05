"""Reading token stores: metadata as numpy, tokens as torch tensors, whole chunks at a time.

Stores open read-only from a path, a `.zip` or a URL; a missing or corrupt chunk is a StoreError naming its key,
never silently zeros or a codec traceback. The root attributes pass `schema` before anything is sized from them, and
every array is compared with the shape and dtype the layout promises before it is read.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import zarr

from embedcache.errors import StoreError
from embedcache.events import Events, TimeSteps, frame_targets, row_events, strong_rows
from embedcache.store import events as store_events
from embedcache.store import layout, safety, schema, urls
from embedcache.store.subset import Subset, select
from embedcache.store.writer import pending_chunks


def chunk_keys(array: zarr.Array, path: str, start: int, stop: int) -> list[str]:
    """Store keys of every chunk holding rows [start, stop) of the array at `path`."""
    if stop <= start:
        return []
    rows = array.chunks[0]
    first = range(start // rows, (stop - 1) // rows + 1)
    others = [range(n) for n in array.cdata_shape[1:]]
    return [f"{path}/{array.metadata.encode_chunk_key(coords)}" for coords in itertools.product(first, *others)]


def describe_read_error(error: BaseException) -> str:
    """Why a chunk could not be used, in words ("damaged: ..." for a checksum mismatch)."""
    text = str(error)
    if "checksum" in text.lower():
        return "damaged: its crc32c checksum does not match its bytes"
    return f"could not be read or decoded ({type(error).__name__}: {text[:200]})"


def _unreadable_metadata(store, url: str, error: BaseException) -> StoreError:
    """The StoreError for metadata that json or zarr cannot parse (nested too deeply, absurd numbers, wrong types)."""
    if isinstance(error, RecursionError):
        try:
            json.loads(urls.get_bytes(store, "zarr.json") or b"{}")
            key = "an array's zarr.json"
        except RecursionError:
            key = "zarr.json"
        except ValueError:
            key = "zarr.json"
        what = "JSON nested too deeply to parse"
    else:
        key, what = "zarr.json", f"cannot be parsed ({type(error).__name__}: {str(error)[:200]})"
    return StoreError(f"{url}: {key}: {what}; {schema.damaged(url)}")


class TokenStore:
    """A read-only view of one token store; open it with `TokenStore.open(url)`, optionally as a subset."""

    def __init__(self, group: zarr.Group, path: str, subset: Subset | dict | str | None = None):
        self._group = group
        self.path = path
        self._attrs, self.spec = schema.parse_attrs(group.attrs.asdict().get(layout.ATTRS_KEY), path)
        self._expected = schema.expected_arrays(self.spec, self.format_version)
        self._expected.update(store_events.event_arrays(self._attrs))
        self._present: dict[str, set[str]] = {}
        self._arrays: dict[str, zarr.Array] = {}
        self.subset = Subset.from_value(subset)
        self._rows, self._columns = (None, None)
        if not self.subset.is_everything:
            self._rows, self._columns = select(
                self.subset, self.clip_ids, self.read_rows("labels"), self.split_codes, self.spec.split_names,
                self.spec.label_names, path,
            )

    @classmethod
    def open(
        cls, path: str | Path, allow_incomplete: bool = False, subset: Subset | dict | str | None = None
    ) -> TokenStore:
        """Open a store read-only (local path, .zip or URL); refuse one still being written unless `allow_incomplete`.

        The metadata of every node is checked first: a store with object/pickle codecs or dtypes is refused, and so is
        one whose attributes break the schema or whose per-row arrays disagree with its layout.
        """
        url = str(path)
        try:
            store = urls.open_store(url, "r")
        except urls.MissingStoreError:
            store = None
        if store is None or not urls.has_key(store, "zarr.json"):
            v2 = store is not None and urls.get_bytes(store, ".zgroup") is not None
            raise StoreError(f"{url}: no token store there" + (
                " (Zarr v2 metadata is there: only Zarr v3 stores are read)" if v2
                else f" (run `embedcache extract ... --out {url}` first)"))
        try:
            safety.ensure_safe(store, url)
            group = zarr.open_group(store=store, mode="r", zarr_format=3)
        except (RecursionError, ValueError, TypeError, KeyError) as error:
            raise _unreadable_metadata(store, url, error) from None
        token_store = cls(group, url, subset)
        if token_store.is_complete:
            token_store.check_arrays()
        elif not allow_incomplete:
            missing = token_store.pending_chunks()
            count = f"{missing} of {token_store.spec.n_chunks} chunks missing" if missing is not None else (
                "an append is resizing its arrays")
            raise StoreError(
                f"{url}: the store is still being written or was interrupted ({count}); finish it by re-running the "
                "same `embedcache extract` (or `embedcache append`) command"
            )
        return token_store

    def check_arrays(self) -> None:
        """Open every per-row array and the completion markers, refusing any whose shape or dtype breaks the layout."""
        for path in [*schema.row_arrays(self.spec, self.format_version), "chunk_done"]:
            self._array(path)

    def pending_chunks(self) -> int | None:
        """How many chunks are not yet written; None while an append has not yet resized the markers."""
        try:
            self._array("chunk_done")
        except StoreError:
            if self.is_complete:
                raise
            return None
        return len(pending_chunks(self._group))

    def check_rows(self) -> None:
        """Refuse the per-row values `verify` reports as damage: labels other than 0/1, split codes outside
        layout.split_names, valid_tokens outside 0..T. Cheap (small arrays, kept for training), and training on them
        silently moves every metric."""
        found = []
        labels = self.labels
        bad = labels > 1
        if bad.any():
            row, column = (int(i) for i in np.argwhere(bad)[0])
            found.append(f"labels hold {int(bad.sum())} value(s) other than 0/1 (e.g. {int(labels[row, column])} at "
                         f"row {row}, class {self.label_names[column]!r})")
        codes, names = self.split_codes, self.spec.split_names
        bad = codes >= len(names)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            found.append(f"splits hold {int(bad.sum())} code(s) outside 0..{len(names) - 1} (e.g. {int(codes[row])} at "
                         f"row {row}; layout.split_names has {len(names)} names)")
        valid = self.valid_tokens
        bad = (valid < 0) | (valid > self.num_tokens)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            found.append(f"valid_tokens hold {int(bad.sum())} value(s) outside 0..{self.num_tokens} (e.g. "
                         f"{int(valid[row])} at row {row})")
        if found:
            raise StoreError(f"{self.path}: {'; '.join(found)}; the store is damaged or was edited: run "
                             f"`embedcache verify {self.path}`, then re-copy or re-extract it")

    # -- checked reads ---------------------------------------------------------------------------------------
    def _present_keys(self, path: str) -> set[str]:
        # One listing per array (a few requests even for thousands of remote chunks), then set lookups.
        if path not in self._present:
            self._present[path] = set(urls.list_keys(self._group.store, f"{path}/"))
        return self._present[path]

    def _array(self, path: str) -> zarr.Array:
        # Opened once: on object storage every open is a request for the array's metadata.
        if path not in self._arrays:
            try:
                node = self._group[path]
            except KeyError:
                raise StoreError(f"{self.path}: array {path} is missing; {schema.damaged(self.path)}") from None
            except (ValueError, TypeError, RecursionError) as error:
                raise StoreError(f"{self.path}: {path}/zarr.json cannot be read ({type(error).__name__}: "
                                 f"{str(error)[:200]}); {schema.damaged(self.path)}") from None
            if not isinstance(node, zarr.Array):
                raise StoreError(f"{self.path}: {path} is a group, not an array; {schema.damaged(self.path)}")
            expected = self._expected.get(path)
            problem = expected and schema.array_problem(node.shape, node.dtype, expected)
            if problem:
                raise StoreError(f"{self.path}: array {path} {problem}; {schema.damaged(self.path)}")
            self._arrays[path] = node
        return self._arrays[path]

    def read_rows(self, path: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) (default: all) of the array at `path` as stored, refusing missing or corrupt chunks."""
        array = self._array(path)
        stop = array.shape[0] if stop is None else stop
        keys = chunk_keys(array, path, start, stop)
        missing = [key for key in keys if key not in self._present_keys(path)]
        if missing:
            raise StoreError(
                f"{self.path}: chunk {missing[0]} is missing" + (f" (and {len(missing) - 1} more)" if missing[1:]
                else "") + f"; the store is damaged: run `embedcache verify {self.path}`, then re-copy or re-extract it"
            )
        try:
            return array[start:stop]
        except Exception as error:  # codec, checksum and I/O errors all name the chunk
            bad = self._first_bad_chunk(array, path, start, stop) or keys[0]
            raise StoreError(
                f"{self.path}: chunk {bad} is {describe_read_error(error)}; run `embedcache verify {self.path}`, "
                "then re-copy or re-extract the store"
            ) from error

    def _first_bad_chunk(self, array: zarr.Array, path: str, start: int, stop: int) -> str | None:
        rows = array.chunks[0]
        for first in range(start - start % rows, stop, rows):
            try:
                array[first:min(first + rows, array.shape[0])]
            except Exception:
                return chunk_keys(array, path, first, first + 1)[0]
        return None

    # -- metadata ------------------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return self._attrs["status"]

    @property
    def is_complete(self) -> bool:
        return self.status == layout.STATUS_COMPLETE

    @property
    def read_only(self) -> bool:
        return bool(self._group.store.read_only)

    @property
    def provenance(self) -> dict:
        return self._attrs["provenance"]

    @property
    def fingerprint(self) -> str:
        return self._attrs.get("fingerprint", "")

    @property
    def skipped(self) -> list[dict]:
        return self._attrs.get("skipped", [])

    @property
    def n_clips(self) -> int:
        """Clips stored (row indices run over all of them, also in a subset view)."""
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
        """Label names of the view (a class subset keeps only its classes)."""
        if self._columns is None:
            return list(self.spec.label_names)
        return [self.spec.label_names[c] for c in self._columns]

    @property
    def split_names(self) -> list[str]:
        if self.subset.splits is None:
            return list(self.spec.split_names)
        return [name for name in self.spec.split_names if name in self.subset.splits]

    @cached_property
    def labels(self) -> np.ndarray:
        """[N, C] uint8 multi-hot labels (C = the view's classes)."""
        labels = self.read_rows("labels")
        return labels if self._columns is None else labels[:, self._columns]

    @cached_property
    def selected(self) -> np.ndarray:
        """Sorted row indices of the clips in the view (all rows without a subset)."""
        if self._rows is None:
            return np.arange(self.n_clips, dtype=np.int64)
        return np.flatnonzero(self._rows).astype(np.int64)

    @cached_property
    def is_multilabel(self) -> bool:
        """True unless every clip of the view has exactly one label."""
        return bool((self.labels[self.selected].sum(axis=1) != 1).any())

    @cached_property
    def clip_ids(self) -> np.ndarray:
        return np.array(self.read_rows("clip_ids").tolist(), dtype=str)

    @cached_property
    def split_codes(self) -> np.ndarray:
        return self.read_rows("splits")

    @cached_property
    def valid_tokens(self) -> np.ndarray:
        return self.read_rows("valid_tokens")

    @cached_property
    def num_samples(self) -> np.ndarray:
        return self.read_rows("num_samples")

    @property
    def format_version(self) -> int:
        return int(self._attrs["format_version"])

    @property
    def sample_rate(self) -> int | None:
        """Rate of num_samples, offsets and lost_samples (the encoder's)."""
        rate = (self.provenance.get("encoder") or {}).get("sample_rate")
        return int(rate) if rate else None

    @cached_property
    def recording_ids(self) -> np.ndarray:
        """[N] the recording (manifest clip) each row comes from; a row's own id in format 1 stores."""
        if self.format_version < 2:
            return self.clip_ids
        return np.array(self.read_rows("recording_ids").tolist(), dtype=str)

    @cached_property
    def offsets(self) -> np.ndarray:
        """[N] int64 first sample of each row in its recording (0 unless the store holds windows)."""
        if self.format_version < 2:
            return np.zeros(self.n_clips, np.int64)
        return self.read_rows("offsets")

    @cached_property
    def lost_samples(self) -> np.ndarray:
        """[N] int64 samples of each row's audio cropped away (format 1 stores did not record it: zeros)."""
        if self.format_version < 2:
            return np.zeros(self.n_clips, np.int64)
        return self.read_rows("lost_samples")

    @property
    def is_windowed(self) -> bool:
        """True when rows are windows of longer recordings (several rows may share a recording)."""
        return bool((self.provenance.get("clip_policy") or {}).get("window_samples"))

    # -- strong labels --------------------------------------------------------------------------------------------
    @property
    def has_events(self) -> bool:
        """Whether the store keeps sound events (strong labels; extract read an events file)."""
        return store_events.ATTR in self._attrs

    @cached_property
    def events(self) -> Events | None:
        """The recordings' sound events, label codes into the store's own label_names (not a subset's); None when
        the store keeps no strong labels."""
        return store_events.read_events(self.read_rows) if self.has_events else None

    @cached_property
    def view_events(self) -> Events | None:
        """`events` of the view's classes, label codes into the view's label_names."""
        if self.events is None or self._columns is None:
            return self.events
        return self.events.relabel(self._columns)

    @property
    def time_steps(self) -> TimeSteps | None:
        """The samples each token time step covers (the encoder's, recorded at extract), or None when unknown."""
        values = (self.provenance.get("encoder") or {}).get("time_steps")
        return TimeSteps.from_dict(values) if values else None

    @cached_property
    def row_lengths(self) -> np.ndarray:
        """[N] int64 samples of each row's audio the encoder saw: num_samples less what was cropped."""
        return self.num_samples - self.lost_samples

    def strong_targets(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(targets [n, n_time, C] uint8, strong [n] bool) of store rows: 1 where an event of the view's class c
        overlaps the samples time step t covers (events shifted by each row's offset); strong: whether a row's
        strong labels are known (its recording has events, or no label at all)."""
        if self.events is None or self.time_steps is None:
            missing = "keeps no sound events" if self.events is None else "does not record its token time steps"
            raise StoreError(f"{self.path}: the store {missing}; extract it again with an events file (events.tsv "
                             "beside the manifest, or --events FILE) and an encoder that defines time_steps")
        rows = np.asarray(rows, np.int64)
        recordings = self.recording_ids[rows]
        strong = strong_rows(self.events, recordings, self.read_rows("labels")[rows])
        found = row_events(self.view_events, recordings, self.offsets[rows], self.row_lengths[rows])
        targets = frame_targets(found, self.row_lengths[rows], self.time_steps, self.grid[0], len(self.label_names))
        return targets, strong

    def row_of(self, clip_id: str) -> int:
        """The row of a clip id in the view; a StoreError naming the id when it is not there."""
        if not hasattr(self, "_row_index"):
            self._row_index = {str(name): row for row, name in zip(self.selected.tolist(),
                                                                    self.clip_ids[self.selected].tolist())}
        if clip_id not in self._row_index:
            where = "this store view" if self._rows is not None else "this store"
            raise StoreError(f"{self.path}: no clip {clip_id!r} in {where}")
        return self._row_index[clip_id]

    def clip(self, clip_id: str, layer: int | None = None) -> dict:
        """One clip by id: its real tokens [valid, D] (time-major), prefix tokens, labels, split and row."""
        row = self.row_of(clip_id)
        valid = int(self.valid_tokens[row])
        tokens = self.read_tokens(layer, row, row + 1)[0]
        prefix = self.read_prefix(layer, row, row + 1)
        labels = self.labels[row]
        return {
            "clip_id": clip_id, "row": row, "tokens": tokens[:valid], "prefix": None if prefix is None else prefix[0],
            "grid": (valid // self.grid[1], self.grid[1]), "split": self.spec.split_names[int(self.split_codes[row])],
            "labels": [name for name, value in zip(self.label_names, labels.tolist(), strict=True) if value],
            "recording_id": str(self.recording_ids[row]), "offset": int(self.offsets[row]),
        }

    def split_indices(self, name: str | Sequence[str]) -> np.ndarray:
        """Sorted clip indices of split `name` (or of the union of several splits) inside the view."""
        names = [name] if isinstance(name, str) else list(name)
        for each in names:
            if each not in self.split_names:
                outside = " (it is outside this subset)" if each in self.spec.split_names else ""
                raise StoreError(f"{self.path}: no split {each!r}{outside}; this store has splits {self.split_names}")
        rows = np.isin(self.split_codes, [self.spec.split_names.index(each) for each in names])
        if self._rows is not None:
            rows &= self._rows
        return np.flatnonzero(rows).astype(np.int64)

    def describe_view(self) -> dict:
        """Where the data of a run came from: the store, its fingerprint and the subset (for provenance)."""
        return {
            "store": self.path,
            "fingerprint": self.fingerprint,
            "subset": self.subset.to_dict() or None,
            "clips": int(len(self.selected)),
            "classes": len(self.label_names),
        }

    def resolve_layer(self, layer: int | None) -> int:
        """None -> the last stored layer; negative -> counted from the encoder's last block."""
        if layer is None:
            return self.spec.layers[-1]
        if layer < 0:
            layer += (self.provenance.get("encoder") or {}).get("num_layers") or max(self.spec.layers) + 1
        if layer not in self.spec.layers:
            raise StoreError(f"{self.path}: layer {layer} was not extracted; stored layers are {self.layers}")
        return layer

    # -- tokens --------------------------------------------------------------------------------------------
    def token_array(self, layer: int | None = None) -> zarr.Array:
        """The raw Zarr array [N, T, D] of one layer (bfloat16 appears as uint16 bits, int8 as codes without their
        scales); reads are unchecked."""
        return self._array(layout.tokens_path(self.resolve_layer(layer)))

    def read_tokens(self, layer: int | None, start: int, stop: int) -> torch.Tensor:
        """Tokens [stop - start, T, D] of a contiguous clip range, in the stored dtype (int8: dequantised, float32)."""
        values, scales = self.read_stored(layer, start, stop)
        return values if scales is None else layout.dequantize(values, scales)

    def read_prefix(self, layer: int | None, start: int, stop: int) -> torch.Tensor | None:
        """Prefix tokens [stop - start, P, D] in their stored dtype (float16 in an int8 store; a format 3 int8
        store's int8 prefix dequantised, float32), or None when the encoder has none."""
        if not self.num_prefix:
            return None
        layer = self.resolve_layer(layer)
        values = layout.from_stored(self.read_rows(layout.prefix_path(layer), start, stop), self.prefix_dtype)
        if not self.quantized_prefix:
            return values
        scales = self.read_rows(layout.prefix_scales_path(layer), start, stop)
        return layout.dequantize(values, torch.from_numpy(np.ascontiguousarray(scales)))

    @property
    def prefix_dtype(self) -> str:
        """The dtype prefix tokens are stored in (float16 in an int8 store; int8 in a format 3 one)."""
        return layout.prefix_dtype(self.dtype, self.format_version)

    @property
    def prefix_read_dtype(self) -> torch.dtype:
        """The torch dtype `read_prefix` returns: the stored one, or float32 for a format 3 store's int8 prefix."""
        return torch.float32 if self.quantized_prefix else layout.torch_dtype(self.prefix_dtype)

    @property
    def quantized_prefix(self) -> bool:
        """Whether prefix tokens are int8 codes with prefix_scales (a format 3 int8 store with a prefix)."""
        return layout.has_quantized_prefix(self.dtype, self.num_prefix, self.format_version)

    def read_stored(self, layer: int | None, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tokens [n, T, D] as stored, their float16 scales [n, T] for int8 stores, else None). What the loader keeps
        and moves: int8 stays int8."""
        layer = self.resolve_layer(layer)
        values = layout.from_stored(self.read_rows(layout.tokens_path(layer), start, stop), self.dtype)
        if not layout.is_quantized(self.dtype):
            return values, None
        return values, torch.from_numpy(np.ascontiguousarray(self.read_rows(layout.scales_path(layer), start, stop)))

    def token_mask(self, start: int, stop: int) -> torch.Tensor:
        """[stop - start, T] bool: True where a token holds real audio."""
        valid = torch.from_numpy(self.valid_tokens[start:stop].astype(np.int64))
        return torch.arange(self.num_tokens)[None, :] < valid[:, None]

    def token_nbytes(self, layer: int | None = None) -> int:
        """Uncompressed bytes of one layer's tokens (with their scales, for int8)."""
        return self.n_clips * self.num_tokens * layout.token_bytes(self.dtype, self.embed_dim)

    def prefix_nbytes(self) -> int:
        """Uncompressed bytes of one layer's prefix tokens (with their scales, in a format 3 int8 store)."""
        return self.n_clips * self.num_prefix * layout.token_bytes(self.prefix_dtype, self.embed_dim)

    def disk_nbytes(self) -> int | None:
        """Bytes on disk for a local store or zip, None for remote ones."""
        if urls.is_remote(self.path):
            return None
        root = urls.local_path(self.path)
        if root.is_file():
            return root.stat().st_size
        if not root.is_dir():
            return None
        return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())

    def __repr__(self) -> str:
        view = f", subset={self.subset.to_dict()}" if not self.subset.is_everything else ""
        return f"TokenStore({self.path!r}, clips={self.n_clips}, layers={self.layers}, grid={self.grid}{view})"
