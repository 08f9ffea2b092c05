"""`embedcache verify`: decode every chunk of a store and check it against its own layout and provenance.

Checks, each reported as (key, what is wrong): metadata safety (no object/pickle codecs), the embedcache
attributes against `schema` (types and bounds, formats 1 to 3), every expected array's shape and dtype and a
crc32c codec on it, every chunk present and decoding (checksums), NaN/inf in tokens (int8: codes in -127..127,
scales finite and >= 0), completion markers and status,
per-clip arrays in range, and provenance that agrees with the layout. A truncated zip is scanned entry by entry to
name the entry it cuts and what is lost.
"""

from __future__ import annotations

import itertools
import json
import struct
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from embedcache.errors import StoreError
from embedcache.store import events as store_events
from embedcache.store import layout, safety, schema, urls
from embedcache.store.reader import chunk_keys, describe_read_error
from embedcache.store.schema import expected_arrays
from embedcache.store.writer import StoreSpec, fingerprint_of

# Chunks decoded per request: remote stores fetch them concurrently.
READ_BATCH_CHUNKS = 8
PARTIAL_SUFFIX = ".partial"  # temporary files a killed local write leaves; never part of the store
# Per-layer arrays, chunked by whole clips like the tokens: tokens, prefix tokens and (int8) their scales.
TOKEN_PARTS = ("tokens/", "prefix/", "scales/", "prefix_scales/")


@dataclass
class Problem:
    """One thing wrong with a store: the chunk key, array or attribute at fault, and what is wrong with it."""

    key: str
    what: str

    def __str__(self) -> str:
        return f"{self.key}: {self.what}"


@dataclass
class VerifyReport:
    """What `verify_store` checked and found."""

    url: str
    problems: list[Problem] = field(default_factory=list)
    arrays_checked: int = 0
    chunks_checked: int = 0
    bytes_decoded: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, key: str, what: str) -> None:
        self.problems.append(Problem(key, what))

    def damaged_keys(self) -> list[str]:
        return [problem.key for problem in self.problems]


def verify_store(url: str | Path, check_values: bool = True) -> VerifyReport:
    """Check every chunk and attribute of the store at `url` (read-only); the report lists what is wrong."""
    started = time.perf_counter()
    report = VerifyReport(str(url))
    try:
        _verify(report, check_values)
    except StoreError as error:
        report.add(report.url, str(error))
    report.seconds = time.perf_counter() - started
    return report


def _verify(report: VerifyReport, check_values: bool) -> None:
    url = report.url
    if urls.is_zip(url) and urls.local_path(url).is_file():
        cut = zip_damage(urls.local_path(url))
        if cut:
            report.problems += cut
            return
    store = urls.open_store(url, "r")
    if not urls.has_key(store, "zarr.json"):
        report.add(url, f"no token store there ({safety.store_problems(store)[0]})")
        return
    group = _open_checked(report, store)
    if group is None:
        return  # nothing unsafe or unparseable is ever decoded
    attrs = group.attrs.asdict().get(layout.ATTRS_KEY)
    spec = _check_attrs(report, attrs)
    if spec is None:
        return
    arrays = _check_arrays(report, group, spec, attrs["format_version"])
    for path, array in arrays.items():
        _check_chunks(report, group, path, array, check_values and path.startswith(TOKEN_PARTS))
    if "chunk_done" in arrays:
        _check_markers(report, group, attrs, spec)
    _check_per_clip(report, group, arrays, spec)
    _check_events(report, group, attrs, spec)
    _check_provenance(report, attrs, spec)


def _open_checked(report: VerifyReport, store) -> zarr.Group | None:
    """The root group once every node's metadata is safe and parseable; None (problems reported) otherwise."""
    try:
        unsafe = safety.store_problems(store)
        if not unsafe:
            return zarr.open_group(store=store, mode="r", zarr_format=3)
    except RecursionError:
        unsafe = ["zarr.json: JSON nested too deeply to parse (here or in an array's zarr.json)"]
    except (ValueError, TypeError, KeyError) as error:
        unsafe = [f"zarr.json: cannot be parsed ({type(error).__name__}: {str(error)[:200]})"]
    for line in unsafe:
        key, _, what = line.partition(": ")
        report.add(key, what)
    return None


def _check_attrs(report: VerifyReport, attrs) -> StoreSpec | None:
    """The layout once the attributes match the schema; each problem is reported by its key."""
    problems = schema.attrs_problems(attrs)
    for key, what in problems:
        report.add(key, what)
    if problems:
        return None
    if attrs.get("growing"):
        report.add(f"{schema.KEY}.growing", f"an append was interrupted (mode {attrs['growing']['mode']!r}, from "
                                            f"{schema.show(attrs['growing'].get('source'))}); re-run the same "
                                            "`embedcache append` command to finish it")
    return StoreSpec.from_attrs(attrs["layout"])


def _check_arrays(report: VerifyReport, group: zarr.Group, spec: StoreSpec, version: int) -> dict[str, zarr.Array]:
    """Open every expected array, checking shape, dtype, chunking and checksum codec."""
    found = {}
    for path, expected in expected_arrays(spec, version).items():
        try:
            array = group[path]
        except KeyError:
            report.add(path, "array missing")
            continue
        except (ValueError, TypeError, RecursionError) as error:
            report.add(f"{path}/zarr.json", f"cannot be read ({type(error).__name__}: {str(error)[:200]})")
            continue
        if not isinstance(array, zarr.Array):
            report.add(path, "is a group, expected an array")
            continue
        problem = schema.array_problem(array.shape, array.dtype, expected)
        if problem:
            report.add(path, problem.removeprefix("has "))
            continue
        codecs = [codec.get("name") for codec in array.metadata.to_dict().get("codecs", [])]
        if not codecs or codecs[-1] != "crc32c":
            report.add(path, f"codecs {codecs} end without crc32c: corruption of this array would go undetected")
        if path.startswith(TOKEN_PARTS) and array.chunks[0] != spec.chunk_clips:
            report.add(path, f"chunks of {array.chunks[0]} clips, the layout says {spec.chunk_clips}")
        found[path] = array
        report.arrays_checked += 1
    for kind in (part.rstrip("/") for part in TOKEN_PARTS):
        if kind in group and isinstance(group[kind], zarr.Group):
            listed = {path.partition("/")[2] for path, _ in expected_arrays(spec, version).items()
                      if path.startswith(f"{kind}/")}
            for name in sorted(set(group[kind].array_keys()) - listed):
                report.add(f"{kind}/{name}", "array not listed in the layout's layers")
    return found


def _check_chunks(report: VerifyReport, group: zarr.Group, path: str, array: zarr.Array, values: bool) -> None:
    """Every chunk present and decoding; tokens finite."""
    present = {key for key in urls.list_keys(group.store, f"{path}/") if not key.endswith(PARTIAL_SUFFIX)}
    rows = array.chunks[0]
    n_rows = array.shape[0]
    expected = set(chunk_keys(array, path, 0, n_rows)) if n_rows else set()
    for key in sorted(expected - present):
        report.add(key, "chunk missing")
    for key in sorted(present - expected - {f"{path}/zarr.json"}):
        report.add(key, "object outside the array's chunk grid")
    starts = [start for start in range(0, n_rows, rows)
              if all(key in present for key in chunk_keys(array, path, start, start + 1))]
    for first in range(0, len(starts), READ_BATCH_CHUNKS):
        _decode_batch(report, array, path, starts[first:first + READ_BATCH_CHUNKS], values)


def _decode_batch(report: VerifyReport, array: zarr.Array, path: str, starts: list[int], values: bool) -> None:
    rows = array.chunks[0]
    contiguous = starts == list(range(starts[0], starts[-1] + 1, rows))
    if contiguous and len(starts) > 1:
        try:
            data = array[starts[0]:min(starts[-1] + rows, array.shape[0])]
        except Exception:
            data = None  # one of them is bad: decode one by one to name it
        if data is not None:
            for offset, start in enumerate(starts):
                _check_chunk_values(report, array, path, start, data[offset * rows:(offset + 1) * rows], values)
            return
    for start in starts:
        stop = min(start + rows, array.shape[0])
        try:
            data = array[start:stop]
        except Exception as error:
            key = chunk_keys(array, path, start, start + 1)[0]
            report.add(key, describe_read_error(error))
            report.chunks_checked += 1
            continue
        _check_chunk_values(report, array, path, start, data, values)


def _check_chunk_values(
    report: VerifyReport, array: zarr.Array, path: str, start: int, data: np.ndarray, values: bool
) -> None:
    report.chunks_checked += 1
    report.bytes_decoded += int(data.nbytes) if data.dtype.kind != "T" else 0
    if not values:
        return
    if data.dtype == np.int8:  # symmetric codes: -128 is never written (and integers are always finite)
        bad, what = (data == -128).reshape(len(data), -1).any(axis=1), "int8 codes of -128 (outside -127..127)"
    else:
        bad = nonfinite_per_clip(data)
        what = "NaN/inf scales" if path.startswith(("scales/", "prefix_scales/")) else "NaN/inf tokens"
        if path.startswith(("scales/", "prefix_scales/")) and (data < 0).any():
            bad, what = bad | (data < 0).reshape(len(data), -1).any(axis=1), "negative or NaN/inf scales"
    if bad.any():
        clips = np.flatnonzero(bad) + start
        key = chunk_keys(array, path, start, start + 1)[0]
        report.add(key, f"{int(bad.sum())} clip(s) hold {what} (rows {clips[:5].tolist()}"
                        f"{'...' if len(clips) > 5 else ''})")


def nonfinite_per_clip(data: np.ndarray) -> np.ndarray:
    """[n] bool: clip rows of a [n, T, D] token block holding NaN or inf (bfloat16 bits included)."""
    if data.dtype == np.uint16:  # bfloat16 bits: exponent all ones is inf or NaN
        bad = (data & 0x7F80) == 0x7F80
    else:
        bad = ~np.isfinite(data)
    return bad.reshape(len(data), -1).any(axis=1)


def _check_markers(report: VerifyReport, group: zarr.Group, attrs: dict, spec: StoreSpec) -> None:
    try:
        markers = group["chunk_done"][:]
    except Exception:
        return  # the undecodable marker chunks are already reported
    pending = np.flatnonzero(markers != 1)
    status = attrs.get("status")
    if status == layout.STATUS_COMPLETE and len(pending):
        for chunk in pending[:50]:
            report.add(f"chunk_done/c/{chunk}", "status is complete but this chunk's completion marker is unset")
    elif status != layout.STATUS_COMPLETE:
        shown = pending[:10].tolist()
        report.add(f"zarr.json:attributes.{layout.ATTRS_KEY}.status",
                   f"{status!r}: the store is incomplete, {len(pending)} of {spec.n_chunks} chunks pending "
                   f"(first {shown}); finish it by re-running the same `embedcache extract` command")


def _read_or_none(array: zarr.Array) -> np.ndarray | None:
    try:
        return array[:]
    except Exception:
        return None  # its damaged chunks are already reported


def _check_per_clip(report: VerifyReport, group: zarr.Group, arrays: dict, spec: StoreSpec) -> None:
    names = ("valid_tokens", "num_samples", "labels", "splits", "clip_ids", *layout.ROW_ARRAYS)
    data = {name: _read_or_none(arrays[name]) for name in names if name in arrays}
    for name in ("offsets", "lost_samples"):
        values = data.get(name)
        if values is not None and (values < 0).any():
            report.add(name, f"{int((values < 0).sum())} negative value(s)")
    lost, samples = data.get("lost_samples"), data.get("num_samples")
    if lost is not None and samples is not None and (lost > samples).any():
        report.add("lost_samples", "more samples cropped than the row's audio has (num_samples)")
    recordings = data.get("recording_ids")
    if recordings is not None and any(not str(name) for name in recordings.tolist()):
        report.add("recording_ids", "empty recording ids")
    valid = data.get("valid_tokens")
    if valid is not None and ((valid < 0) | (valid > spec.num_tokens)).any():
        rows = np.flatnonzero((valid < 0) | (valid > spec.num_tokens))
        report.add("valid_tokens", f"{len(rows)} value(s) outside 0..{spec.num_tokens} (rows {rows[:5].tolist()})")
    samples = data.get("num_samples")
    if samples is not None and (samples < 0).any():
        report.add("num_samples", "negative sample counts")
    labels = data.get("labels")
    if labels is not None and (labels > 1).any():
        report.add("labels", "values other than 0/1 in the multi-hot matrix")
    splits = data.get("splits")
    if splits is not None and (splits >= len(spec.split_names)).any():
        report.add("splits", f"codes >= {len(spec.split_names)} (the number of layout.split_names)")
    ids = data.get("clip_ids")
    if ids is not None:
        names = [str(name) for name in ids.tolist()]
        if any(not name for name in names):
            report.add("clip_ids", "empty clip ids")
        if len(set(names)) != len(names):
            seen, repeated = set(), []
            for name in names:
                if name in seen:
                    repeated.append(name)
                seen.add(name)
            report.add("clip_ids", f"{len(repeated)} duplicated clip id(s), e.g. {repeated[:3]}")


def _check_events(report: VerifyReport, group: zarr.Group, attrs: dict, spec: StoreSpec) -> None:
    """The sound events the attributes announce: each array's shape, dtype and checksum codec, then its values."""
    values = {}
    for path, expected in store_events.event_arrays(attrs).items():
        try:
            array = group[path]
        except KeyError:
            report.add(path, "array missing (the attributes announce events)")
            continue
        if not isinstance(array, zarr.Array):
            report.add(path, "is a group, expected an array")
            continue
        problem = schema.array_problem(array.shape, array.dtype, expected)
        codecs = [codec.get("name") for codec in array.metadata.to_dict().get("codecs", [])]
        if problem or not codecs or codecs[-1] != "crc32c":
            report.add(path, problem.removeprefix("has ") if problem else f"codecs {codecs} end without crc32c")
            continue
        report.arrays_checked += 1
        try:
            values[path] = array[:]
        except Exception as error:  # codec, checksum and I/O errors alike
            report.add(path, describe_read_error(error))
    if len(values) < len(store_events.ARRAYS) or "recording_ids" not in group:
        return
    events = store_events.read_events(values.__getitem__)
    recordings = {str(name) for name in group["recording_ids"][:].tolist()}
    for path, what in store_events.event_problems(events, len(spec.label_names), recordings):
        report.add(path, what)


def _check_provenance(report: VerifyReport, attrs: dict, spec: StoreSpec) -> None:
    base = f"zarr.json:attributes.{layout.ATTRS_KEY}.provenance"
    provenance = attrs.get("provenance")
    if not isinstance(provenance, dict):
        report.add(base, "not a mapping")
        return
    encoder = provenance.get("encoder") or {}
    pairs = [
        ("layers", provenance.get("layers"), list(spec.layers)),
        ("dtype", provenance.get("dtype"), spec.dtype),
        ("encoder.embed_dim", encoder.get("embed_dim"), spec.embed_dim),
        ("encoder.num_prefix", encoder.get("num_prefix"), spec.num_prefix),
    ]
    fields = provenance.get("fingerprint_fields")
    if isinstance(fields, dict):
        pairs += [
            ("fingerprint_fields.layers", fields.get("layers"), list(spec.layers)),
            ("fingerprint_fields.dtype", fields.get("dtype"), spec.dtype),
            ("fingerprint_fields.compression", fields.get("compression"), spec.compression),
            ("fingerprint_fields.chunk_clips", fields.get("chunk_clips"), spec.chunk_clips),
            ("clip_policy.num_samples", (provenance.get("clip_policy") or {}).get("num_samples"),
             fields.get("num_samples")),
        ]
        if fingerprint_of(fields) != attrs.get("fingerprint"):
            report.add(f"zarr.json:attributes.{layout.ATTRS_KEY}.fingerprint",
                       "does not match the hash of provenance.fingerprint_fields: the settings were edited")
    for name, recorded, actual in pairs:
        if recorded is not None and recorded != actual:
            report.add(f"{base}.{name}", f"records {recorded!r} but the store holds {actual!r}")


# -- truncated zips ---------------------------------------------------------------------------------------------
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_SIGNATURE = b"PK\x03\x04"


def zip_damage(path: Path) -> list[Problem]:
    """Problems of a zip whose index (central directory) is unreadable; empty when it opens normally.

    The local entry headers are walked from the start: intact entries are kept, the entry the file ends inside
    is named, and every chunk that the surviving metadata promises but the file no longer holds is listed.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
        return []
    except zipfile.BadZipFile:
        pass
    size = path.stat().st_size
    problems = [Problem(str(path), f"the zip's central directory is unreadable ({size} bytes): it was truncated "
                                   "or damaged; re-pack or re-download it")]
    entries: dict[str, bytes] = {}
    with open(path, "rb") as handle:
        offset = 0
        while offset + _LOCAL_HEADER.size <= size:
            handle.seek(offset)
            fields = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
            signature, flags, compressed, name_length, extra_length = (
                fields[0], fields[2], fields[7], fields[9], fields[10])
            if signature != _LOCAL_SIGNATURE:
                break
            name = handle.read(name_length).decode("utf-8", "replace")
            if flags & 0x08:
                problems.append(Problem(name, "entry sizes are in data descriptors: cannot scan past it"))
                break
            start = offset + _LOCAL_HEADER.size + name_length + extra_length
            if start + compressed > size:
                problems.append(Problem(name, f"entry cut off: {max(0, size - start)} of {compressed} bytes present"))
                break
            if name.endswith("zarr.json"):
                handle.seek(start)
                entries[name] = handle.read(compressed)
            else:
                entries[name] = b""
            offset = start + compressed
    problems += _missing_from_metadata(entries, {p.key for p in problems})
    return problems


def _missing_from_metadata(entries: dict[str, bytes], already: set[str]) -> list[Problem]:
    """Chunks that surviving array metadata promises but the scanned entries lack."""
    problems = []
    for name, raw in sorted(entries.items()):
        if not name.endswith("zarr.json") or name == "zarr.json":
            continue
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if doc.get("node_type") != "array":
            continue
        path = name.removesuffix("/zarr.json")
        grid = doc["chunk_grid"]["configuration"]["chunk_shape"]
        separator = doc["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
        counts = [-(-extent // chunk) for extent, chunk in zip(doc["shape"], grid)]
        missing = [f"{path}/c{separator}{separator.join(map(str, coords))}"
                   for coords in itertools.product(*(range(n) for n in counts))]
        missing = [key for key in missing if key not in entries and key not in already]
        for key in missing:
            problems.append(Problem(key, "chunk missing (after the point where the zip was cut)"))
    return problems
