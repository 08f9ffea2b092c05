"""Probe heads on cached tokens, created by name: linear, mlp, attentive, ep, simpool, abmilp, proto, protofloat,
protobin, knn and logreg (fitted from whole splits, no optimiser), and frame_linear (per time step, for sound-event
detection; the prototype heads score time steps too)."""

from __future__ import annotations

import inspect

from embedcache.errors import ConfigError
from embedcache.heads.abmilp import ABMILPHead
from embedcache.heads.attentive import AttentiveHead
from embedcache.heads.base import ProbeHead, TokenBatch, masked_max
from embedcache.heads.ep import EfficientProbingHead
from embedcache.heads.frame import FrameLinearHead
from embedcache.heads.knn import KNNHead
from embedcache.heads.layermix import LayerMixHead
from embedcache.heads.logreg import LogRegHead
from embedcache.heads.pooled import POOLINGS, LabelledSplit, LinearHead, MLPHead
from embedcache.heads.prototype import (
    ProtoBinHead,
    ProtoFloatHead,
    ProtoHead,
    default_prototypes_per_class,
    unpack_prototypes,
)
from embedcache.heads.simpool import SimPoolHead

__all__ = [
    "HEAD_KINDS",
    "POOLINGS",
    "ABMILPHead",
    "AttentiveHead",
    "EfficientProbingHead",
    "FrameLinearHead",
    "KNNHead",
    "LabelledSplit",
    "LinearHead",
    "LogRegHead",
    "MLPHead",
    "ProbeHead",
    "ProtoBinHead",
    "ProtoFloatHead",
    "ProtoHead",
    "SimPoolHead",
    "TokenBatch",
    "create",
    "default_prototypes_per_class",
    "head_options",
    "masked_max",
    "unpack_prototypes",
    "gives_frames",
    "trains_on_frames",
    "uses_optimiser",
]

_CLASSES: dict[str, type[ProbeHead]] = {
    "linear": LinearHead,
    "mlp": MLPHead,
    "attentive": AttentiveHead,
    "ep": EfficientProbingHead,
    "simpool": SimPoolHead,
    "abmilp": ABMILPHead,
    "proto": ProtoHead,
    "protofloat": ProtoFloatHead,
    "protobin": ProtoBinHead,
    "layermix": LayerMixHead,
    "knn": KNNHead,
    "logreg": LogRegHead,
    "frame_linear": FrameLinearHead,
}
HEAD_KINDS = tuple(_CLASSES)

_STRUCTURAL = ("self", "num_classes", "embed_dim", "has_prefix")


def head_options(kind: str) -> dict:
    """The options a head kind accepts, with their defaults (None = chosen from the data, e.g. J or num_heads)."""
    head_class = _head_class(kind)
    parameters = inspect.signature(head_class.__init__).parameters
    return {name: p.default for name, p in parameters.items() if name not in _STRUCTURAL}


def uses_optimiser(kind: str) -> bool:
    """False for a head fitted from whole splits with no optimiser (knn, logreg): it ignores lr and weight decay."""
    return _head_class(kind).uses_optimiser


def gives_frames(kind: str) -> bool:
    """Whether a head kind scores every token time step (sound-event detection): frame_linear and the prototype
    heads."""
    return _head_class(kind).gives_frames


def trains_on_frames(kind: str) -> bool:
    """Whether a head kind learns from per-step strong labels in sound-event detection (the others: clip labels)."""
    return _head_class(kind).trains_on_frames


def create(kind: str, num_classes: int, embed_dim: int, has_prefix: bool = False, **options) -> ProbeHead:
    """Build a probe head by kind; `generator=` (a torch.Generator) makes its init independent of anything else."""
    allowed = head_options(kind)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{kind} head: unknown option(s) {', '.join(unknown)}; it accepts {', '.join(sorted(allowed))}"
        )
    return _CLASSES[kind](num_classes=num_classes, embed_dim=embed_dim, has_prefix=has_prefix, **options)


def _head_class(kind: str) -> type[ProbeHead]:
    if kind not in _CLASSES:
        raise ConfigError(f"unknown head kind {kind!r}: choose one of {', '.join(HEAD_KINDS)}")
    return _CLASSES[kind]
