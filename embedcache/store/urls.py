"""Where a store lives: a local directory, a `.zip` file, or any fsspec URL (`s3://bucket/key`, `gs://...`).

Credentials and endpoints come only from the storage library's own environment and config files (for S3:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ~/.aws/...); embedcache has no option for them.
"""

from __future__ import annotations

import asyncio
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path

import zarr
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, ZipStore

from embedcache.errors import StoreError

READ_MODES = ("r",)
# s3fs defaults that break sharing a store between processes: its listings cache makes objects written by another
# process invisible (and with max_concurrency > 1 every GET first asks that cache for the object's size). Chunk
# objects are a few MB and zarr already fetches many at once, so one plain GET per object is the right request.
STORAGE_OPTIONS = {"s3": {"use_listings_cache": False, "max_concurrency": 1}}
STORAGE_OPTIONS["s3a"] = STORAGE_OPTIONS["s3"]


class MissingStoreError(StoreError):
    """Nothing is stored at the URL (as opposed to something damaged or incompatible)."""


def is_remote(url: str | Path) -> bool:
    """True for URLs with a scheme other than file:// (s3://, gs://, memory://, ...)."""
    text = str(url)
    return "://" in text and not text.startswith("file://")


def is_zip(url: str | Path) -> bool:
    """True for a local `.zip` store (written by `embedcache pack`)."""
    return not is_remote(url) and str(url).lower().endswith(".zip")


def local_path(url: str | Path) -> Path:
    """The filesystem path of a local store URL (plain path or file://)."""
    return Path(str(url).removeprefix("file://"))


def open_store(url: str | Path, mode: str = "r") -> Store:
    """A zarr Store for `url`; mode "r" opens it read-only, so nothing can be written through it."""
    text = str(url)
    read_only = mode in READ_MODES
    if is_zip(text):
        if not read_only:
            raise StoreError(
                f"{text}: a .zip store is read-only; extract or write to a directory (or s3://...) and "
                "run `embedcache pack` to make the zip"
            )
        try:
            # Opened now, not lazily, so a damaged zip is reported here rather than on the first read.
            return sync(ZipStore.open(local_path(text), mode="r"))
        except FileNotFoundError:
            raise MissingStoreError(f"{text}: no such zip file") from None
        except zipfile.BadZipFile as error:
            raise StoreError(
                f"{text}: not a readable zip ({error}); it is truncated or damaged: run `embedcache verify {text}` "
                "to see which entries survive, and re-pack or re-download it"
            ) from None
    if is_remote(text):
        try:
            options = STORAGE_OPTIONS.get(text.split("://", 1)[0].lower())
            return FsspecStore.from_url(text, storage_options=options, read_only=read_only)
        except ImportError as error:
            raise StoreError(
                f"{text}: reading this URL needs a storage library that is not installed ({error}); "
                "for s3:// run `pip install s3fs`"
            ) from None
        except ValueError as error:  # fsspec: unknown protocol
            raise StoreError(f"{text}: {error}") from None
    if read_only and not local_path(text).is_dir():
        raise MissingStoreError(f"{text}: no token store there")
    return LocalStore(local_path(text), read_only=read_only)


def open_group(url: str | Path, mode: str = "r") -> zarr.Group:
    """Open the Zarr v3 group at `url`; a StoreError naming the URL when there is none."""
    if mode in ("r", "r+") and not is_remote(url) and not is_zip(url) and not (local_path(url) / "zarr.json").is_file():
        # Checked before opening: a writable LocalStore would create the directory as a side effect.
        raise MissingStoreError(f"{url}: no token store there")
    store = open_store(url, mode)
    try:
        return zarr.open_group(store=store, mode=mode, zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        raise MissingStoreError(f"{url}: no token store there") from None
    except zarr.errors.ContainsGroupError:
        raise StoreError(f"{url}: a store is already there") from None


def store_exists(url: str | Path) -> bool:
    """Whether a Zarr group's root zarr.json is at `url`."""
    if is_zip(url):
        return local_path(url).is_file()
    try:
        return has_key(open_store(url, "r"), "zarr.json")
    except MissingStoreError:
        return False


def remove_store(url: str | Path) -> None:
    """Delete every object of the store at `url` (a local directory, a zip file or a remote prefix)."""
    if is_zip(url):
        local_path(url).unlink(missing_ok=True)
        return
    if not store_exists(url):
        if not is_remote(url) and local_path(url).exists() and any(local_path(url).iterdir()):
            raise StoreError(f"{url}: refusing to overwrite a directory that is not a Zarr store")
        return
    store = open_store(url, "w")
    sync(store.delete_dir(""))
    if not is_remote(url):
        # delete_dir leaves the (now empty) directory tree behind; a fresh store starts from nothing.
        shutil.rmtree(local_path(url), ignore_errors=True)


# -- raw keys: copying, packing and verifying work on stored bytes without decoding them -------------------
def get_bytes(store: Store, key: str) -> bytes | None:
    """The stored bytes of `key`, or None when the key is absent."""
    buffer = sync(store.get(key, prototype=default_buffer_prototype()))
    return None if buffer is None else buffer.to_bytes()


def get_many(store: Store, keys: list[str]) -> list[bytes | None]:
    """Stored bytes of several keys, fetched concurrently (remote stores overlap the round trips)."""
    async def fetch() -> list:
        prototype = default_buffer_prototype()
        buffers = await asyncio.gather(*(store.get(key, prototype=prototype) for key in keys))
        return [None if b is None else b.to_bytes() for b in buffers]

    return sync(fetch())


def set_many(store: Store, items: Iterable[tuple[str, bytes]]) -> None:
    """Write several keys concurrently."""
    buffer = default_buffer_prototype().buffer

    async def put() -> None:
        await asyncio.gather(*(store.set(key, buffer.from_bytes(value)) for key, value in items))

    sync(put())


def has_key(store: Store, key: str) -> bool:
    return bool(sync(store.exists(key)))


def list_keys(store: Store, prefix: str = "") -> list[str]:
    """Every key under `prefix` (all keys when empty), sorted."""

    async def collect() -> list[str]:
        source = store.list_prefix(prefix) if prefix else store.list()
        return [key async for key in source]

    return sorted(sync(collect()))


def list_children(store: Store, prefix: str) -> list[str]:
    """Names directly under `prefix` (one level of the hierarchy)."""

    async def collect() -> list[str]:
        return [name async for name in store.list_dir(prefix)]

    return sorted(sync(collect()))
