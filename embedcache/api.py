"""The Python API a notebook needs, as plain functions over the same core the CLI calls (`import embedcache as ec`).

    store = ec.open_store("runs/sample.zarr", subset={"splits": ["train", "test"]})
    clip = store.clip("mix0003")                                   # one clip's tokens, mask, labels, split
    bank = ec.fit(store, ["linear", "protobin"], lr=1e-2, epochs=5)  # trained in memory, nothing written
    scores = bank.predict(ec.split(store, "test"))                 # [N, C] per head
    report = ec.run_probe(store, ["protobin"], "runs/p", seeds=3)  # the whole protocol, run directory + ledger
    run = ec.load_run("runs/p")                                    # its chosen heads, every seed
    predictions = ec.predict_store(run, store, "test")             # scores per (head, seed)
    tokens = ec.encode("melpatch", ["a.wav", "b.wav"])             # tokens of new audio, no store

(`extract_store`, `run_probe` and `predict_store` are named so as not to shadow the modules `embedcache.extract`,
`embedcache.probe` and `embedcache.predict`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embedcache import encoders
from embedcache.audio import load_audio
from embedcache.device import resolve_device
from embedcache.errors import ConfigError
from embedcache.extract import ExtractConfig, ExtractReport
from embedcache.extract import extract as run_extract
from embedcache.loader import SplitData
from embedcache.predict import TrainedRun, load_run
from embedcache.predict import predict as predict_store
from embedcache.probe import apply_overrides
from embedcache.probe import run_probe as probe_protocol
from embedcache.results import Predictions, ProbeReport
from embedcache.store import Subset, TokenStore
from embedcache.train import HeadBank, HeadSpec, TrainConfig

__all__ = [
    "ClipTokens", "HeadBank", "Predictions", "ProbeReport", "TokenStore", "TrainedRun", "encode", "extract_store",
    "fit", "load_run", "open_store", "predict_store", "run_probe", "split",
]


def open_store(path: str | Path, subset: Subset | dict | str | None = None) -> TokenStore:
    """A token store (local path, .zip or URL), optionally as a view: {"splits", "classes", "clip_ids"}."""
    return TokenStore.open(path, subset=subset)


def split(store: TokenStore | str | Path, name: str | Sequence[str], layer: int | None = None,
          device: str = "auto") -> SplitData:
    """The clips of one split (or several) at one layer, in memory, for `HeadBank.fit` and `HeadBank.predict`."""
    store = store if isinstance(store, TokenStore) else open_store(store)
    return SplitData(store, name, layer, device=resolve_device(device))


def extract_store(encoder: str, manifest: str | Path, out: str | Path, **settings) -> ExtractReport:
    """`embedcache extract` from Python: settings are ExtractConfig's fields (checkpoint, layers, dtype, window...)."""
    return run_extract(ExtractConfig(encoder=encoder, manifest=str(manifest), out=str(out), **settings))


def fit(store: TokenStore | str | Path, heads: Sequence[str], lr: float = 1e-2, weight_decay: float = 1e-4,
        epochs: int = 30, batch_size: int = 32, train: str = "train", valid: str | None = "valid", seed: int = 0,
        layer: int | None = None, device: str = "auto", **head_options) -> HeadBank:
    """Train one head per kind in `heads` on `store`'s `train` split as one bank, in memory; nothing is written.

    The bank's heads_, valid_metrics_ (on `valid`, if given), curves_ and diverged_ are its learned state;
    head_options go to every head that takes them (e.g. prototypes_per_class=10).
    """
    store = store if isinstance(store, TokenStore) else open_store(store)
    from embedcache import heads as head_registry

    specs = []
    for kind in heads:
        accepted = set(head_registry.head_options(kind)) - {"generator"}  # the bank seeds each head itself
        specs.append(HeadSpec(kind, lr, weight_decay, seed, {k: v for k, v in head_options.items() if k in accepted}))
    unused = set(head_options) - {key for spec in specs for key in spec.options}
    if unused:
        raise ConfigError(f"fit: no head in {list(heads)} takes {sorted(unused)}")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, data_seed=seed, device=device)
    config.validate()
    train_data = split(store, train, layer, device)
    valid_data = split(store, valid, layer, device) if valid else None
    return HeadBank(specs, config).fit(train_data, valid_data)


def run_probe(store: TokenStore | str | Path, heads: Sequence[str] | None, out: str | Path,
          config: dict | None = None, seeds: int | None = None, **overrides) -> ProbeReport:
    """The probe protocol (choose on valid, test once, seeds), writing a run directory and a ledger row per seed:
    overrides are `apply_overrides`'s (lr=[...], weight_decay=[...], epochs, batch_size, head_options, ...)."""
    path = store.path if isinstance(store, TokenStore) else str(store)
    subset = store.subset.to_dict() if isinstance(store, TokenStore) and not store.subset.is_everything else None
    if subset and "subset" not in overrides:
        overrides["subset"] = subset
    return probe_protocol(path, heads, out, config=apply_overrides(config, **overrides), seeds=seeds,
                          log=lambda _: None)


@dataclass
class ClipTokens:
    """One audio file's tokens per layer ([T, D], real tokens only), its prefix tokens and its (n_time, n_freq) grid."""

    path: Path
    layers: dict[int, torch.Tensor]
    prefix: dict[int, torch.Tensor]
    grid: tuple[int, int]


def encode(encoder: str | encoders.Encoder, paths: Sequence[str | Path], layers: str | Sequence[int] = "last",
           checkpoint: str | None = None, random_init: bool = False, device: str = "auto",
           **options) -> list[ClipTokens]:
    """Tokens of audio files with an encoder, each file whole and alone (the semantics extract stores), no store."""
    if isinstance(encoder, str):
        encoder = encoders.create(encoder, checkpoint=checkpoint, random_init=random_init, **options)
    chosen = encoders.resolve_layers(layers, encoder.num_layers)
    target = resolve_device(device)
    encoder = encoder.to(target)
    out = []
    for path in paths:
        wave = torch.from_numpy(np.ascontiguousarray(load_audio(path, encoder.sample_rate)))[None].to(target)
        with torch.inference_mode():
            output = encoder(wave, chosen, torch.tensor([wave.shape[-1]]))
        valid = encoder.valid_tokens(wave.shape[-1], wave.shape[-1])
        out.append(ClipTokens(
            Path(path), {layer: output.layers[layer][0, :valid].cpu() for layer in chosen},
            {layer: value[0].cpu() for layer, value in output.prefix.items()},
            (valid // output.grid[1], output.grid[1]),
        ))
    return out

