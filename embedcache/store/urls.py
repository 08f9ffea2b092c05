"""Where a store lives: a local directory, a `.zip` file, or any fsspec URL (`s3://bucket/key`, `gs://...`).

Credentials and endpoints come only from the storage library's own environment and config files (for S3:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ~/.aws/...); embedcache has no option for them.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import stat
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


def is_token_store(url: str | Path) -> bool:
    """Whether an embedcache token store is at `url` (its root zarr.json holds embedcache attributes, or it is a
    creation killed before writing them); any other file, folder or Zarr group is the user's."""
    from embedcache.store import layout, writer

    try:
        store = open_store(url, "r")
        raw = get_bytes(store, "zarr.json")
        doc = json.loads(raw) if raw is not None else None
    except (StoreError, OSError, ValueError):
        return False
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return False
    attributes = doc.get("attributes") or {}
    if isinstance(attributes, dict) and layout.ATTRS_KEY in attributes:
        return True
    return not attributes and set(list_children(store, "")) - {"zarr.json"} <= writer.CREATED_NODES


def _foreign_entries(folder: Path) -> list[str]:
    """Top-level entries of a store folder that are no part of a store (the user's own files)."""
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.name == "zarr.json" or entry.name.endswith(".partial"):
            continue
        if entry.is_symlink() or not entry.is_dir():
            foreign.append(entry.name)
        elif any(entry.iterdir()) and not (entry / "zarr.json").is_file():
            foreign.append(entry.name + "/")
    return foreign


def remove_store(url: str | Path) -> None:
    """Delete every object of the store at `url` (a local directory, a zip file or a remote prefix)."""
    if is_zip(url):
        local_path(url).unlink(missing_ok=True)
        return
    if not store_exists(url):
        if not is_remote(url) and local_path(url).exists() and any(local_path(url).iterdir()):
            raise StoreError(f"{url}: refusing to overwrite a directory that is not a Zarr store")
        return
    if not is_remote(url):
        foreign = _foreign_entries(local_path(url))
        if foreign:
            raise StoreError(f"{url}: refusing to overwrite: the store folder also holds files that are not part of "
                             f"it ({', '.join(foreign[:5])}); move them out first (nothing was deleted)")
    store = open_store(url, "w")
    sync(store.delete_dir(""))
    if not is_remote(url):
        # delete_dir leaves the (now empty) directory tree behind; a fresh store starts from nothing.
        shutil.rmtree(local_path(url), ignore_errors=True)


def _has_any_key(store: Store) -> bool:
    async def first() -> bool:
        async for _ in store.list():
            return True
        return False

    return sync(first())


def clear_destination(url: str | Path, overwrite: bool) -> None:
    """Make `url` ready to receive a new store: refuse the user's own files and folders (with or without
    --overwrite, which only ever replaces an embedcache token store), then remove the store being replaced."""
    ensure_writable(url)
    path = local_path(url)
    if is_zip(url) and path.is_dir():
        raise StoreError(f"{url}: is a folder; a packed store is one .zip file: choose another name")
    exists = (path.exists() or path.is_symlink()) if is_zip(url) else store_exists(url)
    if exists:
        if not overwrite:
            raise StoreError(f"{url}: a store is already there; choose another destination or pass --overwrite to "
                             "replace it")
        if not is_token_store(url):
            raise StoreError(f"{url}: is not an embedcache token store; --overwrite only replaces token stores: "
                             "choose another destination (nothing was written)")
        remove_store(url)
    elif is_remote(url):
        if _has_any_key(open_store(url, "r")):
            raise StoreError(f"{url}: holds other objects and no token store; choose an empty prefix (nothing was "
                             "written)")
    elif path.exists() and not path.is_dir():
        raise StoreError(f"{url}: is a file, not an embedcache token store; choose another destination (nothing was "
                         "written)")
    elif path.exists() and any(path.iterdir()):
        raise StoreError(f"{url}: is a folder with other files in it, not an embedcache token store; choose a new or "
                         "empty folder (nothing was written; delete it yourself if it is an interrupted copy)")


def discard(url: str | Path, existed: bool) -> None:
    """Remove what a failed copy or import wrote to a local destination that `clear_destination` had found new,
    empty (`existed`: keep the empty folder) or holding a store it removed; remote prefixes are left as they are
    (their root zarr.json is written last, so what is there is never mistaken for a store)."""
    if is_remote(url):
        return
    path = local_path(url)
    if is_zip(url):
        path.unlink(missing_ok=True)
    elif path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        if existed:
            path.mkdir(exist_ok=True)


def ensure_writable(url: str | Path) -> None:
    """Refuse a local destination that cannot be written (under a file, or in a read-only folder) before writing."""
    if is_remote(url):
        return
    path = local_path(url).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise StoreError(f"{url}: {existing} is a file, not a folder; choose a destination in a folder")
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(f"{url}: cannot write in {folder} (permission denied); choose a writable destination or "
                         "make that folder writable")


def write_error(url: str | Path, error: OSError) -> StoreError:
    """A failed write as one line: which destination, why, and what to do."""
    where = f" ({error.filename})" if error.filename else ""
    if error.errno == errno.ENOSPC:
        return StoreError(f"{url}: the disk is full{where}; free space or choose another destination")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(f"{url}: cannot write there ({error.strerror}){where}; choose a writable destination")
    return StoreError(f"{url}: cannot write there ({error.strerror or error}){where}; choose another destination")


# -- raw keys: copying, packing and verifying work on stored bytes without decoding them -------------------
def get_bytes(store: Store, key: str) -> bytes | None:
    """The stored bytes of `key`, or None when the key is absent; a local key that is not a regular file (a FIFO
    would block, a device never ends) is refused without opening it."""
    if isinstance(store, LocalStore):
        try:
            mode = os.lstat(Path(store.root) / key).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(mode):
            raise StoreError(f"{store.root}: {key} is not a regular file (a link, FIFO or device); a store must hold "
                             "its own files only: delete it or ask its sender for a packed store")
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
