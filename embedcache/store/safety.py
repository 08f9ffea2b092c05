"""The trust boundary: a store, zip or HDF5 file from a stranger is checked here before anything in it is decoded.

Opening one must never run code, read another local file, write outside the destination, block, or allocate
more than its own size promises:
- files: a local store holds regular files and folders only (links, FIFOs, devices and sockets are refused, never
  opened);
- keys and zip members: relative names that stay inside the destination (no absolute paths, `..`, backslashes or
  drive letters), no duplicates or link entries, and declared sizes within a budget (a zip bomb is refused);
- metadata: every node's raw `zarr.json` (plain JSON) is checked against an allowlist: object or pickle-like codecs
  and data types, Zarr v2 metadata, storage transformers, arrays nested in unexpected places and oversized chunks
  are refused;
- HDF5: plain contiguous, chunked or compact datasets with known filters only (no external or soft links, virtual
  datasets or external raw storage), whose declared sizes fit the file.
"""

from __future__ import annotations

import json
import math
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
from zarr.abc.store import Store
from zarr.storage import LocalStore, ZipStore

from embedcache.errors import StoreError
from embedcache.store import urls

# Plain numbers and UTF-8 strings: decoding them is pure data handling, never code execution.
SAFE_DATA_TYPES = frozenset({
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "string",
})
# Codecs of the Zarr v3 core spec (and blosc/gzip, also pure byte transforms); numcodecs.* plug-ins such as
# numcodecs.pickle are refused by name.
SAFE_CODECS = frozenset({"bytes", "zstd", "crc32c", "vlen-utf8", "gzip", "blosc", "transpose"})
MAX_DEPTH = 4
MAX_FOLDER_DEPTH = 16  # groups (4) + an array + its chunk key (c/ + one folder per dimension) fit well inside
MAX_METADATA_BYTES = 64 << 20  # one zarr.json, read whole
MAX_CHUNK_BYTES = 2 << 30  # one chunk, decoded whole
MAX_CHUNKS_PER_ARRAY = 1_000_000  # verify and the reader list every chunk key of an array
# Zip budgets: a member may expand at most MAX_ZIP_RATIO times (plus a little), and all of them together at most
# MAX_ZIP_RATIO times the archive. `embedcache pack` stores members uncompressed (ratio 1).
MAX_ZIP_RATIO = 100
ZIP_MEMBER_SLACK = 64 << 10
ZIP_TOTAL_SLACK = 64 << 20
ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
               zipfile.ZIP_LZMA: "lzma"}
# HDF5 budgets: an unfiltered dataset cannot hold more than the file; a compressed one at most MAX_HDF5_RATIO times.
MAX_HDF5_RATIO = 1000
MAX_HDF5_OBJECTS = 10_000
SAFE_HDF5_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 32000: "lzf"}
# What one import may hold in memory at once (whole per-clip arrays, one chunk of every layer).
MEMORY_BUDGET_BYTES = 4 << 30
MAX_PROBLEMS = 20
REPACK = "ask its sender to re-create it with `embedcache pack` or `embedcache copy`"


# -- names ---------------------------------------------------------------------------------------------------------
def key_problem(key: str) -> str | None:
    """Why `key` could escape (or confuse) a destination folder, or None for a plain relative key like `a/c/0`."""
    if not key:
        return "an empty name"
    if any(ord(char) < 32 for char in key):
        return "a control character in its name"
    if "\\" in key:
        return "a backslash in its name (a Windows path separator: it could point outside the destination)"
    if ":" in key:
        return "a ':' in its name (a drive letter or a Windows stream: it could point outside the destination)"
    if key.startswith("/"):
        return "an absolute path (it would be written outside the destination)"
    parts = key.split("/")
    if ".." in parts:
        return "'..' in its name (it would be written outside the destination)"
    if "." in parts or "" in parts:
        return "an empty or '.' path segment"
    if len(key.encode()) > 1024 or any(len(part.encode()) > 255 for part in parts):
        return "a name longer than a file system allows"
    return None


def shown(name: str) -> str:
    """A key or member name as it appears in a message: quoted, escaped only when it holds unprintable characters."""
    return f"'{name}'" if name.isprintable() else repr(name)


def ensure_keys_safe(keys: list[str], url: str) -> None:
    """Raise a StoreError naming the first key that is not a plain relative name (before anything is written)."""
    for key in keys:
        why = key_problem(key)
        if why:
            raise StoreError(f"{url}: refusing to copy this store: object {shown(key)} has {why}; {REPACK}")


# -- files -----------------------------------------------------------------------------------------------------------
def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def tree_problems(root: Path) -> list[str]:
    """Entries under a local store's root that are not regular files or folders (none of them is opened)."""
    # Plain scandir with the directory entry's own type: no stat call per chunk (a few us per file).
    problems: list[str] = []
    base = len(str(root)) + 1
    pending = [(str(root), 0)]
    while pending and len(problems) < MAX_PROBLEMS:
        folder, depth = pending.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        if depth + 1 > MAX_FOLDER_DEPTH:
                            problems.append(f"{entry.path[base:]}: folders nested deeper than {MAX_FOLDER_DEPTH}")
                        else:
                            pending.append((entry.path, depth + 1))
                    elif entry.is_file(follow_symlinks=False):
                        if entry.name == "zarr.json" and entry.stat(follow_symlinks=False).st_size > MAX_METADATA_BYTES:
                            problems.append(f"{entry.path[base:]}: more than {MAX_METADATA_BYTES} bytes of metadata")
                    else:
                        mode = entry.stat(follow_symlinks=False).st_mode
                        target = f" to {os.readlink(entry.path)}" if stat.S_ISLNK(mode) else ""
                        problems.append(f"{entry.path[base:]}: is {_kind(mode)}{target}, not a regular file; a store "
                                        f"must hold its own files only: delete it or {REPACK}")
        except OSError as error:
            problems.append(f"{folder[base:] or '.'}: cannot be listed ({error.strerror}); check its permissions")
    return sorted(problems)


def regular_file_problem(path: Path) -> str | None:
    """Why the file the user named cannot be read as data (missing, a folder, a FIFO, a device), or None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return f"is {_kind(mode)}, not a regular file"
    return None


def zip_problems(path: Path) -> list[str]:
    """Members of a zip that could escape a destination, pretend to be links, repeat, or expand without bound."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile as error:
        return [f"{path}: not a readable zip ({error})"]
    problems: list[str] = []
    seen: set[str] = set()
    declared = compressed = 0
    for info in infos:
        name = info.filename
        where = f"zip member {shown(name)}"
        why = key_problem(name[:-1] if name.endswith("/") else name)
        mode = info.external_attr >> 16
        if why:
            problems.append(f"{where}: has {why}; {REPACK}")
        elif name in seen:
            problems.append(f"{where}: appears more than once (a later copy could replace the checked one); {REPACK}")
        elif stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            problems.append(f"{where}: is {_kind(mode)} entry, not a regular file; {REPACK}")
        elif info.flag_bits & 0x1:
            problems.append(f"{where}: is encrypted; {REPACK}")
        elif info.compress_type not in ZIP_METHODS:
            problems.append(f"{where}: compression method {info.compress_type} is not one of "
                            f"{', '.join(ZIP_METHODS.values())}; {REPACK}")
        elif info.header_offset + info.compress_size > size:
            problems.append(f"{where}: claims {info.compress_size} bytes past offset {info.header_offset} of a "
                            f"{size}-byte file (truncated or forged); re-download it or {REPACK}")
        elif (info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size) or \
                info.file_size > MAX_ZIP_RATIO * info.compress_size + ZIP_MEMBER_SLACK:
            problems.append(f"{where}: declares {info.file_size} bytes from {info.compress_size} stored (more than "
                            f"{MAX_ZIP_RATIO}x: a zip bomb or a forged size); re-pack it with `embedcache pack`, "
                            "which stores members uncompressed")
        seen.add(name)
        declared += info.file_size
        compressed += info.compress_size
        if len(problems) >= MAX_PROBLEMS:
            return problems
    if not problems and compressed > size:
        problems.append(f"{path}: its members claim {compressed} bytes in a {size}-byte file (they overlap: a zip "
                        f"bomb); {REPACK}")
    if not problems and declared > MAX_ZIP_RATIO * size + ZIP_TOTAL_SLACK:
        problems.append(f"{path}: its members declare {declared} bytes in all, more than {MAX_ZIP_RATIO}x the "
                        f"{size}-byte file (a zip bomb); re-pack it with `embedcache pack`")
    return problems


def file_problems(store: Store) -> list[str]:
    """What in a local store's folder or a zip's member list is unsafe to read, one line each (empty when safe).

    Object stores (s3://...) hold no links or special files; their keys are checked where they are copied.
    """
    if isinstance(store, LocalStore):
        return tree_problems(Path(store.root))
    if isinstance(store, ZipStore):
        return zip_problems(Path(store.path))
    return []


# -- metadata --------------------------------------------------------------------------------------------------------
def _size_problems(key: str, doc: dict, name: str) -> list[str]:
    """Chunks too large to decode or too many to list; shapes that are not lists of non-negative integers."""
    shape = doc.get("shape")
    grid = doc.get("chunk_grid")
    chunks = grid.get("configuration", {}).get("chunk_shape") if isinstance(grid, dict) else None
    plain = [value for value in (shape, chunks) if isinstance(value, list) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value)]
    if len(plain) != 2 or len(shape) != len(chunks) or 0 in chunks:
        return [f"{key}: shape {shape!r} and chunk_shape {chunks!r} must be lists of whole numbers of the same length "
                "(chunks > 0)"]
    itemsize = 1 if name == "string" else np.dtype(name).itemsize
    problems = []
    if math.prod(chunks) * itemsize > MAX_CHUNK_BYTES:
        problems.append(f"{key}: chunks of {math.prod(chunks) * itemsize} bytes (at most {MAX_CHUNK_BYTES})")
    count = math.prod(-(-extent // chunk) for extent, chunk in zip(shape, chunks))
    if count > MAX_CHUNKS_PER_ARRAY:
        problems.append(f"{key}: shape {shape} in chunks of {chunks} makes {count} chunks (at most "
                        f"{MAX_CHUNKS_PER_ARRAY})")
    return problems


def _node_problems(key: str, doc: dict) -> list[str]:
    """What is unsafe or unknown in one node's metadata document."""
    problems = []
    if doc.get("zarr_format") != 3:
        problems.append(f"{key}: zarr_format {doc.get('zarr_format')!r}; only Zarr v3 stores are read")
    node_type = doc.get("node_type")
    if node_type == "group":
        return problems
    if node_type != "array":
        return problems + [f"{key}: unknown node_type {node_type!r}"]
    data_type = doc.get("data_type")
    name = data_type.get("name") if isinstance(data_type, dict) else data_type
    if name not in SAFE_DATA_TYPES:
        problems.append(f"{key}: data_type {name!r} is not allowed (object, pickle and extension types can run "
                        f"code); allowed: {', '.join(sorted(SAFE_DATA_TYPES))}")
    for codec in doc.get("codecs") or []:
        codec_name = codec.get("name") if isinstance(codec, dict) else codec
        if codec_name not in SAFE_CODECS:
            problems.append(f"{key}: codec {codec_name!r} is not allowed; allowed: {', '.join(sorted(SAFE_CODECS))}")
    if doc.get("storage_transformers"):
        problems.append(f"{key}: storage_transformers are not allowed")
    if name in SAFE_DATA_TYPES:
        problems += _size_problems(key, doc, name)
    return problems


def _read_doc(store: Store, key: str) -> tuple[dict | None, str | None]:
    raw = urls.get_bytes(store, key)
    if raw is None:
        return None, None
    if len(raw) > MAX_METADATA_BYTES:
        return None, f"{key}: {len(raw)} bytes of metadata (at most {MAX_METADATA_BYTES})"
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, f"{key}: not valid JSON ({error})"
    if not isinstance(doc, dict):
        return None, f"{key}: not a JSON object"
    return doc, None


def metadata_problems(store: Store) -> list[str]:
    """Every unsafe or unreadable node under the store's root, as one line each (empty when safe)."""
    root, error = _read_doc(store, "zarr.json")
    if error:
        return [error]
    if root is None:
        if urls.get_bytes(store, ".zgroup") is not None or urls.get_bytes(store, ".zarray") is not None:
            return ["zarr.json is missing and Zarr v2 metadata (.zgroup/.zarray) is there: only Zarr v3 stores "
                    "are read"]
        return ["zarr.json: missing (not a Zarr v3 group)"]
    problems = _node_problems("zarr.json", root)
    if root.get("node_type") != "group":
        return problems + ["zarr.json: the root must be a group"]
    pending = [("", 0)]
    while pending:
        prefix, depth = pending.pop()
        for child in urls.list_children(store, prefix):
            if child == "zarr.json" or child.startswith("."):
                continue
            path = f"{prefix}/{child}" if prefix else child
            doc, error = _read_doc(store, f"{path}/zarr.json")
            if error:
                problems.append(error)
            if doc is None:
                continue
            problems += _node_problems(f"{path}/zarr.json", doc)
            if doc.get("node_type") == "group":
                if depth + 1 >= MAX_DEPTH:
                    problems.append(f"{path}: groups nested deeper than {MAX_DEPTH} levels")
                else:
                    pending.append((path, depth + 1))
    return problems


def store_problems(store: Store) -> list[str]:
    """Unsafe files or members first (then nothing is read), else unsafe metadata; empty when the store is safe."""
    return file_problems(store) or metadata_problems(store)


def ensure_safe(store: Store, url: str) -> None:
    """Raise a StoreError listing every unsafe file, member or node, before anything is decoded."""
    problems = store_problems(store)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise StoreError(f"{url}: refusing to open this store: {shown}")


# -- HDF5 ------------------------------------------------------------------------------------------------------------
def _dataset_problems(name: str, dataset, file_size: int) -> list[str]:
    """A dataset that reads another file, uses an unknown filter, or declares more bytes than the file can hold."""
    import h5py

    plist = dataset.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        return [f"/{name}: is a virtual dataset (it maps data from other files); embedcache exports hold plain "
                "datasets: re-export the store with `embedcache export`"]
    if plist.get_external_count() > 0:
        where = plist.get_external(0)[0].decode(errors="replace")
        return [f"/{name}: keeps its raw data in an external file ({where}); embedcache exports keep every byte "
                "inside the .h5: re-export the store with `embedcache export`"]
    if layout not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT):
        return [f"/{name}: storage layout {layout} is not contiguous, chunked or compact"]
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    unknown = [code for code in filters if code not in SAFE_HDF5_FILTERS]
    if unknown:
        return [f"/{name}: filter {unknown[0]} is not one of {', '.join(SAFE_HDF5_FILTERS.values())} (others load "
                "plug-in code); re-export with --compression gzip or lzf"]
    declared = math.prod(dataset.shape or ()) * dataset.get_type().get_size()
    compressing = any(code in (1, 32000) for code in filters)
    limit = file_size * (MAX_HDF5_RATIO if compressing else 1)
    if declared > limit:
        allowed = f"{MAX_HDF5_RATIO}x the file's size when compressed" if compressing else "the file's size"
        return [f"/{name}: declares {declared} bytes (shape {list(dataset.shape)}) in a {file_size}-byte file (at "
                f"most {allowed}): a forged or damaged file; re-export the store with `embedcache export`"]
    if layout == h5py.h5d.CHUNKED and math.prod(plist.get_chunk()) * dataset.get_type().get_size() > MAX_CHUNK_BYTES:
        return [f"/{name}: chunks of {list(plist.get_chunk())} are larger than {MAX_CHUNK_BYTES} bytes"]
    return []


def hdf5_problems(handle, path: Path) -> list[str]:
    """Walk every link of an open HDF5 file without following any; one line per link or dataset that is unsafe."""
    import h5py

    file_size = path.stat().st_size
    problems: list[str] = []
    seen: set[int] = set()
    count = 0
    pending = [("", handle.id)]
    while pending and len(problems) < MAX_PROBLEMS:
        prefix, group_id = pending.pop()
        for raw in list(group_id):
            count += 1
            if count > MAX_HDF5_OBJECTS:
                return problems + [f"{path}: more than {MAX_HDF5_OBJECTS} objects (an export has a few dozen)"]
            name = prefix + raw.decode(errors="replace")
            kind = group_id.links.get_info(raw).type
            if kind == h5py.h5l.TYPE_EXTERNAL:
                target, inside = (part.decode(errors="replace") for part in group_id.links.get_val(raw))
                problems.append(f"/{name}: is an external link to {target}:{inside} (it would read another file); "
                                "embedcache exports hold none: re-export the store with `embedcache export`")
            elif kind == h5py.h5l.TYPE_SOFT:
                problems.append(f"/{name}: is a soft link to {group_id.links.get_val(raw).decode(errors='replace')}; "
                                "embedcache exports hold none: re-export the store with `embedcache export`")
            elif kind != h5py.h5l.TYPE_HARD:
                problems.append(f"/{name}: is a user-defined link (type {kind}); embedcache exports hold none")
            else:
                child = h5py.h5o.open(group_id, raw)
                address = h5py.h5o.get_info(child).addr
                if address in seen:
                    continue
                seen.add(address)
                if isinstance(child, h5py.h5g.GroupID):
                    pending.append((name + "/", child))
                elif isinstance(child, h5py.h5d.DatasetID):
                    problems += _dataset_problems(name, child, file_size)
    return problems


def ensure_safe_hdf5(handle, path: Path) -> None:
    """Raise a StoreError listing what in an HDF5 file could read other files or exhaust memory, before reading it."""
    try:
        problems = hdf5_problems(handle, path)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as error:
        raise StoreError(f"{path}: its structure cannot be read ({type(error).__name__}: {error}); the file is "
                         "damaged: re-export the store with `embedcache export`") from None
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise StoreError(f"{path}: refusing to import this file: {shown}")


def ensure_within_memory(path: str | Path, what: str, nbytes: int) -> None:
    """Refuse to hold `nbytes` (of `what`) in memory at once beyond MEMORY_BUDGET_BYTES."""
    if nbytes > MEMORY_BUDGET_BYTES:
        raise StoreError(f"{path}: {what} would take {nbytes} bytes of memory at once (the budget is "
                         f"{MEMORY_BUDGET_BYTES}); the file declares more than it can hold: re-export it")
