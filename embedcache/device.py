"""Choosing the torch device from a user's option."""

from __future__ import annotations

import torch

from embedcache.errors import ConfigError


def resolve_device(name: str, option: str = "--device") -> torch.device:
    """'auto' -> cuda when available, else cpu; a named device must exist. `option` names the setting in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"{option} {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option} {name!r}: CUDA is not available on this machine; use 'cpu' or 'auto'")
    return device
