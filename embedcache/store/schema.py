"""The schema of a store's `embedcache` root attributes (format versions 1, 2 and 3), checked before anything is used.

A stranger's zarr.json is data, not a promise. Every attribute that sizes an allocation or steers a read is checked
here for its type and bounds, once, before any array is opened; arrays are then compared with the shapes and dtypes
the layout promises before any chunk is decoded. `attrs_problems` lists every problem as (key, what) for `verify`;
`parse_attrs` raises the first as a one-line StoreError for the reader (`info`, `probe`, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from embedcache.errors import StoreError
from embedcache.store import events as store_events
from embedcache.store import layout
from embedcache.store.layout import StoreSpec

KEY = f"zarr.json:attributes.{layout.ATTRS_KEY}"

# Bounds: far above real stores (AudioSet: 2 M clips, 527 classes; ViT-H: 1280 dims, 32 blocks), low enough that
# nothing sized from them (a [N] vector, a [C] vector, one decoded chunk) can exhaust memory.
MAX_CLIPS = 1_000_000_000
MAX_TOKENS = 1 << 20
MAX_PREFIX = 1024
MAX_EMBED_DIM = 1 << 16
MAX_LAYER = 1023
MAX_CLASSES = 100_000
MAX_SPLITS = 256  # split codes are uint8
MAX_NAME_CHARS = 1024
MAX_FINGERPRINT_CHARS = 1024
MAX_CHUNK_BYTES = 1 << 31  # one chunk of one layer's tokens [chunk_clips, T, D], decoded at once
MAX_SAMPLE_RATE = 10_000_000
MAX_SAMPLES = 1 << 62
MAX_EVENTS = 1 << 32
MAX_DEPTH = 32  # nesting of the whole attribute document (real stores: 5)
COMPRESSIONS = ("zstd", "none")
STATUSES = (layout.STATUS_WRITING, layout.STATUS_COMPLETE)
GROW_MODES = ("clips", "layers")


def show(value) -> str:
    """A short description of any JSON value for a message (never the whole of a huge one)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value):,} characters)"
    if isinstance(value, dict):
        return f"a mapping of {len(value):,} key(s)"
    if isinstance(value, list):
        return repr(value) if len(value) <= 4 and len(repr(value)) <= 60 else f"a list of {len(value):,} item(s)"
    return repr(value)[:60]


@dataclass(frozen=True)
class Field:
    """One attribute: its JSON type, bounds, whether it may be absent or null, and (mappings) its own fields."""

    kind: str  # "int", "str", "bool", "choice", "int list", "name list", "mapping", "any"
    low: int | None = None
    high: int | None = None
    choices: tuple = ()
    size: tuple[int, int] = (0, 0)  # list length bounds
    required: bool = True
    null: bool = False
    fields: dict[str, Field] | None = None  # a mapping's known fields
    closed: bool = False  # a mapping with only its known fields
    items: Field | None = None  # a list's item schema (a list of mappings)

    def problems(self, value, key: str) -> Iterator[tuple[str, str]]:
        """(key, what) for everything wrong with `value` at `key`."""
        if value is None and self.null:
            return
        check = getattr(self, f"_{self.kind.replace(' ', '_')}")
        yield from check(value, key)

    def _int(self, value, key):
        if type(value) is not int:
            yield key, f"{show(value)} is not an integer"
        elif self.low is not None and value < self.low:
            yield key, f"{value} must be >= {self.low}"
        elif self.high is not None and value > self.high:
            yield key, f"{value} must be <= {self.high:,}"

    def _str(self, value, key):
        if not isinstance(value, str):
            yield key, f"{show(value)} is not a string"
        elif self.high is not None and len(value) > self.high:
            yield key, f"{show(value)} is longer than {self.high:,} characters"

    def _bool(self, value, key):
        if not isinstance(value, bool):
            yield key, f"{show(value)} is not true or false"

    def _choice(self, value, key):
        # type() too: JSON true must not pass for 1.
        if not any(type(value) is type(choice) and value == choice for choice in self.choices):
            yield key, f"{show(value)} is not one of {', '.join(map(str, self.choices))}"

    def _list(self, value, key):
        if not isinstance(value, list):
            yield key, f"{show(value)} is not a list"
            return False
        low, high = self.size
        if not low <= len(value) <= high:
            yield key, f"{show(value)}: give at least {low} and at most {high:,} items"
            return False
        return True

    def _int_list(self, value, key):
        if not (yield from self._list(value, key)):
            return
        item = Field("int", self.low, self.high)
        for i, element in enumerate(value):
            found = list(item.problems(element, f"{key}[{i}]"))
            if found:
                yield found[0]
                return

    def _name_list(self, value, key):
        if not (yield from self._list(value, key)):
            return
        for i, element in enumerate(value):
            if not isinstance(element, str) or not element or len(element) > MAX_NAME_CHARS:
                yield f"{key}[{i}]", f"{show(element)} is not a string of 1 to {MAX_NAME_CHARS} characters"
                return
        if len(set(value)) != len(value):
            yield key, "names a value twice; names must be unique"

    def _records(self, value, key):
        if not isinstance(value, list):
            yield key, f"{show(value)} is not a list"
            return
        for i, element in enumerate(value):
            found = list(self.items.problems(element, f"{key}[{i}]"))
            if found:
                yield found[0]
                return

    def _mapping(self, value, key):
        if not isinstance(value, dict):
            yield key, f"{show(value)} is not a mapping"
            return
        for name, field in (self.fields or {}).items():
            if name not in value:
                if field.required:
                    yield f"{key}.{name}", "missing"
            else:
                yield from field.problems(value[name], f"{key}.{name}")
        if self.closed:
            for name in sorted(set(value) - set(self.fields or {}), key=str)[:5]:
                yield f"{key}.{str(name)[:40]}", f"unknown field; known fields are {', '.join(self.fields)}"

    def _any(self, value, key):
        return iter(())


def _optional(kind: str, **options) -> Field:
    return Field(kind, required=False, null=True, **options)


LAYOUT = Field("mapping", closed=True, fields={
    "n_clips": Field("int", 0, MAX_CLIPS),
    "num_tokens": Field("int", 1, MAX_TOKENS),
    "num_prefix": Field("int", 0, MAX_PREFIX),
    "embed_dim": Field("int", 1, MAX_EMBED_DIM),
    "grid": Field("int list", 1, MAX_TOKENS, size=(2, 2)),
    "layers": Field("int list", 0, MAX_LAYER, size=(1, MAX_LAYER + 1)),
    "dtype": Field("choice", choices=layout.DTYPES),
    "chunk_clips": Field("int", 1, MAX_CLIPS),
    "label_names": Field("name list", size=(0, MAX_CLASSES)),
    "split_names": Field("name list", size=(0, MAX_SPLITS)),
    "compression": Field("choice", choices=COMPRESSIONS, required=False),
    "extra": Field("mapping", required=False),
})
ENCODER = _optional("mapping", fields={
    "name": _optional("str"),
    "checkpoint": _optional("str"),
    "checkpoint_sha256": _optional("str"),
    "random_init": _optional("bool"),
    "sample_rate": _optional("int", low=1, high=MAX_SAMPLE_RATE),
    "num_layers": _optional("int", low=1, high=MAX_LAYER + 1),
    # Samples each token time step covers (embedcache.events.TimeSteps): what strong labels are mapped with.
    "time_steps": _optional("mapping", closed=True, fields={
        "start": Field("int", -MAX_SAMPLES, MAX_SAMPLES), "span": Field("int", 1, MAX_SAMPLES),
        "stride": Field("int", 1, MAX_SAMPLES)}),
})
CLIP_POLICY = _optional("mapping", fields={
    "num_samples": _optional("int", low=0, high=MAX_SAMPLES),
    "window_samples": _optional("int", low=0, high=MAX_SAMPLES),
    "hop_samples": _optional("int", low=0, high=MAX_SAMPLES),
    "max_samples": _optional("int", low=0, high=MAX_SAMPLES),
    "sample_rate": _optional("int", low=1, high=MAX_SAMPLE_RATE),
})
PROVENANCE = Field("mapping", fields={
    "encoder": ENCODER,
    "clip_policy": CLIP_POLICY,
    "manifest": _optional("mapping", fields={"path": _optional("str"), "sha256": _optional("str")}),
    "host": _optional("mapping"),
    "versions": _optional("mapping"),
    "fingerprint_fields": _optional("mapping"),
    "appended": _optional("records", items=Field("mapping")),
    "converted": _optional("records", items=Field("mapping")),
    "created": _optional("str"),
    "source": _optional("str"),
})
ATTRS = Field("mapping", fields={
    "format_version": Field("choice", choices=layout.READABLE_VERSIONS),
    "status": Field("choice", choices=STATUSES),
    "layout": LAYOUT,
    "provenance": PROVENANCE,
    "fingerprint": Field("str", high=MAX_FINGERPRINT_CHARS),
    "skipped": Field("records", required=False, items=Field("mapping", fields={
        "clip_id": Field("str"), "reason": Field("str")})),
    "growing": _optional("mapping", fields={"mode": Field("choice", choices=GROW_MODES), "base_layout": LAYOUT}),
    # Strong labels beside the tokens (store/events.py): how many events, in which time unit.
    "events": _optional("mapping", closed=True, fields={
        "count": Field("int", 0, MAX_EVENTS), "unit": Field("choice", choices=(store_events.UNIT,))}),
})


def too_deep(value, key: str, limit: int = MAX_DEPTH) -> tuple[str, str] | None:
    """(key, what) when the document nests deeper than `limit` (checked without recursion), else None."""
    pending = [(value, 0, key)]
    while pending:
        node, depth, where = pending.pop()
        if depth > limit:
            return where, f"nested deeper than {limit} levels"
        if isinstance(node, dict):
            # Keys past the first two levels are not named: the message stays one short line.
            pending += [(child, depth + 1, f"{where}.{str(name)[:40]}" if depth < 2 else where)
                        for name, child in node.items()]
        elif isinstance(node, list):
            pending += [(child, depth + 1, where) for child in node]
    return None


def _layout_problems(value: dict, key: str) -> Iterator[tuple[str, str]]:
    """What is wrong between the fields of a layout whose fields are each valid."""
    n_time, n_freq = value["grid"]
    if n_time * n_freq != value["num_tokens"]:
        yield f"{key}.grid", (f"{value['grid']} holds {n_time * n_freq} tokens but num_tokens is "
                              f"{value['num_tokens']}")
    if value["layers"] != sorted(set(value["layers"])):
        yield f"{key}.layers", f"{show(value['layers'])} must be sorted and unique"
    chunk = value["chunk_clips"] * value["num_tokens"] * value["embed_dim"] * layout.itemsize(value["dtype"])
    if chunk > MAX_CHUNK_BYTES:
        yield f"{key}.chunk_clips", (f"{value['chunk_clips']} clips x {value['num_tokens']} tokens x "
                                     f"{value['embed_dim']} dims make {chunk:,}-byte chunks, over {MAX_CHUNK_BYTES:,}")


def attrs_problems(attrs) -> list[tuple[str, str]]:
    """Every problem of an `embedcache` attribute document as (key, what); empty when it can be used."""
    if not isinstance(attrs, dict):
        return [(KEY, "missing: not an embedcache token store" if attrs is None else f"{show(attrs)} is not a mapping")]
    deep = too_deep(attrs, KEY)
    if deep:
        return [deep]
    version = list(ATTRS.fields["format_version"].problems(attrs.get("format_version"), f"{KEY}.format_version"))
    if version:  # another format's fields mean other things: nothing else is checked
        key, what = version[0]
        return [(key, f"{what} (the format versions this embedcache reads; a newer store needs a newer embedcache)")]
    problems = list(ATTRS.problems(attrs, KEY))
    growing = attrs.get("growing")
    base_layout = growing.get("base_layout") if isinstance(growing, dict) else None
    for field, layout_key in ((attrs.get("layout"), f"{KEY}.layout"), (base_layout, f"{KEY}.growing.base_layout")):
        if isinstance(field, dict) and not any(key.startswith(layout_key) for key, _ in problems):
            problems += _layout_problems(field, layout_key)
            if layout.is_quantized(field["dtype"]) and attrs["format_version"] < layout.INT8_FORMAT:
                problems.append((f"{layout_key}.dtype", f"{field['dtype']!r} needs format_version >= "
                                 f"{layout.INT8_FORMAT}, the store says {attrs['format_version']}"))
    return problems


def parse_attrs(attrs, where: str) -> tuple[dict, StoreSpec]:
    """(the attributes, their layout as a StoreSpec) once they match the schema; else a one-line StoreError."""
    problems = attrs_problems(attrs)
    if problems:
        key, what = problems[0]
        if attrs is None:
            raise StoreError(f"{where}: not an embedcache token store (zarr.json has no '{layout.ATTRS_KEY}' "
                             "attributes; if `embedcache extract` is creating it right now, wait a moment)")
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise StoreError(f"{where}: {key}: {what}{more}; {damaged(where)}")
    return attrs, StoreSpec.from_attrs(attrs["layout"])


def damaged(where: str) -> str:
    """What to do about a store whose metadata or arrays contradict each other."""
    return (f"the store's metadata is damaged or was edited: re-copy or re-extract it (`embedcache verify {where}` "
            "lists every problem)")


def expected_arrays(spec: StoreSpec, version: int = layout.FORMAT_VERSION) -> dict[str, tuple[tuple[int, ...], str]]:
    """Array path -> (shape, stored numpy dtype name) of everything the layout (of format `version`) promises."""
    n = spec.n_clips
    arrays = {}
    for layer in spec.layers:
        for path, part in layout.layer_arrays(layer, spec.dtype, spec.num_prefix, version):
            width = spec.num_prefix if part.startswith("prefix") else spec.num_tokens
            stored = np.dtype(layout.stored_numpy_dtype(layout.part_dtype(part, spec.dtype, version))).name
            arrays[path] = ((n, width), stored) if part.endswith("scales") else ((n, width, spec.embed_dim), stored)
    arrays.update(row_arrays(spec, version))
    arrays["chunk_done"] = ((spec.n_chunks,), "uint8")
    return arrays


def quantized_prefix_problem(spec: StoreSpec, version: int, where: str) -> str | None:
    """Why a format 3 int8 store with int8 prefix tokens cannot take writes from this embedcache (which keeps an int8
    store's prefix in float16), or None for any other store."""
    if not layout.has_quantized_prefix(spec.dtype, spec.num_prefix, version):
        return None
    return (f"{where}: a format {version} int8 store whose prefix tokens are int8 too (this embedcache keeps them in "
            f"float16, format {layout.FLOAT_PREFIX_FORMAT}); rewrite it with `embedcache convert {where} NEW.zarr "
            "--dtype int8` first")


def row_arrays(spec: StoreSpec, version: int = layout.FORMAT_VERSION) -> dict[str, tuple[tuple[int, ...], str]]:
    """The small per-row arrays of the layout: path -> (shape, dtype name)."""
    n = spec.n_clips
    arrays = {"valid_tokens": ((n,), "int32"), "num_samples": ((n,), "int64"),
              "labels": ((n, len(spec.label_names)), "uint8"), "splits": ((n,), "uint8"), "clip_ids": ((n,), "string")}
    if version >= 2:
        arrays.update({name: ((n,), dtype) for name, dtype in layout.ROW_ARRAYS.items()})
    return arrays


def dtype_name(dtype) -> str:
    """An array's dtype as the schema names it ("string" for any text dtype)."""
    return "string" if np.dtype(dtype).kind in "OTU" else np.dtype(dtype).name


def array_problem(shape: tuple[int, ...], dtype, expected: tuple[tuple[int, ...], str]) -> str | None:
    """What is wrong with an array of `shape` and `dtype` where the layout promises `expected`, else None."""
    want_shape, want_dtype = expected
    if tuple(shape) != want_shape:
        return f"has shape {list(shape)}, the layout promises {list(want_shape)}"
    got = dtype_name(dtype)
    if got != want_dtype:
        return f"has dtype {got}, the layout promises {want_dtype}"
    return None
