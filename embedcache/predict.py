"""A finished probe run applied to other data: its chosen heads (every seed) on another store, or on new audio
extracted with the run's store's encoder settings. Nothing here writes files except `extract_like`'s new store."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError, safe_open

from embedcache import heads as head_registry
from embedcache.device import resolve_device
from embedcache.errors import ConfigError, EmbedcacheError
from embedcache.loader import SplitData
from embedcache.results import Predictions, head_key
from embedcache.store import TokenStore
from embedcache.train import predict_frame_scores, predict_scores


@dataclass
class TrainedRun:
    """A probe run's chosen heads: name -> [(seed, head module)], with what they were trained on.

    A run over several layers names each head on one layer `<name>_L<layer>` (a layer-mixing head keeps its name);
    head_layers says which stored layer each reads (None: the run's one layer, or every layer a mixing head mixes).
    """

    run_dir: Path
    task: str
    layer: int | list[int]
    label_names: list[str]
    store: str
    heads: dict[str, list[tuple[int, torch.nn.Module]]] = field(default_factory=dict)
    # The run's batch size: scores computed in batches of the same size equal the run's to the last bit.
    batch_size: int = 128
    head_layers: dict[str, int | None] = field(default_factory=dict)
    # task sed: the run's median filter (seconds) and event threshold (probe's `sed` settings).
    sed: dict = field(default_factory=dict)

    @property
    def multilabel(self) -> bool:
        """Clip scores are per-class sigmoids: multi-label runs, and sound-event runs (events overlap)."""
        return self.task != "multiclass"

    @property
    def layers(self) -> list[int]:
        """The stored layers the chosen heads read (the run's layer, or those of its heads over several)."""
        if isinstance(self.layer, int):
            return [self.layer]
        needed = {layer for layer in self.head_layers.values() if layer is not None}
        for members in self.heads.values():
            needed |= {value for _, head in members for value in (getattr(head, "layers", None) or [])}
        return sorted(needed) or list(self.layer)


def load_run(run_dir: str | Path, heads: list[str] | None = None) -> TrainedRun:
    """The chosen heads of the probe run in `run_dir` (every seed), ready to predict; `heads` picks some by name (in
    a run over several layers a name picks that head on every layer, `<name>_L<layer>` one of them)."""
    run_dir = Path(run_dir)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"{run_dir}: not a finished probe run (metrics.json and config.yaml: {error})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("heads"), list):
        raise ConfigError(f"{run_dir}/metrics.json: no 'heads' list; pass the folder of a finished probe run")
    entries = [entry for entry in metrics["heads"] if isinstance(entry, dict)]
    names = list(dict.fromkeys(str(entry.get("head")) for entry in entries))
    keys = [head_key(str(entry.get("head")), _entry_layer(entry)) for entry in entries]
    wanted = names if heads is None else heads
    unknown = [name for name in wanted if name not in names and name not in keys]
    if unknown:
        raise ConfigError(f"{run_dir}: no head {unknown[0]!r} in this run (its heads: "
                          f"{', '.join(dict.fromkeys(names + keys))})")
    label_names = metrics.get("label_names")
    if not isinstance(label_names, list):
        raise ConfigError(f"{run_dir}/metrics.json: no label_names (a run from before predictions were recorded): "
                          "run the probe again to predict with it")
    batch_size = (config.get("train") or {}).get("batch_size") if isinstance(config, dict) else None
    layer = metrics.get("layer")
    layer = [int(v) for v in layer] if isinstance(layer, list) else int(layer)
    run = TrainedRun(run_dir, str(metrics.get("task") or config.get("task")), layer, label_names,
                     str(metrics.get("store")), batch_size=int(batch_size) if isinstance(batch_size, int) else 128,
                     sed=dict(config.get("sed") or {}) if isinstance(config, dict) else {})
    for entry, key in zip(entries, keys, strict=True):
        if entry.get("head") not in wanted and key not in wanted:
            continue
        seeds = [e["seed"] for e in entry.get("per_seed", []) if not e.get("diverged")]
        run.heads[key] = [(seed, load_head(run_dir / "weights" / f"{key}_seed{seed}.safetensors")) for seed in seeds]
        entry_layer = _entry_layer(entry)
        run.head_layers[key] = entry_layer if isinstance(entry_layer, int) else None
    return run


def _entry_layer(entry: dict) -> int | list[int] | None:
    """A metrics.json head entry's layer: an int, a mixing head's list, or None (the run's one layer)."""
    layer = entry.get("layer")
    return [int(v) for v in layer] if isinstance(layer, list) else None if layer is None else int(layer)


def load_head(path: Path) -> torch.nn.Module:
    """One saved head: rebuilt from the config in the file's metadata, then its weights loaded."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        config = json.loads(metadata["config"])
        head = head_registry.create(**config)
        head.load_state_dict(state)
    except (OSError, SafetensorError, KeyError, ValueError, TypeError, RuntimeError) as error:
        raise ConfigError(f"{path}: not a head saved by `embedcache probe` ({str(error)[:200]})") from None
    return head.eval()


def predict(run: TrainedRun, store: TokenStore | str | Path, split: str | list[str] | None = None,
            device: str = "auto", batch_size: int | None = None) -> Predictions:
    """Every chosen head's scores on `store` (a split, several, or all its clips)."""
    if not isinstance(store, TokenStore):
        store = TokenStore.open(store)
    if store.label_names != run.label_names:
        raise ConfigError(f"{store.path}: its labels {store.label_names[:5]}... differ from the run's "
                          f"{run.label_names[:5]}...; predict on a store with the run's label vocabulary")
    splits = store.split_names if split is None else split
    try:
        # Only the layers the chosen heads read, each read once for all of them.
        data = SplitData(store, splits, run.layer if isinstance(run.layer, int) else run.layers,
                         device=resolve_device(device))
    except EmbedcacheError as error:
        raise ConfigError(f"{store.path}: {error}") from None
    for name, members in run.heads.items():
        config = members[0][1].config if members else {}
        if config and (config["embed_dim"] != store.embed_dim or config["has_prefix"] != (store.num_prefix > 0)):
            raise ConfigError(f"{store.path}: tokens D={store.embed_dim}, prefix={store.num_prefix} do not fit head "
                              f"{name} (trained on D={config['embed_dim']}); use a store from the same encoder")
    modules = [(name, seed, head.to(data.device)) for name, members in run.heads.items() for seed, head in members]
    values = predict_scores([head for _, _, head in modules], data, run.multilabel, batch_size or run.batch_size,
                            layers=[run.head_layers.get(name) for name, _, _ in modules])
    return Predictions(
        clip_ids=store.clip_ids[data.indices], label_names=list(store.label_names),
        scores={(name, seed): scores for (name, seed, _), scores in zip(modules, values, strict=True)},
        labels=data.labels, recording_ids=store.recording_ids[data.indices] if store.is_windowed else None,
        events=_detect_events(run, modules, data, batch_size or run.batch_size) if run.task == "sed" else None,
    )


def _detect_events(run: TrainedRun, modules: list, data: SplitData, batch_size: int) -> list[dict]:
    """A sound-event run's detections on `data`: the frame scores of every head that gives them, median-filtered
    and thresholded with the run's own `sed` settings, one row per (head, seed, clip, event), as probe writes
    event_predictions.csv (here for every clip, with or without strong labels)."""
    from embedcache import sed

    settings = {**sed.DEFAULTS, **run.sed}
    framed = [(name, seed, head) for name, seed, head in modules if head_registry.gives_frames(head.kind)]
    values = predict_frame_scores([head for _, _, head in framed], data, batch_size,
                                  layers=[run.head_layers.get(name) for name, _, _ in framed])
    found = []
    for (name, seed, _), frame_scores in zip(framed, values, strict=True):
        lines = sed.scored_timelines(data.store, data.indices, frame_scores, settings["median_filter"])
        found += sed.event_rows(name, seed, lines, data.store.label_names, settings["threshold"])
    return found


def extract_like(store: TokenStore | str | Path, manifest: str | Path, out: str | Path, checkpoint: str | None = None,
                 layer: int | list[int] | None = None, progress: bool = False) -> TokenStore:
    """Extract `manifest`'s audio into `out` with the encoder, layers, dtype and clip policy `store` was made
    with (its checkpoint file must still be where the provenance says, with the same sha256, or be passed)."""
    import tempfile

    from embedcache.checkpoints import sha256_file
    from embedcache.extract import ExtractConfig, extract

    source = store if isinstance(store, TokenStore) else TokenStore.open(store)
    provenance = source.provenance
    encoder = provenance.get("encoder") or {}
    recorded = encoder.get("checkpoint")
    checkpoint = checkpoint or recorded
    if checkpoint and encoder.get("checkpoint_sha256") and Path(checkpoint).is_file() and \
            sha256_file(checkpoint) != encoder["checkpoint_sha256"]:
        raise ConfigError(f"{checkpoint}: its sha256 differs from the one {source.path} was extracted with; pass "
                          "the same checkpoint with --checkpoint")
    if checkpoint and not Path(checkpoint).is_file():
        raise ConfigError(f"{source.path} was extracted with the checkpoint {checkpoint}, which is not there; pass it "
                          "with --checkpoint")
    policy = provenance.get("clip_policy") or {}
    rate = int(policy.get("sample_rate") or encoder.get("sample_rate") or 16000)
    window = policy.get("window_samples")
    max_samples = policy.get("max_samples")
    vocabulary = Path(tempfile.mkdtemp()) / "labels.txt"  # the store's labels, so scores line up with the run's
    vocabulary.write_text("".join(f"{name}\n" for name in source.label_names))
    config = ExtractConfig(
        encoder=str(encoder.get("name")), manifest=str(manifest), out=str(out), checkpoint=checkpoint,
        labels=str(vocabulary),
        random_init=bool(encoder.get("random_init")), encoder_options=dict(encoder.get("options") or {}),
        layers=",".join(str(i) for i in ([layer] if isinstance(layer, int) else layer or source.layers)),
        dtype=source.dtype,
        window=window / rate if window else None, hop=policy["hop_samples"] / rate if window else None,
        max_seconds=max_samples / rate if max_samples else None, progress=progress, overwrite=True,
    )
    extract(config)
    return TokenStore.open(out)
