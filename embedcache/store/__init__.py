"""The Zarr v3 token store: layout, writer, reader."""

from embedcache.store.from_arrays import write_store
from embedcache.store.reader import TokenStore
from embedcache.store.subset import Subset
from embedcache.store.writer import StoreSpec

__all__ = ["StoreSpec", "Subset", "TokenStore", "write_store"]
