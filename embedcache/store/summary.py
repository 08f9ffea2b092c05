"""A human-readable and a JSON summary of a token store (what `embedcache info` prints).

A stranger's attributes can be any size the schema allows: every free-form value is shortened for display (long
strings, long lists, many skipped rows) and the summary says what was cut. A store still being written is shown as
such, with its pending chunks, never as damaged.
"""

from __future__ import annotations

import json

import numpy as np

from embedcache.errors import StoreError
from embedcache.store.reader import TokenStore

# Cropped rows `info` lists by name (all of them are in `--json` and in the store's lost_samples array).
CROPPED_SHOWN = 20
SKIPPED_SHOWN = 20  # skipped rows the text lists
SKIPPED_JSON = 100  # skipped rows --json lists (the count is always whole)
LABELS_SHOWN = 50  # label names the text lists
MAX_TEXT = 200  # characters of any one free-form value (provenance strings, clip ids, reasons)
MAX_ITEMS = 20  # items of any one free-form list or mapping
MAX_LINE = 400  # characters of any printed line
MAX_VALUE_JSON = 20_000  # characters of one provenance value as JSON, after the cuts above (wide and deep ones)


def bounded(value, key: str, cuts: list[str]):
    """`value` with long strings, lists and mappings shortened; each cut is noted in `cuts` by its key."""
    if isinstance(value, str):
        if len(value) <= MAX_TEXT:
            return value
        cuts.append(f"{key}: {len(value):,} characters, the first {MAX_TEXT} shown")
        return value[:MAX_TEXT] + "..."
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            cuts.append(f"{key}: {len(value):,} items, the first {MAX_ITEMS} shown")
        return [bounded(item, f"{key}[{i}]", cuts) for i, item in enumerate(value[:MAX_ITEMS])]
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            cuts.append(f"{key}: {len(value):,} keys, the first {MAX_ITEMS} shown")
        items = list(value.items())[:MAX_ITEMS]
        return {bounded(str(name), f"{key} key", cuts): bounded(item, f"{key}.{str(name)[:40]}", cuts)
                for name, item in items}
    return value


def _provenance_value(value, key: str, cuts: list[str]):
    """A provenance value for display: `bounded`, and as a whole no longer than MAX_VALUE_JSON as JSON."""
    short = bounded(value, key, cuts)
    text = json.dumps(short, default=str)
    if len(text) <= MAX_VALUE_JSON:
        return short
    cuts.append(f"{key}: {len(text):,} characters as JSON after shortening, the first {MAX_TEXT} shown")
    return text[:MAX_TEXT] + "..."


def summarize(store: TokenStore) -> dict:
    """Counts, shapes, sizes and provenance of a store as plain data, free-form values bounded (see `cut`)."""
    spec, provenance = store.spec, store.provenance
    cuts: list[str] = []
    raw = spec.token_nbytes()
    disk = store.disk_nbytes()
    encoder = provenance.get("encoder") or {}
    skipped = store.skipped
    if len(skipped) > SKIPPED_JSON:
        cuts.append(f"skipped: {len(skipped):,} rows, the first {SKIPPED_JSON} shown")
    return {
        "path": store.path,
        "subset": store.subset.to_dict() or None,
        "status": store.status,
        "pending_chunks": 0 if store.is_complete else store.pending_chunks(),
        "clips": store.n_clips,
        **_per_row(store, cuts),
        "skipped_count": len(skipped),
        "skipped": [bounded(item, f"skipped[{i}]", cuts) for i, item in enumerate(skipped[:SKIPPED_JSON])],
        "encoder": bounded({
            "name": encoder.get("name"),
            "random_init": encoder.get("random_init"),
            "checkpoint": encoder.get("checkpoint"),
            "checkpoint_sha256": encoder.get("checkpoint_sha256"),
        }, "provenance.encoder", cuts),
        "layers": store.layers,
        "grid": list(store.grid),
        "tokens": store.num_tokens,
        "prefix_tokens": store.num_prefix,
        "embed_dim": store.embed_dim,
        "dtype": store.dtype,
        "prefix_dtype": store.prefix_dtype,
        "chunks": {"count": spec.n_chunks, "clips_per_chunk": spec.chunk_clips, "compression": spec.compression},
        "bytes": {"raw_tokens": raw, "on_disk": disk, "raw_float16_tokens": _fp16_bytes(spec)},
        "provenance": {
            "created": _provenance_value(provenance.get("created"), "provenance.created", cuts),
            "device": _provenance_value((provenance.get("host") or {}).get("device"), "provenance.host.device", cuts),
            **{name: _provenance_value(provenance.get(name), f"provenance.{name}", cuts)
               for name in ("versions", "manifest", "clip_policy", "frontend", "converted")},
        },
        "legacy_clip_policy": legacy_clip_policy_note(store),
        "cut": cuts,
    }


def legacy_clip_policy_note(store: TokenStore) -> str | None:
    """What is wrong with a format-1 store's tokens, when it holds clips of another length than its clip policy's:
    embedcache before format 2 zero-padded or cropped those clips' waveforms to one length, which no official
    pipeline does, so their tokens differ from the official ones. None for later formats and equal-length clips."""
    if store.format_version >= 2:
        return None
    target = (store.provenance.get("clip_policy") or {}).get("num_samples")
    if isinstance(target, bool) or not isinstance(target, int) or target <= 0:
        return None
    differ = int((store.num_samples != target).sum())
    if not differ:
        return None
    return (f"{differ} of {store.n_clips} clip(s) are not {target / (store.sample_rate or 1):.2f} s long, and this "
            "format-1 store padded or cropped their waveforms to that length, which the official pipelines do not, "
            "so their tokens differ from the official ones; extract the store again with this version")


def _per_row(store: TokenStore, cuts: list[str]) -> dict:
    """What the per-row arrays say; None for what a store still being written cannot say yet."""
    try:
        positives = store.labels[store.selected].sum(axis=0)
        rows = {
            "splits": {name: len(store.split_indices(name)) for name in store.split_names},
            "labels": {name: int(count) for name, count in zip(store.label_names, positives)},
            "multilabel": store.is_multilabel,
            "recordings": _recordings(store),
            "cropped": _cropped(store, cuts),
        }
    except StoreError:
        if store.is_complete:
            raise
        # An append grows the layout before the arrays: nothing per row can be read until it is done.
        rows = {"splits": None, "labels": dict.fromkeys(store.label_names), "multilabel": None, "recordings": None,
                "cropped": None}
    valid = None
    if store.is_complete:  # a store being written lacks the valid_tokens of its pending chunks
        valid = {"min": int(store.valid_tokens.min()), "max": int(store.valid_tokens.max())} if store.n_clips else {
            "min": 0, "max": 0}
    return {**rows, "valid_tokens": valid}


def _recordings(store: TokenStore) -> dict:
    """How rows map onto recordings: one each, or windows (with the window and hop in seconds)."""
    policy = store.provenance.get("clip_policy") or {}
    rate = store.sample_rate or 1
    count = len(np.unique(store.recording_ids))
    if not store.is_windowed:
        return {"count": count, "windows": False}
    return {"count": count, "windows": True, "window_seconds": policy["window_samples"] / rate,
            "hop_seconds": (policy.get("hop_samples") or 0) / rate}


def _cropped(store: TokenStore, cuts: list[str]) -> dict:
    """Rows whose audio was cropped, with the seconds each lost."""
    rate = store.sample_rate or 1
    lost = store.lost_samples
    rows = np.flatnonzero(lost > 0)
    return {
        "count": int(len(rows)),
        "lost_seconds": float(lost.sum() / rate),
        "clips": [{"clip_id": bounded(str(store.clip_ids[row]), f"clip_ids[{row}]", cuts),
                   "seconds": float(store.num_samples[row] / rate), "lost_seconds": float(lost[row] / rate)}
                  for row in rows],
    }


def _fp16_bytes(spec) -> int:
    return spec.n_clips * (spec.num_tokens + spec.num_prefix) * spec.embed_dim * 2 * len(spec.layers)


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.2f} MB"


def _line(text: str) -> str:
    # The last guard: whatever a value held, one printed line stays readable.
    return text if len(text) <= MAX_LINE else f"{text[:MAX_LINE]}... ({len(text) - MAX_LINE:,} more characters cut)"


def format_summary(summary: dict) -> str:
    """The text `embedcache info` prints."""
    s = summary
    encoder = s["encoder"]
    origin = "random init (smoke runs only)" if encoder["random_init"] else (encoder["checkpoint"] or "no weights")
    sha = encoder["checkpoint_sha256"]
    grid = s["grid"]
    chunks = s["chunks"]
    size = s["bytes"]
    ratio = (size["on_disk"] / size["raw_float16_tokens"]) if size["on_disk"] else float("nan")
    provenance = s["provenance"]
    versions = provenance.get("versions") or {}
    valid = s["valid_tokens"]
    lines = [
        f"store       {s['path']}  [{_status_text(s)}]" + (f"  subset {s['subset']}" if s.get("subset") else ""),
        f"clips       {s['clips']}  ({_splits_text(s['splits'])}); skipped {s['skipped_count']}",
        _labels_line(s),
        f"encoder     {encoder['name']}  weights: {origin}" + (f"  sha256 {str(sha)[:16]}..." if sha else ""),
        f"layers      {s['layers']}",
        f"tokens      [N={s['clips']}, T={s['tokens']}, D={s['embed_dim']}] {s['dtype']}"
        + (" (codes, one float16 scale per token)" if s["dtype"] == "int8" else "") + f"; grid {grid[0]} time x "
        f"{grid[1]} freq (time-major); prefix tokens {s['prefix_tokens']}"
        + (f" ({s['prefix_dtype']})" if s["prefix_tokens"] and s["dtype"] == "int8" else "")
        + "; valid tokens per clip "
        + (f"{valid['min']}..{valid['max']}" if valid else "pending"),
        f"chunks      {chunks['count']} x {chunks['clips_per_chunk']} clips per layer; "
        f"codecs {chunks['compression']} + crc32c",
        f"size        {_mb(size['on_disk'])} on disk; raw tokens {_mb(size['raw_tokens'])}; "
        f"raw float16 {_mb(size['raw_float16_tokens'])} (disk/raw fp16 = {ratio:.3f})",
        _rows_line(s),
        f"clip policy {_policy_text(provenance.get('clip_policy') or {})}",
        f"frontend    {provenance.get('frontend')}",
        f"manifest    {provenance.get('manifest')}",
        f"created     {provenance.get('created')} on {provenance.get('device')}; "
        + (", ".join(f"{k} {v}" for k, v in versions.items()) if isinstance(versions, dict) else str(versions)),
    ]
    if s.get("legacy_clip_policy"):
        lines.append(f"warning     {s['legacy_clip_policy']}")
    lines += [f"converted   {_conversion_text(item)}" for item in (provenance.get("converted") or [])[:5]
              if isinstance(provenance.get("converted"), list)]
    for item in s["skipped"][:SKIPPED_SHOWN]:
        lines.append(f"  skipped   {item['clip_id']}: {item['reason']}")
    if s["skipped_count"] > SKIPPED_SHOWN:
        lines.append(f"  skipped   ... and {s['skipped_count'] - SKIPPED_SHOWN} more skipped (embedcache info --json)")
    cropped = s["cropped"] or {"count": 0, "clips": []}
    for item in cropped["clips"][:CROPPED_SHOWN]:
        lines.append(f"  cropped   {item['clip_id']}: {item['seconds']:.2f} s, lost {item['lost_seconds']:.2f} s")
    if cropped["count"] > CROPPED_SHOWN:
        lines.append(f"  cropped   ... and {cropped['count'] - CROPPED_SHOWN} more (embedcache info --json)")
    for cut in s["cut"][:5]:
        lines.append(f"  cut: {cut}")
    if len(s["cut"]) > 5:
        lines.append(f"  cut: ... and {len(s['cut']) - 5} more values shortened for display")
    return "\n".join(_line(line) for line in lines)


def _conversion_text(item) -> str:
    """One `provenance.converted` record in words."""
    if not isinstance(item, dict):
        return str(item)
    return (f"{item.get('from_dtype')} -> {item.get('to_dtype')} on {item.get('created')} from {item.get('source')} "
            f"({item.get('method')})")


def _status_text(s: dict) -> str:
    if s["status"] != "writing":
        return s["status"]
    pending = s["pending_chunks"]
    state = (f"{pending} of {s['chunks']['count']} chunks pending" if pending is not None
             else "an append is resizing its arrays")
    return f"writing: {state}; `embedcache extract` or `append` is still running or was interrupted"


def _splits_text(splits: dict | None) -> str:
    if splits is None:
        return "split counts once the store is complete"
    return ", ".join(f"{name} {count}" for name, count in splits.items())


def _labels_line(s: dict) -> str:
    labels = list(s["labels"].items())
    kind = {True: "multi-label", False: "multi-class", None: "(counts once the store is complete)"}[s["multilabel"]]
    shown = ", ".join(name if count is None else f"{name} ({count})" for name, count in labels[:LABELS_SHOWN])
    more = f" and {len(labels) - LABELS_SHOWN} more" if len(labels) > LABELS_SHOWN else ""
    return f"labels      {len(labels)} {kind} (positives): {shown}{more}"


def _policy_text(policy: dict) -> str:
    """The recorded clip policy in words: how long a row is and the encoder's padding/chunking/mask semantics."""
    if not isinstance(policy, dict):
        return str(policy)  # shortened for display
    semantics, rate = policy.get("semantics"), policy.get("sample_rate")
    if not isinstance(semantics, dict) or not isinstance(rate, int) or not isinstance(policy.get("num_samples"), int) \
            or not rate or not policy["num_samples"]:
        return str(policy)  # a format-1 store: its own crop/pad words
    parts = [f"rows hold {policy['num_samples'] / rate:.2f} s", f"{semantics.get('length')} length"]
    parts += [f"{key}: {semantics[key]}" for key in ("padding", "chunking", "mask") if semantics.get(key, "none")
              != "none"]
    return "; ".join(parts)


def _rows_line(s: dict) -> str:
    recordings, cropped = s["recordings"], s["cropped"]
    if recordings is None:
        return "rows        pending (an append is resizing the store's arrays)"
    if recordings["windows"]:
        text = (f"rows        {s['clips']} windows of {recordings['window_seconds']:g} s (hop "
                f"{recordings['hop_seconds']:g} s) from {recordings['count']} recordings")
    else:
        text = f"rows        one per clip ({recordings['count']} recordings)"
    if cropped["count"]:
        return text + (f"; {cropped['count']} cropped, {cropped['lost_seconds']:.1f} s of audio lost "
                       "(re-extract with a longer --max-seconds, or --window)")
    return text + "; none cropped"
