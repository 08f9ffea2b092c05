"""Encoder registry: create encoders by name, or from a user's `package.module:factory`."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from embedcache.encoders.base import Encoder, EncoderOutput, resolve_layers
from embedcache.errors import ConfigError

__all__ = ["Encoder", "EncoderOutput", "available", "create", "register", "resolve_layers"]

# name -> "module:factory"; modules are imported only when their encoder is asked for.
_BUILTINS: dict[str, str] = {
    "melpatch": "embedcache.encoders.melpatch:create_melpatch",
    "vit": "embedcache.encoders.vit:create_vit",
    "audiomae": "embedcache.encoders.vit_families:create_audiomae",
    "ast": "embedcache.encoders.vit_families:create_ast",
    "eat": "embedcache.encoders.vit_families:create_eat",
    "sslam": "embedcache.encoders.vit_families:create_sslam",
    "atst_frame": "embedcache.encoders.vit_families:create_atst_frame",
    "asit": "embedcache.encoders.vit_families:create_asit",
    "beats": "embedcache.encoders.beats:create_beats",
    "dasheng": "embedcache.encoders.dasheng:create_dasheng",
    "whisper": "embedcache.encoders.whisper:create_whisper",
}
_REGISTERED: dict[str, Callable[..., Encoder]] = {}


def register(name: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Decorator: make `factory(checkpoint=None, random_init=False, **options)` creatable by `name`."""

    def decorate(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        _REGISTERED[name] = factory
        return factory

    return decorate


def available() -> list[str]:
    """Names of every built-in and registered encoder."""
    return sorted(set(_BUILTINS) | set(_REGISTERED))


def _load_factory(spec: str) -> Callable[..., Encoder]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"encoder {spec!r}: cannot import module {module_name!r} ({error})") from error
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"encoder {spec!r}: module {module_name!r} has no attribute {attr!r}") from None


def create(name: str, checkpoint: str | None = None, random_init: bool = False, **options) -> Encoder:
    """Build an encoder by registry name or `package.module:factory`, in eval mode with frozen weights."""
    if name in _REGISTERED:
        factory = _REGISTERED[name]
    elif name in _BUILTINS:
        factory = _load_factory(_BUILTINS[name])
    elif ":" in name:
        factory = _load_factory(name)
    else:
        raise ConfigError(
            f"unknown encoder {name!r}: choose one of {', '.join(available())} "
            "or give your own as package.module:factory"
        )
    encoder = factory(checkpoint=checkpoint, random_init=random_init, **options)
    if not isinstance(encoder, Encoder):
        raise ConfigError(
            f"encoder {name!r}: the factory returned {type(encoder).__name__}, "
            "which is not an embedcache.encoders.Encoder"
        )
    encoder.eval()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    return encoder
