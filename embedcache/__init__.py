"""embedcache: cache frozen audio-encoder patch tokens in Zarr, train many probes on them."""

__version__ = "0.1.0"
