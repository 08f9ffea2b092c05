"""A human-readable and a JSON summary of a token store (what `embedcache info` prints)."""

from __future__ import annotations

import numpy as np

from embedcache.store.reader import TokenStore

# Cropped rows `info` lists by name (all of them are in `--json` and in the store's lost_samples array).
CROPPED_SHOWN = 20


def summarize(store: TokenStore) -> dict:
    """Counts, shapes, sizes and provenance of a store as plain data."""
    spec, provenance = store.spec, store.provenance
    split_counts = {name: len(store.split_indices(name)) for name in store.split_names}
    positives = store.labels[store.selected].sum(axis=0)
    raw = spec.token_nbytes()
    disk = store.disk_nbytes()
    encoder = provenance.get("encoder", {})
    return {
        "path": store.path,
        "subset": store.subset.to_dict() or None,
        "status": store.status,
        "clips": store.n_clips,
        "splits": split_counts,
        "skipped": store.skipped,
        "labels": {name: int(count) for name, count in zip(store.label_names, positives)},
        "multilabel": store.is_multilabel,
        "encoder": {
            "name": encoder.get("name"),
            "random_init": encoder.get("random_init"),
            "checkpoint": encoder.get("checkpoint"),
            "checkpoint_sha256": encoder.get("checkpoint_sha256"),
        },
        "layers": store.layers,
        "grid": list(store.grid),
        "tokens": store.num_tokens,
        "prefix_tokens": store.num_prefix,
        "embed_dim": store.embed_dim,
        "dtype": store.dtype,
        "chunks": {"count": spec.n_chunks, "clips_per_chunk": spec.chunk_clips, "compression": spec.compression},
        "valid_tokens": {"min": int(store.valid_tokens.min()), "max": int(store.valid_tokens.max())},
        "recordings": _recordings(store),
        "cropped": _cropped(store),
        "bytes": {"raw_tokens": raw, "on_disk": disk, "raw_float16_tokens": _fp16_bytes(spec)},
        "provenance": {
            "created": provenance.get("created"),
            "device": provenance.get("host", {}).get("device"),
            "versions": provenance.get("versions"),
            "manifest": provenance.get("manifest"),
            "clip_policy": provenance.get("clip_policy"),
            "frontend": provenance.get("frontend"),
        },
    }


def _recordings(store: TokenStore) -> dict:
    """How rows map onto recordings: one each, or windows (with the window and hop in seconds)."""
    policy = store.provenance.get("clip_policy") or {}
    rate = store.sample_rate or 1
    count = len(np.unique(store.recording_ids))
    if not store.is_windowed:
        return {"count": count, "windows": False}
    return {"count": count, "windows": True, "window_seconds": policy["window_samples"] / rate,
            "hop_seconds": policy.get("hop_samples", 0) / rate}


def _cropped(store: TokenStore) -> dict:
    """Rows whose audio was cropped, with the seconds each lost."""
    rate = store.sample_rate or 1
    lost = store.lost_samples
    rows = np.flatnonzero(lost > 0)
    return {
        "count": int(len(rows)),
        "lost_seconds": float(lost.sum() / rate),
        "clips": [{"clip_id": str(store.clip_ids[row]), "seconds": float(store.num_samples[row] / rate),
                   "lost_seconds": float(lost[row] / rate)} for row in rows],
    }


def _fp16_bytes(spec) -> int:
    return spec.n_clips * (spec.num_tokens + spec.num_prefix) * spec.embed_dim * 2 * len(spec.layers)


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.2f} MB"


def format_summary(summary: dict) -> str:
    """The text `embedcache info` prints."""
    s = summary
    splits = ", ".join(f"{name} {count}" for name, count in s["splits"].items())
    labels = ", ".join(f"{name} ({count})" for name, count in s["labels"].items())
    encoder = s["encoder"]
    origin = "random init (smoke runs only)" if encoder["random_init"] else (encoder["checkpoint"] or "no weights")
    sha = encoder["checkpoint_sha256"]
    grid = s["grid"]
    chunks = s["chunks"]
    size = s["bytes"]
    ratio = (size["on_disk"] / size["raw_float16_tokens"]) if size["on_disk"] else float("nan")
    provenance = s["provenance"]
    versions = provenance.get("versions") or {}
    lines = [
        f"store       {s['path']}  [{s['status']}]" + (f"  subset {s['subset']}" if s.get("subset") else ""),
        f"clips       {s['clips']}  ({splits}); skipped {len(s['skipped'])}",
        f"labels      {len(s['labels'])} {'multi-label' if s['multilabel'] else 'multi-class'} "
        f"(positives): {labels}",
        f"encoder     {encoder['name']}  weights: {origin}" + (f"  sha256 {sha[:16]}..." if sha else ""),
        f"layers      {s['layers']}",
        f"tokens      [N={s['clips']}, T={s['tokens']}, D={s['embed_dim']}] {s['dtype']}; grid {grid[0]} time x "
        f"{grid[1]} freq (time-major); prefix tokens {s['prefix_tokens']}; "
        f"valid tokens per clip {s['valid_tokens']['min']}..{s['valid_tokens']['max']}",
        f"chunks      {chunks['count']} x {chunks['clips_per_chunk']} clips per layer; "
        f"codecs {chunks['compression']} + crc32c",
        f"size        {_mb(size['on_disk'])} on disk; raw tokens {_mb(size['raw_tokens'])}; "
        f"raw float16 {_mb(size['raw_float16_tokens'])} (disk/raw fp16 = {ratio:.3f})",
        _rows_line(s),
        f"clip policy {_policy_text(provenance.get('clip_policy') or {})}",
        f"frontend    {provenance.get('frontend')}",
        f"manifest    {provenance.get('manifest')}",
        f"created     {provenance.get('created')} on {provenance.get('device')}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items()),
    ]
    for item in s["skipped"][:20]:
        lines.append(f"  skipped   {item['clip_id']}: {item['reason']}")
    for item in s["cropped"]["clips"][:CROPPED_SHOWN]:
        lines.append(f"  cropped   {item['clip_id']}: {item['seconds']:.2f} s, lost {item['lost_seconds']:.2f} s")
    if s["cropped"]["count"] > CROPPED_SHOWN:
        lines.append(f"  cropped   ... and {s['cropped']['count'] - CROPPED_SHOWN} more (embedcache info --json)")
    return "\n".join(lines)


def _policy_text(policy: dict) -> str:
    """The recorded clip policy in words: how long a row is and the encoder's padding/chunking/mask semantics."""
    semantics, rate = policy.get("semantics"), policy.get("sample_rate")
    if not isinstance(semantics, dict) or not rate or not policy.get("num_samples"):
        return str(policy)  # a format-1 store: its own crop/pad words
    parts = [f"rows hold {policy['num_samples'] / rate:.2f} s", f"{semantics.get('length')} length"]
    parts += [f"{key}: {semantics[key]}" for key in ("padding", "chunking", "mask") if semantics.get(key, "none")
              != "none"]
    return "; ".join(parts)


def _rows_line(s: dict) -> str:
    recordings, cropped = s["recordings"], s["cropped"]
    if recordings["windows"]:
        text = (f"rows        {s['clips']} windows of {recordings['window_seconds']:g} s (hop "
                f"{recordings['hop_seconds']:g} s) from {recordings['count']} recordings")
    else:
        text = f"rows        one per clip ({recordings['count']} recordings)"
    if cropped["count"]:
        return text + (f"; {cropped['count']} cropped, {cropped['lost_seconds']:.1f} s of audio lost "
                       "(re-extract with a longer --max-seconds, or --window)")
    return text + "; none cropped"
