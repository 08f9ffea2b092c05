"""Copying a store between places (local, remote, zip) byte for byte, without decoding a chunk.

Every object keeps its bytes, so the crc32c checksums written at extract time still vouch for the copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zarr
from zarr.core.sync import sync
from zarr.storage import ZipStore

from embedcache.errors import StoreError
from embedcache.store import layout, safety, urls
from embedcache.store.verify import PARTIAL_SUFFIX
from embedcache.store.writer import store_attrs

# Objects moved per round of concurrent requests.
COPY_BATCH = 32


@dataclass
class CopyReport:
    """What one copy or pack moved."""

    source: str
    destination: str
    objects: int
    bytes: int
    seconds: float

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else float("nan")


def _ordered_keys(keys: list[str], root_first: bool) -> list[str]:
    # Metadata before chunks: a truncated zip still describes what it should have held. For directory and object
    # store copies the root zarr.json goes last, so a half-finished copy is never mistaken for a store.
    metadata = sorted((k for k in keys if k.endswith("zarr.json") and k != "zarr.json"), key=lambda k: k.count("/"))
    chunks = [k for k in keys if not k.endswith("zarr.json")]
    root = ["zarr.json"] if "zarr.json" in keys else []
    return root + metadata + chunks if root_first else metadata + chunks + root


def _source_keys(url: str, allow_incomplete: bool) -> tuple[zarr.abc.store.Store, list[str]]:
    source = urls.open_store(url, "r")
    if not urls.has_key(source, "zarr.json"):
        raise StoreError(f"{url}: no token store there")
    safety.ensure_safe(source, url)
    attrs = store_attrs(zarr.open_group(store=source, mode="r", zarr_format=3))
    if attrs["status"] != layout.STATUS_COMPLETE and not allow_incomplete:
        raise StoreError(
            f"{url}: the store is incomplete (status {attrs['status']!r}); finish the extract before sharing it"
        )
    keys = [key for key in urls.list_keys(source) if not key.endswith(PARTIAL_SUFFIX)]
    return source, keys


def copy_store(
    source: str | Path,
    destination: str | Path,
    overwrite: bool = False,
    allow_incomplete: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> CopyReport:
    """Copy every object of a store to `destination` (a directory, a URL, or a .zip to pack into).

    progress(done, total) is called after each batch of objects.
    """
    started = time.perf_counter()
    source_url, destination_url = str(source), str(destination)
    if source_url.rstrip("/") == destination_url.rstrip("/"):
        raise StoreError(f"{source_url}: source and destination are the same")
    src, keys = _source_keys(source_url, allow_incomplete)
    if urls.store_exists(destination_url):
        if not overwrite:
            raise StoreError(f"{destination_url}: a store is already there; choose another destination or pass "
                             "--overwrite to replace it")
        urls.remove_store(destination_url)
    elif urls.is_zip(destination_url):
        urls.local_path(destination_url).unlink(missing_ok=True)
    to_zip = urls.is_zip(destination_url)
    if to_zip:
        urls.local_path(destination_url).parent.mkdir(parents=True, exist_ok=True)
        dst = sync(ZipStore.open(urls.local_path(destination_url), mode="w"))
    else:
        dst = urls.open_store(destination_url, "w")
    ordered = _ordered_keys(keys, root_first=to_zip)
    moved = 0
    try:
        for first in range(0, len(ordered), COPY_BATCH):
            batch = ordered[first:first + COPY_BATCH]
            values = urls.get_many(src, batch)
            lost = [key for key, value in zip(batch, values) if value is None]
            if lost:
                raise StoreError(f"{source_url}: object {lost[0]} vanished during the copy; is something writing it?")
            urls.set_many(dst, zip(batch, values))
            moved += sum(len(value) for value in values)
            if progress:
                progress(min(first + COPY_BATCH, len(ordered)), len(ordered))
    finally:
        if to_zip:
            dst.close()  # writes the zip's central directory
    return CopyReport(source_url, destination_url, len(ordered), moved, time.perf_counter() - started)


def pack_store(source: str | Path, zip_path: str | Path, overwrite: bool = False) -> CopyReport:
    """Pack a complete store into one uncompressed .zip (chunks are compressed already) that opens directly."""
    if not str(zip_path).lower().endswith(".zip") or urls.is_remote(zip_path):
        raise StoreError(f"{zip_path}: the packed store must be a local path ending in .zip")
    if Path(zip_path).exists() and not overwrite:
        raise StoreError(f"{zip_path}: already exists; choose another name or pass --overwrite")
    return copy_store(source, zip_path, overwrite=overwrite)
