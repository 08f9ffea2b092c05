"""embedcache: cache frozen audio-encoder patch tokens in Zarr, train many probes on them.

`import embedcache as ec` gives the Python API (embedcache/api.py): open_store, split, extract_store, encode, fit,
run_probe, load_run, predict_store. It is loaded on first use, so importing the package (and the CLI's --help)
stays light.
"""

__version__ = "0.1.0"

_API = ("ClipTokens", "HeadBank", "Predictions", "ProbeReport", "TokenStore", "TrainedRun", "encode",
        "extract_store", "fit", "load_run", "open_store", "predict_store", "run_probe", "split")


def __getattr__(name: str):
    if name in _API:
        from embedcache import api

        return getattr(api, name)
    raise AttributeError(f"module 'embedcache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
