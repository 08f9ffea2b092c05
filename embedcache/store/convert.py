"""Converting a store's tokens to another dtype (float16 -> int8 and back), chunk by chunk, resumable, verified.

The new store keeps every row array, label, split and the source's provenance, with the conversion recorded in
`provenance.converted` and the dtype in its settings (so its fingerprint differs from the source's). Chunks are
converted in order and each is marked done after its data, as `extract` does: the same command after a crash,
even kill -9, converts only what is pending, and a finished conversion is checked by `verify_store`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import embedcache
from embedcache.errors import ConfigError, StoreError
from embedcache.store import layout, urls
from embedcache.store.pack import refuse_same_place
from embedcache.store.reader import TokenStore
from embedcache.store.verify import verify_store
from embedcache.store.writer import (
    RowInfo,
    StoreSpec,
    create_store,
    fingerprint_of,
    mark_complete_if_done,
    open_for_resume,
    pending_chunks,
    remove_store,
    write_chunk,
)

METHODS = {
    "int8": f"symmetric per token: codes -{layout.INT8_MAX}..{layout.INT8_MAX}, float16 scale = absmax / "
            f"{layout.INT8_MAX} rounded up; prefix tokens kept in {layout.QUANTIZED_PREFIX_DTYPE}",
}


@dataclass
class ConvertReport:
    """What one `convert_store` call did."""

    source: str
    destination: str
    dtype: str
    chunks_written: int
    chunks_total: int
    seconds: float
    source_bytes: int | None
    destination_bytes: int | None


def converted_settings(source: TokenStore, dtype: str) -> tuple[dict, str]:
    """(fingerprint fields, fingerprint) of `source` converted to `dtype`: the source's settings with the dtype
    replaced and the source named, so resuming the same conversion matches and another one is refused."""
    fields = source.provenance.get("fingerprint_fields")
    fields = dict(fields) if isinstance(fields, dict) else {"source_fingerprint": source.fingerprint}
    fields["dtype"] = dtype
    fields["converted_from"] = {"fingerprint": source.fingerprint, "dtype": source.dtype}
    return fields, fingerprint_of(fields)


def _provenance(source: TokenStore, dtype: str, source_url: str, fields: dict) -> dict:
    provenance = dict(source.provenance)
    record = {
        "source": source_url,
        "source_fingerprint": source.fingerprint,
        "from_dtype": source.dtype,
        "to_dtype": dtype,
        "method": METHODS.get(dtype, f"cast to {dtype}"),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "embedcache": embedcache.__version__,
    }
    provenance["converted"] = [*(provenance.get("converted") or []), record]
    provenance["dtype"] = dtype
    provenance["fingerprint_fields"] = fields
    return provenance


def convert_store(
    source: str | Path,
    destination: str | Path,
    dtype: str,
    overwrite: bool = False,
    verify: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> ConvertReport:
    """Write `source`'s tokens as `dtype` into a new store at `destination`, one chunk at a time.

    Re-running the same call after an interruption resumes it; a destination holding another store is refused
    (overwrite=True replaces a token store, never other files). progress(done, total) after each chunk.
    """
    started = time.perf_counter()
    source_url, out = str(source), str(destination)
    if dtype not in layout.DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(layout.DTYPES)}")
    refuse_same_place(source_url, out)
    store = TokenStore.open(source_url)
    if store.dtype == dtype and not store.quantized_prefix:  # a format 3 int8 store may be rewritten as int8
        raise ConfigError(f"{source_url}: already holds {dtype} tokens; `embedcache copy` copies a store as it is")
    fields, fingerprint = converted_settings(store, dtype)
    spec = StoreSpec.from_attrs({**store.spec.to_attrs(), "dtype": dtype})
    if overwrite:
        remove_store(out)
    group = open_for_resume(out, fingerprint, fields)
    if group is None:
        rows = RowInfo(store.recording_ids.tolist(), store.offsets, store.lost_samples)
        group = create_store(
            out, spec, store.clip_ids.tolist(), store.read_rows("labels"), store.split_codes, store.num_samples,
            _provenance(store, dtype, source_url, fields), fingerprint, store.skipped, rows, events=store.events,
        )
    pending = pending_chunks(group)
    for done, chunk in enumerate(pending.tolist(), start=1):
        _convert_chunk(store, group, spec, chunk)
        if progress:
            progress(done, len(pending))
    mark_complete_if_done(group)
    if verify:
        report = verify_store(out)
        if not report.ok:
            raise StoreError(f"{out}: the converted store does not verify ({report.problems[0]}"
                             f"{f' and {len(report.problems) - 1} more' if len(report.problems) > 1 else ''}); "
                             "run `embedcache verify` on it and on the source")
    return ConvertReport(source_url, out, dtype, len(pending), spec.n_chunks, time.perf_counter() - started,
                         store.disk_nbytes(), None if urls.is_remote(out) else TokenStore.open(out).disk_nbytes())


def _convert_chunk(store: TokenStore, group, spec: StoreSpec, chunk: int) -> None:
    """Read one chunk of every layer as float32, encode it in the new dtype, write it and mark it done."""
    start, stop = spec.chunk_range(chunk)
    tokens, prefix, scales = {}, {}, {}
    for layer in spec.layers:
        tokens[layer], scales[layer] = layout.encode(store.read_tokens(layer, start, stop).float(), spec.dtype)
        if spec.num_prefix:
            prefix[layer], _ = layout.encode(store.read_prefix(layer, start, stop).float(),
                                             layout.prefix_dtype(spec.dtype))
    write_chunk(group, spec, chunk, tokens, prefix, store.valid_tokens[start:stop],
                scales=scales if layout.is_quantized(spec.dtype) else None)
