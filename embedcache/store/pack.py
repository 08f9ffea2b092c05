"""Copying a store between places (local, remote, zip) byte for byte, without decoding a chunk.

Every object keeps its bytes, so the crc32c checksums written at extract time still vouch for the copy. The source
passes the trust boundary (store.safety) first and every key is checked before anything is written; the destination
must be new, empty, or an embedcache store to replace, and never the source itself.
"""

from __future__ import annotations

import os
import posixpath
import time
import zipfile
import zlib
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
    # Zip folder entries ("a/") hold nothing; every other key must stay inside the destination.
    keys = [key for key in urls.list_keys(source) if not key.endswith((PARTIAL_SUFFIX, "/"))]
    safety.ensure_keys_safe(keys, url)
    return source, keys


def _place(url: str) -> str:
    """Where `url` really is: the resolved local path (links, `.`, `..` and trailing slashes undone) or the URL."""
    if urls.is_remote(url):
        scheme, _, rest = url.partition("://")
        return f"{scheme.lower()}://{posixpath.normpath(rest)}"
    return os.path.realpath(urls.local_path(url))


def refuse_same_place(source: str, destination: str) -> None:
    """Refuse a destination that is the source by another spelling, inside it, or holding it."""
    src, dst = _place(source), _place(destination)
    same = src == dst or (os.path.exists(src) and os.path.exists(dst) and os.path.samefile(src, dst))
    if same:
        raise StoreError(f"{destination}: is the same store as {source}; copy to another place (nothing was changed)")
    separator = "/" if urls.is_remote(source) else os.sep
    if dst.startswith(src.rstrip(separator) + separator):
        raise StoreError(f"{destination}: is inside the source store {source}; copy to a place outside it")
    if src.startswith(dst.rstrip(separator) + separator):
        raise StoreError(f"{destination}: holds the source store {source}; copy to a place outside it")


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
    refuse_same_place(source_url, destination_url)
    src, keys = _source_keys(source_url, allow_incomplete)
    urls.clear_destination(destination_url, overwrite)
    existed = not urls.is_remote(destination_url) and urls.local_path(destination_url).is_dir()
    to_zip = urls.is_zip(destination_url)
    ordered = _ordered_keys(keys, root_first=to_zip)
    try:
        moved = _copy_objects(src, source_url, destination_url, ordered, to_zip, progress)
    except BaseException:
        urls.discard(destination_url, existed)
        raise
    return CopyReport(source_url, destination_url, len(ordered), moved, time.perf_counter() - started)


def _copy_objects(src, source_url: str, destination_url: str, ordered: list[str], to_zip: bool,
                  progress: Callable[[int, int], None] | None) -> int:
    try:
        if to_zip:
            urls.local_path(destination_url).parent.mkdir(parents=True, exist_ok=True)
            dst = sync(ZipStore.open(urls.local_path(destination_url), mode="w"))
        else:
            dst = urls.open_store(destination_url, "w")
    except OSError as error:
        raise urls.write_error(destination_url, error) from error
    moved = 0
    try:
        for first in range(0, len(ordered), COPY_BATCH):
            batch = ordered[first:first + COPY_BATCH]
            try:
                values = urls.get_many(src, batch)
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
                raise StoreError(f"{source_url}: one of {batch[0]}...{batch[-1]} cannot be read ({error}); run "
                                 f"`embedcache verify {source_url}`, then re-copy or re-download it") from None
            lost = [key for key, value in zip(batch, values) if value is None]
            if lost:
                raise StoreError(f"{source_url}: object {lost[0]} vanished during the copy; is something writing it?")
            try:
                urls.set_many(dst, zip(batch, values))
            except OSError as error:
                raise urls.write_error(destination_url, error) from error
            moved += sum(len(value) for value in values)
            if progress:
                progress(min(first + COPY_BATCH, len(ordered)), len(ordered))
    finally:
        if to_zip:
            dst.close()  # writes the zip's central directory
    return moved


def pack_store(source: str | Path, zip_path: str | Path, overwrite: bool = False) -> CopyReport:
    """Pack a complete store into one uncompressed .zip (chunks are compressed already) that opens directly."""
    if not str(zip_path).lower().endswith(".zip") or urls.is_remote(zip_path):
        raise StoreError(f"{zip_path}: the packed store must be a local path ending in .zip")
    if (Path(zip_path).exists() or Path(zip_path).is_symlink()) and not overwrite:
        raise StoreError(f"{zip_path}: already exists; choose another name or pass --overwrite")
    return copy_store(source, zip_path, overwrite=overwrite)
