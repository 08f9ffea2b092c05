"""Opening a stranger's store must never run code: every node's metadata is checked against an allowlist first.

The check reads the raw `zarr.json` documents (plain JSON) before zarr decodes any chunk, and refuses object or
pickle-like codecs and data types, Zarr v2 metadata, storage transformers, and arrays nested in unexpected places.
"""

from __future__ import annotations

import json

from zarr.abc.store import Store

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
    return problems


def _read_doc(store: Store, key: str) -> tuple[dict | None, str | None]:
    raw = urls.get_bytes(store, key)
    if raw is None:
        return None, None
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


def ensure_safe(store: Store, url: str) -> None:
    """Raise a StoreError listing every unsafe node, before anything is decoded."""
    problems = metadata_problems(store)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise StoreError(f"{url}: refusing to open this store: {shown}")
