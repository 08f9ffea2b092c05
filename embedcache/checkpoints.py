"""Safe checkpoint loading: weights-only unpickling with a short allow-list of harmless metadata types."""

from __future__ import annotations

import argparse
import collections
import hashlib
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from embedcache.errors import ConfigError


def _numpy_scalar_types() -> list:
    # Training scripts often save metrics as numpy scalars; rebuilding one needs these (no code runs).
    multiarray = getattr(np, "_core", None) or np.core
    types: list = [multiarray.multiarray.scalar, np.dtype]
    types += [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return types


def _numpy_legacy_names() -> list:
    # Files written with numpy 1.x name the scalar rebuilder numpy.core.*, numpy 2.x numpy._core.*.
    multiarray = getattr(np, "_core", None) or np.core
    scalar = multiarray.multiarray.scalar
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]


# Plain data containers found in official files (AudioMAE/ASiT/M2D keep `args` as an argparse.Namespace;
# Lightning .ckpt files keep hyper_parameters as an AttributeDict, a dict subclass loaded here as an OrderedDict).
SAFE_GLOBALS: list = [
    argparse.Namespace,
    *_numpy_scalar_types(),
    *_numpy_legacy_names(),
    (collections.OrderedDict, "pytorch_lightning.utilities.parsing.AttributeDict"),
    (collections.OrderedDict, "lightning_fabric.utilities.data.AttributeDict"),
    (collections.OrderedDict, "lightning.fabric.utilities.data.AttributeDict"),
]


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (recorded in the store so a result names the exact weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | Path) -> dict:
    """Load a .pt/.pth/.ckpt (weights-only, allow-listed types) or .safetensors file onto the CPU as a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path}: no such file; check the --checkpoint path")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConfigError(_refusal(path, error)) from None
    except Exception as error:  # noqa: BLE001 - a damaged file fails anywhere inside the parser
        raise ConfigError(
            f"checkpoint {path}: cannot be read as a PyTorch file ({_first_line(error)}); "
            "it may be truncated or not a checkpoint: download it again and compare its sha256"
        ) from None
    if not isinstance(loaded, Mapping):
        raise ConfigError(
            f"checkpoint {path}: holds a {type(loaded).__name__}, not a dict of tensors; "
            "save the model's state_dict() instead of the model object"
        )
    return dict(loaded)


def find_state_dict(checkpoint: Mapping, path: str | Path, containers: Iterable[str]) -> dict[str, torch.Tensor]:
    """The tensor mapping inside `checkpoint`: the first of `containers` present, else the checkpoint itself."""
    for key in containers:
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            state = checkpoint[key]
            break
    else:
        state = checkpoint
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise ConfigError(
            f"checkpoint {path}: no tensors found (top-level keys: {sorted(map(str, checkpoint))[:10]}); "
            f"expected the weights under one of {list(containers)} or at the top level"
        )
    return tensors


def _load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError) as error:
        raise ConfigError(
            f"checkpoint {path}: cannot be read as safetensors ({_first_line(error)}); it may be truncated"
        ) from None


def _refusal(path: Path, error: Exception) -> str:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - only used to improve the message
        unsafe = []
    names = ", ".join(unsafe) if unsafe else _first_line(error)
    return (
        f"checkpoint {path}: refused to unpickle types outside the safe allow-list ({names}); "
        "embedcache never runs arbitrary pickled code. If you trust the file, re-save only its weights, e.g. "
        "torch.save({'model': torch.load(path, weights_only=False)['model']}, 'weights.pt'), and pass that"
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
