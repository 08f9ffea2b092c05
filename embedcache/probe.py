"""The probe protocol: train a bank on the train split, choose on validation, test the chosen configuration once.

A run writes a directory (config.yaml re-runnable as is, metrics.json, per_class_ap.csv, sweep.csv, curves.csv,
weights/) and appends one row per head and seed to a results ledger CSV. With several layers (`layer: all` or a
list) one bank trains every head on every layer in one pass over the data (plus layer-mixing heads once), and the
choice, the results and the ledger rows are per (head, layer); layers.csv sums them up. Cross-validation over a
store's fold splits (`run_folds`) is one such run per fold, under RUN/<fold>/, with folds.json and folds.csv beside
them.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from embedcache import heads as head_registry
from embedcache import sed
from embedcache.errors import ConfigError, StoreError
from embedcache.loader import SplitData, open_splits
from embedcache.results import (
    UNITS_DIR,
    FoldsReport,
    HeadResult,
    ProbeReport,
    append_ledger,
    layers_label,
    ledger_rows,
    load_units,
    save_unit,
    scalars,
    sed_rows,
    split_label,
    split_names_of,
    write_folds,
    write_run,
    write_sed,
    write_test_predictions,
)
from embedcache.store import TokenStore
from embedcache.store.subset import Subset
from embedcache.store.summary import legacy_clip_policy_note
from embedcache.train import (
    HeadBank,
    HeadSpec,
    TrainConfig,
    checked_lr,
    checked_weight_decay,
    mixes_layers,
    selection_metric,
    split_frames,
    split_metrics,
)

SPLIT_ROLES = ("train", "valid", "test")
# A role left at its default name (the first) takes the one other name the store has; train has no aliases.
SPLIT_ALIASES = {"train": ("train",), "valid": ("valid", "val", "validation", "dev"), "test": ("test", "eval")}
ROLE_WORDS = {"train": "training", "valid": "validation", "test": "test"}
FOLD_PATTERN = re.compile(r"fold[_-]?(\d+)", re.IGNORECASE)
TASKS = ("multilabel", "multiclass", "sed")
DATA_ORDERS = ("per_seed", "shared")

# The code's defaults; configs/probes/default.yaml spells out the same values (a test keeps them equal).
DEFAULT_CONFIG: dict = {
    "store": None,
    "layer": None,
    "task": None,
    "splits": {"train": "train", "valid": "valid", "test": "test"},
    "split_stores": {},
    "subset": None,
    "heads": ["linear", "attentive", "protobin"],
    "grid": {"lr": [3e-3, 1e-2, 3e-2], "weight_decay": [1e-4]},
    "seeds": 1,
    "seed": 0,
    # per_seed: seed s sets a bank's head init and its data order (one pass per seed); shared: every seed's heads
    # share one pass in the order of `seed` (seeds then differ in init only).
    "data_order": "per_seed",
    # Options merged into the heads: {key: value} for every head taking it, or {head name: {key: value}}.
    "head_options": {},
    # Write every test clip's scores per head and seed (predictions.csv) and, for multi-class data, confusion.csv.
    "predictions": True,
    # task: sed: frame scores median-filtered over this many seconds at prediction time (0: none), and the score
    # an event must pass for the event predictions and the F1 scores (PSDS needs no threshold).
    "sed": dict(sed.DEFAULTS),
    "train": TrainConfig(epochs=30, batch_size=32).to_dict(),
}


# The store a study or best.yaml was made on ({"fingerprint", "subset"}): a study's user attribute, a best.yaml line.
STORE_LINE = re.compile(r"^# embedcache-store: (\{.*\})\s*$", re.MULTILINE)


def store_record(store: TokenStore) -> dict:
    """What a study and best.yaml keep of the store they were made on: its fingerprint and subset (describe_view)."""
    view = store.describe_view()
    return {"store": view["store"], "fingerprint": view["fingerprint"], "subset": view["subset"]}


def check_store(recorded: dict, ours: dict, what: str) -> None:
    """Refuse a study or best.yaml (`what`) made on a store with another fingerprint or subset than `ours`."""
    if (recorded.get("fingerprint"), recorded.get("subset")) == (ours["fingerprint"], ours["subset"]):
        return

    def shown(record: dict) -> str:
        return f"fingerprint {record.get('fingerprint') or '(none)'} (subset {json.dumps(record.get('subset'))})"

    raise ConfigError(
        f"{what} was made on store {shown(recorded)}, but {ours['store']} has {shown(ours)}; the store or the subset "
        "changed (e.g. by embedcache append), so its trials do not hold here: sweep this store in a new study "
        "(another --study or --out), or use the store it was made on"
    )


def read_store_record(config_path: str | Path) -> dict | None:
    """The store a best.yaml was chosen on (its `# embedcache-store:` line), or None for another probe config."""
    match = STORE_LINE.search(Path(config_path).read_text())
    return json.loads(match.group(1)) if match else None


# -- configuration ----------------------------------------------------------------------------------------
def load_config(path: str | Path) -> dict:
    """Read a probe config YAML (a mapping), naming the file when it cannot be used."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such probe config file (see configs/probes/ for examples)") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a probe config must be a mapping of options, got {type(loaded).__name__}")
    return loaded


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "split_stores":
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _as_list(value, field_name: str) -> list[float]:
    values = value if isinstance(value, list) else [value]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"{field_name}: expected a number or a list of numbers, got {value!r}") from None


def grid_values(value, key: str) -> list[float]:
    """A learning-rate or weight-decay grid (`key` ends in lr or weight_decay, or is --lr/--weight-decay), checked."""
    check = checked_lr if key.endswith("lr") else checked_weight_decay
    return [check(number, key) for number in _as_list(value, key)]


def _whole(value, key: str, low: int | None = None, null: bool = False) -> int | None:
    """An integer config value (not a float, string or boolean), else a ConfigError naming `key`."""
    if value is None and null:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        extra = (" (a stored layer; negative counts from the encoder's last block), a list of them, 'all' or null"
                 if null else "")
        raise ConfigError(f"{key}: {value!r} is not a whole number{bound}{extra}")
    return value


def parse_layers(text: str) -> int | list[int] | str:
    """--layer: 'all', '6' or '-1,-4,6' -> "all", 6 or [-1, -4, 6]."""
    if text.strip() == "all":
        return "all"
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--layer {text!r}: give 'all', a stored layer or several, e.g. --layer -1,-4,6") from None
    if not layers:
        raise ConfigError(f"--layer {text!r}: give 'all', a stored layer or several, e.g. --layer -1,-4,6")
    return layers[0] if len(layers) == 1 else layers


def _layer_value(value) -> int | list[int] | str | None:
    """The `layer` of a probe config: null (the last), a whole number, 'all', or a list of whole numbers (a list of
    one is that layer)."""
    if value == "all":
        return "all"
    if isinstance(value, list | tuple):
        layers = [_whole(item, "layer", null=True) for item in value]
        if not layers or None in layers:
            raise ConfigError(f"layer: {list(value)!r} names no layer; give 'all', stored layer(s) or null")
        if len(set(layers)) != len(layers):
            raise ConfigError(f"layer: {list(value)!r} names a layer twice")
        return layers[0] if len(layers) == 1 else layers
    return _whole(value, "layer", null=True)


def _resolve_head(entry, grid: dict, index: int) -> dict:
    if isinstance(entry, str):
        entry = {"kind": entry}
    if not isinstance(entry, dict) or "kind" not in entry:
        raise ConfigError(f"heads[{index}]: give a head kind (e.g. protobin) or a mapping with a 'kind' key")
    unknown = sorted(set(entry) - {"name", "kind", "lr", "weight_decay", "options"})
    if unknown:
        raise ConfigError(f"heads[{index}]: unknown key(s) {unknown}; use name, kind, lr, weight_decay, options")
    kind = entry["kind"]
    if kind not in head_registry.HEAD_KINDS:
        choices = ", ".join(head_registry.HEAD_KINDS)
        raise ConfigError(f"heads[{index}]: unknown head kind {kind!r}; choose from {choices}")
    return {
        "name": str(entry.get("name", kind)),
        "kind": kind,
        "lr": grid_values(entry.get("lr", grid["lr"]), f"heads[{index}].lr"),
        "weight_decay": grid_values(entry.get("weight_decay", grid["weight_decay"]), f"heads[{index}].weight_decay"),
        "options": dict(entry.get("options") or {}),
    }


def _split_value(value, role: str) -> str | list[str] | None:
    """A role's split: None, one name, or a list of names ('a,b' is a list too)."""
    if value is None:
        return None
    names = [part.strip() for part in value.split(",")] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(f"splits.{role}: give a split name, a list of split names or null, got {value!r}")
    names = [name.strip() for name in names]
    if len(set(names)) != len(names):
        raise ConfigError(f"splits.{role}: {names} names a split twice")
    return names[0] if isinstance(value, str) and len(names) == 1 else list(names)


def parse_splits(text: str) -> dict:
    """'train=fold1,fold2;valid=fold4;test=fold5' -> a `splits` mapping ('valid=' sets a role to null)."""
    splits: dict = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        role, sep, names = part.partition("=")
        role = role.strip()
        if not sep or role not in SPLIT_ROLES:
            raise ConfigError(f"--splits {text!r}: use role=a,b;role=c with roles {', '.join(SPLIT_ROLES)}")
        splits[role] = names.strip() or None
    return splits


def apply_overrides(
    config: dict | None = None,
    lr: Sequence[float] | None = None,
    weight_decay: Sequence[float] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    layer: int | str | Sequence[int] | None = None,
    subset: str | dict | None = None,
    splits: str | dict | None = None,
    head_options: dict | None = None,
    data_order: str | None = None,
    task: str | None = None,
    median_filter: float | None = None,
) -> dict:
    """A copy of `config` with the options given here applied: the one override path of the CLI, the Python API
    and the sweep. lr/weight decay replace the grid and every head's own values; head_options ({key: value}, or
    {head name: {key: value}}) are merged into the heads' options."""
    config = copy.deepcopy(config or {})
    grid = {key: list(values) for key, values in (("lr", lr), ("weight_decay", weight_decay)) if values}
    if grid:
        config["grid"] = {**config.get("grid", {}), **grid}
        for entry in config.get("heads", []):  # command-line values win over per-head values from the file too
            if isinstance(entry, dict):
                entry.update(grid)
    train = {key: value for key, value in (("epochs", epochs), ("batch_size", batch_size), ("device", device))
             if value is not None}
    if train:
        config["train"] = {**config.get("train", {}), **train}
    for key, value in (("layer", layer), ("subset", subset), ("data_order", data_order), ("task", task)):
        if value is not None:
            config[key] = value
    if median_filter is not None:
        config["sed"] = {**config.get("sed", {}), "median_filter": median_filter}
    if splits:
        config["splits"] = {**config.get("splits", {}), **(parse_splits(splits) if isinstance(splits, str)
                                                            else splits)}
    if head_options:
        config["head_options"] = {**config.get("head_options", {}), **head_options}
    return config


def _with_head_options(heads: list[dict], options: dict) -> list[dict]:
    """Merge `head_options` into the resolved heads: {key: value} for every head that takes that option, or
    {head name: {key: value}} for one head."""
    named = {name: value for name, value in options.items() if isinstance(value, dict)}
    shared = {key: value for key, value in options.items() if not isinstance(value, dict)}
    unknown = sorted(set(named) - {head["name"] for head in heads})
    if unknown:
        raise ConfigError(f"head_options: no head named {unknown[0]!r} (heads: {', '.join(h['name'] for h in heads)})")
    for head in heads:
        accepted = set(head_registry.head_options(head["kind"])) - {"generator"}
        for key, value in {**{k: v for k, v in shared.items() if k in accepted}, **named.get(head["name"], {})}.items():
            if key not in accepted:
                raise ConfigError(f"head_options: {head['name']} ({head['kind']}) takes no option {key!r}; it "
                                  f"takes {', '.join(sorted(accepted))}")
            head["options"] = {**head["options"], key: value}
    taken = {key for head in heads for key in head_registry.head_options(head["kind"])} - {"generator"}
    ignored = sorted(set(shared) - taken)
    if ignored:
        raise ConfigError(f"head_options: no head here takes {ignored[0]!r}")
    return heads


def resolve_config(config: dict | None = None, **overrides) -> dict:
    """Defaults <- config <- overrides (non-None), with every head spelled out: the form written to config.yaml."""
    merged = _merge(DEFAULT_CONFIG, config or {})
    merged = _merge(merged, {key: value for key, value in overrides.items() if value is not None})
    unknown = sorted(set(merged) - set(DEFAULT_CONFIG))
    if unknown:
        raise ConfigError(f"probe config: unknown key(s) {unknown}; known keys are {sorted(DEFAULT_CONFIG)}")
    if isinstance(merged["heads"], str):
        merged["heads"] = [h.strip() for h in merged["heads"].split(",") if h.strip()]
    if not merged["heads"]:
        raise ConfigError("heads: name at least one head kind, e.g. --head protobin")
    if not isinstance(merged["grid"], dict):
        raise ConfigError(f"grid: expected a mapping with lr and weight_decay, got {merged['grid']!r}")
    grid = {
        "lr": grid_values(merged["grid"].get("lr", [1e-3]), "grid.lr"),
        "weight_decay": grid_values(merged["grid"].get("weight_decay", [1e-4]), "grid.weight_decay"),
    }
    merged["grid"] = grid
    merged["heads"] = [_resolve_head(entry, grid, i) for i, entry in enumerate(merged["heads"])]
    if not isinstance(merged["head_options"], dict):
        raise ConfigError(f"head_options: {merged['head_options']!r} is not a mapping")
    merged["heads"] = _with_head_options(merged["heads"], merged["head_options"])
    merged["head_options"] = {}  # now part of every head's options, as config.yaml records them
    names = [head["name"] for head in merged["heads"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"heads: names must be unique, got {names}; give repeated kinds a 'name'")
    if merged["task"] not in (None, *TASKS):
        raise ConfigError(f"task {merged['task']!r}: choose multilabel, multiclass, sed (sound-event detection) or "
                          "null (detect from the labels)")
    merged["sed"] = _sed_settings(merged["sed"])
    if set(merged["splits"]) - set(SPLIT_ROLES) or merged["splits"].get("train") is None:
        raise ConfigError(f"splits: map the roles {list(SPLIT_ROLES)} to split names; train is required")
    merged["splits"] = {role: _split_value(merged["splits"].get(role), role) for role in SPLIT_ROLES}
    if set(merged["split_stores"]) - set(SPLIT_ROLES):
        raise ConfigError(f"split_stores: keys must be among {list(SPLIT_ROLES)}, got {sorted(merged['split_stores'])}")
    merged["seeds"], merged["seed"] = _whole(merged["seeds"], "seeds", 1), _whole(merged["seed"], "seed")
    if merged["data_order"] not in DATA_ORDERS:
        raise ConfigError(f"data_order {merged['data_order']!r}: choose {' or '.join(DATA_ORDERS)}")
    if not isinstance(merged["predictions"], bool):
        raise ConfigError(f"predictions: {merged['predictions']!r} is not true or false")
    merged["layer"] = _layer_value(merged["layer"])
    merged["train"] = TrainConfig.from_dict(merged["train"]).to_dict()
    merged["subset"] = Subset.from_value(merged["subset"]).to_dict() or None  # the view, recorded as plain data
    return merged


def _sed_settings(value) -> dict:
    """The `sed` mapping: median_filter (seconds >= 0) and threshold (0 < t < 1), checked."""
    if not isinstance(value, dict) or set(value) - {"median_filter", "threshold"}:
        raise ConfigError(f"sed: {value!r}: give a mapping with median_filter (seconds) and threshold, e.g. "
                          "{median_filter: 0.5, threshold: 0.5}")
    settings = {**DEFAULT_CONFIG["sed"], **value}
    median, threshold = settings["median_filter"], settings["threshold"]
    if isinstance(median, bool) or not isinstance(median, int | float) or not 0 <= median < 1e6:
        raise ConfigError(f"sed.median_filter: {median!r} is not a length in seconds >= 0 (0: no filter)")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold < 1:
        raise ConfigError(f"sed.threshold: {threshold!r} is not a score between 0 and 1")
    return {"median_filter": float(median), "threshold": float(threshold)}


@dataclass(frozen=True)
class HeadConfig:
    """One named head of a probe config: its kind, options and the lr / weight-decay grid it is trained over."""

    name: str
    kind: str
    lr: tuple[float, ...]
    weight_decay: tuple[float, ...]
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "lr": list(self.lr), "weight_decay": list(self.weight_decay),
                "options": dict(self.options)}


@dataclass(frozen=True)
class ProbeConfig:
    """A resolved probe config, typed: built once by `resolve` (defaults <- config <- overrides, every value
    checked), written to config.yaml by `to_dict`, and read back by `from_dict` to the same object."""

    store: str | None
    # One stored layer, or several (a list, or "all" until a run resolves it): one bank over every one of them.
    layer: int | list[int] | str | None
    task: str | None
    splits: dict
    split_stores: dict
    subset: dict | None
    heads: tuple[HeadConfig, ...]
    grid: dict
    seeds: int
    seed: int
    data_order: str
    predictions: bool
    train: TrainConfig
    sed: dict = field(default_factory=lambda: dict(DEFAULT_CONFIG["sed"]))

    @classmethod
    def resolve(cls, config: dict | None = None, **overrides) -> ProbeConfig:
        """The one path every entry point takes: the CLI, the Python API and the sweep (see `apply_overrides`)."""
        return cls.from_dict(resolve_config(config, **overrides))

    @classmethod
    def from_dict(cls, resolved: dict) -> ProbeConfig:
        values = resolve_config(resolved)
        values.pop("head_options")  # already merged into the heads
        values["heads"] = tuple(HeadConfig(h["name"], h["kind"], tuple(h["lr"]), tuple(h["weight_decay"]),
                                           dict(h["options"])) for h in values["heads"])
        values["train"] = TrainConfig.from_dict(values["train"])
        return cls(**values)

    def to_dict(self) -> dict:
        """The form config.yaml holds (and `run_probe` takes)."""
        return {
            "store": self.store, "layer": self.layer, "task": self.task, "splits": dict(self.splits),
            "split_stores": dict(self.split_stores), "subset": self.subset,
            "heads": [head.to_dict() for head in self.heads], "grid": dict(self.grid), "seeds": self.seeds,
            "seed": self.seed, "data_order": self.data_order, "head_options": {}, "predictions": self.predictions,
            "sed": dict(self.sed), "train": self.train.to_dict(),
        }


def fold_summary(plan: list[dict], runs: list[ProbeReport]) -> list[dict]:
    """Per head: each fold's test metrics (its mean over seeds) and their mean and sample std (ddof=1) over folds."""
    summary = []
    for i, first in enumerate(runs[0].results):
        folds = []
        for entry, run in zip(plan, runs, strict=True):
            result = run.results[i]
            folds.append({
                "fold": entry["fold"], "lr": result.lr, "weight_decay": result.weight_decay,
                "valid": result.valid.get(result.metric), "seeds": len(result.per_seed),
                "test": {key: value for key, value in result.test.items()
                         if isinstance(value, float) and not key.endswith("_std")},
            })
        keys = list(folds[0]["test"])
        values = {key: np.array([fold["test"][key] for fold in folds]) for key in keys}
        summary.append({
            "head": first.key, **({} if first.layer is None else {"layer": first.layer}), "kind": first.kind,
            "metric": first.metric, "folds": folds,
            "test_mean": {key: float(v.mean()) for key, v in values.items()},
            "test_std": {key: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for key, v in values.items()},
        })
    return summary


def _scalar_summary(per_seed: list[dict]) -> dict:
    """Mean and sample std (ddof=1; 0 for one seed) of every float metric over seeds; counts are copied."""
    summary = {}
    for key, value in per_seed[0].items():
        if isinstance(value, int):
            summary[key] = value
        elif isinstance(value, float):
            values = np.array([float(entry[key]) for entry in per_seed])
            summary[key] = float(values.mean())
            summary[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


def _check_compatible(train_store: TokenStore, other: TokenStore, role: str) -> None:
    if other.label_names != train_store.label_names:
        raise StoreError(
            f"split_stores.{role} ({other.path}) has label vocabulary {other.label_names[:5]}... but the train store "
            f"{train_store.path} has {train_store.label_names[:5]}...; extract both from manifests with the same labels"
        )
    if other.embed_dim != train_store.embed_dim or other.num_prefix != train_store.num_prefix:
        raise StoreError(
            f"split_stores.{role} ({other.path}): tokens D={other.embed_dim}, P={other.num_prefix} differ from the "
            f"train store's D={train_store.embed_dim}, P={train_store.num_prefix}; use stores of the same encoder"
        )


def _check_train_positives(train: SplitData) -> None:
    counts = train.labels.sum(axis=0)
    empty = [name for name, count in zip(train.store.label_names, counts) if count == 0]
    if empty:
        shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        raise StoreError(
            f"{train.store.path}: split {train.split!r} has no positive clip for {len(empty)} class(es): {shown}; "
            "a probe cannot learn them: re-split the data or drop those classes from the manifest"
        )


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")


def assign_splits(requested: dict, available: dict[str, tuple[str, Sequence[str]]]) -> tuple[dict, list[str]]:
    """Each role's split(s) in its store, and notes saying which alias stood in for a missing default name.

    available: role -> (the path of the store the role reads, that store's split names). A valid/test role left at
    its default name takes the one alias the store has (noted; several are refused) or none (the role is null, as if
    set to null); any other name the store lacks is refused with the config key to set. A split in two roles of
    the same store is refused.
    """
    assigned, notes = {}, []
    claimed = {(available[role][0], name) for role in SPLIT_ROLES for name in split_names_of(requested.get(role))
               if name in available[role][1]}
    for role in SPLIT_ROLES:
        value, (path, names) = requested.get(role), available[role]
        shown = f"the store {path}" if path != available["train"][0] else "the store"
        missing = [name for name in split_names_of(value) if name not in names]
        if not missing:
            assigned[role] = value
        elif value == role and role != "train":
            aliases = [name for name in SPLIT_ALIASES[role][1:] if name in names and (path, name) not in claimed]
            if len(aliases) > 1:
                raise ConfigError(
                    f"splits.{role}: {shown} has no split {role!r} but several {ROLE_WORDS[role]} splits "
                    f"({', '.join(aliases)}); set splits.{role} in the probe config (YAML) or --splits to one of them"
                )
            assigned[role] = aliases[0] if aliases else None
            notes.append(
                f"splits.{role}: {shown} has no split {role!r}; using {aliases[0]!r} (set splits.{role} to choose "
                "another)" if aliases else
                f"splits.{role}: {shown} has no split named {' or '.join(SPLIT_ALIASES[role])}; running without a "
                f"{ROLE_WORDS[role]} split (its splits: {_listed(names)})"
            )
        else:
            hint = ", or run with --folds" if role == "train" and len(fold_splits(names)) >= 2 else ""
            raise ConfigError(
                f"splits.{role}: {shown} has no split {missing[0]!r} (its splits: {_listed(names)}); set "
                f"splits.{role} in the probe config (YAML) or --splits to one of them, or to a list of them{hint}"
            )
    roles = [role for role in SPLIT_ROLES if assigned[role] is not None]
    for i, first in enumerate(roles):
        for second in roles[i + 1:]:
            shared = [name for name in split_names_of(assigned[first]) if name in split_names_of(assigned[second])]
            if shared and available[first][0] == available[second][0]:
                raise ConfigError(
                    f"splits: {shared[0]!r} is in both splits.{first} and splits.{second}; a split may serve one role "
                    "only: give each role its own splits"
                )
    return assigned, notes


def open_stores(config: dict) -> dict[str, TokenStore]:
    """The store each role reads (train/valid/test): the config's store, or its split_stores entry, checked.

    Per-row values that `verify` reports as damage (labels other than 0/1, ...) are refused here, before training.
    """
    train_store = TokenStore.open(config["store"], subset=config["subset"])
    train_store.check_rows()
    stores = {role: train_store for role in SPLIT_ROLES}
    for role, path in config["split_stores"].items():
        stores[role] = TokenStore.open(path, subset=config["subset"])
        stores[role].check_rows()
        _check_compatible(train_store, stores[role], role)
    return stores


def choose_splits(config: dict) -> tuple[dict[str, TokenStore], dict, list[str]]:
    """Open a resolved config's stores and assign each role its split(s): (stores, splits, notes)."""
    stores = open_stores(config)
    available = {role: (store.path, store.split_names) for role, store in stores.items()}
    splits, notes = assign_splits(config["splits"], available)
    for path, store in {store.path: store for store in stores.values()}.items():
        legacy = legacy_clip_policy_note(store)
        if legacy:
            notes.append(f"warning: {path}: {legacy}")
    return stores, splits, notes


def open_data(config: dict, stores: dict[str, TokenStore] | None = None) -> dict[str, SplitData]:
    """Open and check every split a config names (after `choose_splits`): role (train/valid/test) -> SplitData."""
    stores = stores or open_stores(config)
    roles = [role for role in SPLIT_ROLES if config["splits"].get(role) is not None]
    requests = [(stores[role], config["splits"][role]) for role in roles]
    train_config = TrainConfig.from_dict(config["train"])
    # Open (and check) every split before any training, so a bad test split fails in seconds, not after hours.
    for store, value in requests:
        for split in split_names_of(value):
            if len(store.split_indices(split)) == 0:
                raise StoreError(
                    f"{store.path}: split {split!r} has no clips; map the roles in `splits` to non-empty splits"
                )
    data = dict(zip(roles, open_splits(requests, config["layer"], train_config)))
    _check_train_positives(data["train"])
    return data


# -- folds ------------------------------------------------------------------------------------------------
def fold_splits(split_names: Sequence[str]) -> list[str]:
    """The split names that are folds (fold1, fold_0, Fold-2, ...), in natural order: fold2 before fold10."""
    numbered = [(int(match.group(1)), name) for name in split_names if (match := FOLD_PATTERN.fullmatch(name))]
    return [name for _, name in sorted(numbered)]


def fold_plan(folds: Sequence[str], validation: bool = True) -> list[dict]:
    """Per fold k: test on fold k, choose on the fold after it (cyclically), train on the others.

    With validation=False, or only two folds, there is no validation fold: train on every fold but k.
    """
    if len(folds) < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {list(folds)}")
    plan = []
    for k, test in enumerate(folds):
        valid = folds[(k + 1) % len(folds)] if validation and len(folds) > 2 else None
        plan.append({"fold": test, "train": [f for f in folds if f not in (test, valid)], "valid": valid,
                     "test": test})
    return plan


def head_grid(head: dict) -> list[tuple[float, float]]:
    """A resolved head's (lr, weight decay) configurations; one (the first) for a head that takes no optimiser
    (knn, logreg): it ignores both, so the grid must not multiply it."""
    if not head_registry.uses_optimiser(head["kind"]):
        return [(head["lr"][0], head["weight_decay"][0])]
    return [(lr, weight_decay) for lr in head["lr"] for weight_decay in head["weight_decay"]]


def _bank_specs(config: dict, seed: int) -> tuple[list[HeadSpec], list[str]]:
    specs, names = [], []
    for head in config["heads"]:
        for lr, weight_decay in head_grid(head):
            specs.append(HeadSpec(head["kind"], lr, weight_decay, seed, dict(head["options"])))
            names.append(head["name"])
    return specs, names


def absolute_url(path: str | Path) -> str:
    """Local paths made absolute (so config.yaml and the ledger work from any directory); URLs stay as given."""
    text = str(path)
    return text if "://" in text else str(Path(text).resolve())


def run_probe(
    store_path: str | Path,
    head_kinds: Sequence[str] | None,
    out_dir: str | Path,
    config: ProbeConfig | dict | None = None,
    seeds: int | None = None,
    ledger: str | Path | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = False,
    expect_store: dict | None = None,
) -> ProbeReport:
    """Train every head configuration per seed in one bank, choose each head's lr/wd on validation, test it once.

    head_kinds (None: the config's heads) and seeds override the config; the ledger defaults to <out>/../ledger.csv.
    An out_dir that already holds a run is refused unless overwrite=True (the ledger keeps every earlier row); one
    that holds the finished banks of an interrupted run with the same settings resumes it. `log` gets one line per
    split role the store matched by an alias (also kept in the report and metrics.json); `progress` shows a bar.
    expect_store: the store a config (a sweep's best.yaml, `read_store_record`) was chosen on; another is refused.
    """
    out_dir = Path(out_dir).resolve()
    overrides = {"store": absolute_url(store_path) if store_path is not None else None, "seeds": seeds}
    if head_kinds is not None:
        if not list(head_kinds):
            raise ConfigError("no heads given: name at least one head kind (or pass None for the config's heads)")
        overrides["heads"] = list(head_kinds)
    if isinstance(config, ProbeConfig):
        config = config.to_dict()
    resolved = resolve_config(config, **overrides)
    if resolved["store"] is None:
        raise ConfigError("no store given: pass STORE or set `store:` in the config")
    if (out_dir / "metrics.json").exists() and not overwrite:
        raise ConfigError(
            f"{out_dir} already holds a probe run (metrics.json); choose a new --out, or pass --overwrite to replace it"
        )
    stores, resolved["splits"], notes = choose_splits(resolved)
    if expect_store is not None:
        check_store(expect_store, store_record(stores["train"]), "this probe config")
    for note in notes:
        log(note)
    if resolved["splits"]["valid"] is None and any(
        len(head_grid(h)) > 1 for h in resolved["heads"]
    ):
        raise ConfigError(
            "splits.valid is null but the grid has several configurations: name a validation split (splits.valid in "
            f"the probe config or --splits valid=NAME; the store's splits: {_listed(stores['valid'].split_names)}), "
            "or give one lr and one weight decay"
        )
    data = open_data(resolved, stores)
    train, valid, test = data["train"], data.get("valid"), data.get("test")
    resolved["layer"] = train.layer
    frames = resolved["task"] == "sed"
    if frames:
        _check_sed(resolved, data)
    multilabel = frames or (train.store.is_multilabel if resolved["task"] is None else resolved["task"] == "multilabel")
    resolved["task"] = "sed" if frames else "multilabel" if multilabel else "multiclass"
    if not multilabel and (train.store.labels[train.store.selected].sum(axis=1) != 1).any():
        raise ConfigError(
            f"task: multiclass, but {train.store.path} has clips with zero or several labels; use task: multilabel"
        )
    metric = selection_metric(multilabel)

    def metric_of(kind: str) -> str:
        # sed: a head trained on frames is chosen on frame-level mAP; a weakly trained head on clip mAP (weak labels
        # only, so its frame scores are never tuned on strong labels).
        return "frame_map" if frames and head_registry.trains_on_frames(kind) else metric

    # Phase 1: the banks (one per seed, or one for every seed), each saved as a unit once trained, so that the same
    # command resumes an interrupted run without training a finished bank again.
    units = _plan_units(resolved)
    fingerprint = _run_fingerprint(resolved, stores)
    done = load_units(out_dir, fingerprint, overwrite)
    bar = _progress(len(units) * resolved["train"]["epochs"], progress and len(done) < len(units), metric)
    bank_list = []
    try:
        for unit in units:
            if unit["name"] in done:
                bank = HeadBank.restore(*done[unit["name"]], device=train.device)
                bar.update(resolved["train"]["epochs"])
            else:
                train_config = TrainConfig.from_dict({**resolved["train"], "data_seed": unit["data_seed"]})
                bank = HeadBank(unit["specs"], train_config, multilabel=multilabel, frames=frames).fit(
                    train, valid, on_epoch=lambda epoch, fitted: _show(bar, fitted, metric))
                save_unit(out_dir, unit["name"], fingerprint, bank)
            bank_list.append((unit, bank))
    finally:
        bar.close()
    # Every trained head with its layer key (None: the run's one layer; an int; a tuple of the layers it mixes).
    trained = [(name, key, spec, bank, k) for unit, bank in bank_list
               for k, (spec, name, key) in enumerate(zip(unit["specs"], unit["names"], unit["layers"]))]
    sweep = [{
        "head": name, **({} if key is None else {"layer": layers_label(key)}), "kind": spec.kind, "lr": spec.lr,
        "weight_decay": spec.weight_decay, "seed": spec.seed,
        f"valid_{metric}": bank.valid_metrics_[k].get(metric, float("nan")) if valid is not None else "",
        **({"valid_frame_map": bank.valid_metrics_[k].get("frame_map", float("nan")) if valid is not None else ""}
           if frames else {}),
        "diverged": k in bank.diverged_,
    } for name, key, spec, bank, k in trained]

    # Phase 2: per named head and layer, the (lr, wd) with the best mean validation metric over seeds; test it once
    # per seed.
    choices = []
    for head in resolved["heads"]:
        candidates = head_grid(head)
        chosen_by = metric_of(head["kind"])
        for key in dict.fromkeys(key for name, key, *_ in trained if name == head["name"]):

            def mean_valid(candidate: tuple[float, float], name: str = head["name"], key=key,
                           by: str = chosen_by) -> float:
                values = [bank.valid_metrics_[k].get(by, float("nan")) for n, layer, spec, bank, k in trained
                          if (n, layer) == (name, key) and (spec.lr, spec.weight_decay) == candidate]
                if valid is None:
                    return 0.0
                mean = float(np.mean(values))
                return mean if np.isfinite(mean) else -np.inf  # a diverged configuration never wins

            # First best wins ties, so the choice does not depend on float noise in later grid points.
            chosen = max(candidates, key=mean_valid)
            members = [(seed, bank, k) for unit, bank in bank_list for seed, k in unit["members"]
                       if (unit["names"][k], unit["layers"][k]) == (head["name"], key)
                       and (unit["specs"][k].lr, unit["specs"][k].weight_decay) == chosen]
            choices.append((head, key, chosen, chosen_by, members))
    # Every chosen head of a bank is scored in one pass over the test split (each head's scores are its own).
    chosen_heads = [member for *_, members in choices for member in members]
    test_scores = _test_scores(chosen_heads, test, frames=False)
    test_frames = _test_scores(chosen_heads, test, frames=True) if frames else {}
    results, predictions, detections = [], {}, []
    for head, key, chosen, chosen_by, members in choices:
        result, scores = _evaluate_chosen(head, chosen, members, valid, test, multilabel, chosen_by, test_scores,
                                          layer=list(key) if isinstance(key, tuple) else key)
        if frames and test is not None:
            detections += _evaluate_frames(result, members, test, resolved["sed"], test_frames)
        results.append(result)
        predictions.update({(result.key, seed): value for seed, value in scores.items()})

    report = ProbeReport(out_dir, resolved, results, dict(bank_list[0][1].data_paths_), sweep, None, notes)
    if test is not None:
        report.data_paths[test.split] = test.path
    write_run(report, bank_list, train.store)
    if resolved["predictions"] and test is not None:
        write_test_predictions(out_dir, test, predictions, multilabel)
    if frames and test is not None:
        write_sed(out_dir, sed_rows(results, _chance_frames(train, test, resolved["sed"])), detections)
    shutil.rmtree(out_dir / UNITS_DIR, ignore_errors=True)  # the run is whole: its chosen heads are in weights/
    ledger_path = Path(ledger) if ledger is not None else out_dir.resolve().parent / "ledger.csv"
    append_ledger(ledger_path, ledger_rows(report, train.store))
    report.ledger = ledger_path
    return report


def run_folds(
    store_path: str | Path | None,
    head_kinds: Sequence[str] | None,
    out_dir: str | Path,
    config: dict | None = None,
    seeds: int | None = None,
    ledger: str | Path | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> FoldsReport:
    """k-fold cross-validation over the store's fold splits: one probe run per fold (see `fold_plan`) in out/<fold>.

    The config's splits stay at their defaults (or splits.valid: null: no validation fold, train on every other
    fold); out/config.yaml re-runs the whole cross-validation, out/<fold>/config.yaml one fold.
    """
    out_dir = Path(out_dir).resolve()
    overrides = {"store": absolute_url(store_path) if store_path is not None else None, "seeds": seeds}
    if head_kinds:
        overrides["heads"] = list(head_kinds)
    resolved = resolve_config(config, **overrides)
    if resolved["store"] is None:
        raise ConfigError("no store given: pass STORE or set `store:` in the config")
    defaults = resolve_config(None)["splits"]
    if resolved["split_stores"] or {**resolved["splits"], "valid": defaults["valid"]} != defaults:
        raise ConfigError(
            "--folds chooses the splits of every fold itself: drop `splits:` and `split_stores:` from the config "
            "and --splits (splits.valid: null alone is allowed: no validation fold)"
        )
    store = TokenStore.open(resolved["store"], subset=resolved["subset"])
    folds = fold_splits(store.split_names)
    if len(folds) < 2:
        raise ConfigError(
            f"--folds: {store.path} has {len(folds)} fold split(s) (its splits: {_listed(store.split_names)}); "
            "cross-validation needs at least 2 splits named fold1, fold2, ... (or fold_0, ...)"
        )
    plan = fold_plan(folds, validation=resolved["splits"]["valid"] is not None)
    if plan[0]["valid"] is None and any(len(head_grid(h)) > 1 for h in resolved["heads"]):
        raise ConfigError(
            f"--folds without a validation fold ({len(folds)} folds, or splits.valid: null) cannot choose among "
            "several lr/weight decay values: give one lr and one weight decay"
        )
    done = [path for path in [out_dir / "folds.json", *(out_dir / f / "metrics.json" for f in folds)] if path.exists()]
    if done and not overwrite:
        raise ConfigError(f"{out_dir} already holds a cross-validation ({done[0].name}); choose a new --out, or pass "
                          "--overwrite to replace it")
    ledger_path = Path(ledger) if ledger is not None else out_dir.parent / "ledger.csv"
    runs = []
    for entry in plan:
        log(f"{entry['fold']}: train {split_label(entry['train'])}, valid {entry['valid'] or '-'}, "
            f"test {entry['test']}")
        splits = {role: entry[role] for role in SPLIT_ROLES}
        runs.append(run_probe(None, None, out_dir / entry["fold"], config={**resolved, "splits": splits},
                              ledger=ledger_path, overwrite=overwrite, log=log, progress=progress))
    # The config that re-runs the whole cross-validation: the first fold's, with the splits left to --folds.
    base = {**runs[0].config, "splits": {**defaults, "valid": defaults["valid"] if plan[0]["valid"] else None}}
    report = FoldsReport(out_dir, base, plan, runs, fold_summary(plan, runs), ledger_path)
    write_folds(report)
    return report


def _test_scores(members: list, test: SplitData | None, frames: bool) -> dict[tuple[int, int], np.ndarray]:
    """(id(bank), head index) -> test scores [N, C] (frames: frame scores [N, n_time, C]) of every healthy head in
    members ((seed, bank, head index)): one pass over the test split per bank, not one per head."""
    if test is None:
        return {}
    by_bank: dict[int, tuple[HeadBank, list[int]]] = {}
    for _, bank, k in members:
        if k not in bank.diverged_:
            by_bank.setdefault(id(bank), (bank, []))[1].append(k)
    found = {}
    for key, (bank, ks) in by_bank.items():
        ks = sorted(set(ks))
        values = bank.predict_frames(test, which=ks) if frames else bank.predict(test, which=ks)
        found.update({(key, k): value for k, value in zip(ks, values, strict=True)})
    return found


def _evaluate_chosen(head: dict, chosen: tuple[float, float], members: list, valid: SplitData | None,
                     test: SplitData | None, multilabel: bool, metric: str, test_scores: dict,
                     layer: int | list[int] | None = None) -> tuple[HeadResult, dict]:
    """The chosen configuration's metrics per seed (members: (seed, bank, head index)) and its test scores per
    seed (from `test_scores`, `_test_scores`); a diverged seed has NaN metrics, is marked, and is left out of the
    mean over seeds. layer: the result's layer in a run over several (a list: the layers a mixing head mixes), None
    in a run over one."""
    per_seed, per_class, scores = [], {"valid": [], "test": []}, {}
    num_parameters = 0
    for seed, bank, k in members:
        num_parameters = bank.heads_[k].num_parameters()
        entry: dict = {"seed": seed, "index": k, "bank": bank}
        if hasattr(bank.heads_[k], "layer_weights"):  # a layer-mixing head: its softmax weight per layer
            entry["layer_weights"] = [float(w) for w in bank.heads_[k].layer_weights().detach().cpu()]
        diverged = k in bank.diverged_
        if diverged:
            entry["diverged"] = True
        if valid is not None:
            valid_metrics = bank.valid_metrics_[k]
            per_class["valid"].append(valid_metrics.get("per_class_ap"))
            entry["valid"] = scalars(valid_metrics)
        if test is not None and not diverged:
            seed_scores = test_scores[(id(bank), k)]
            if np.isfinite(seed_scores).all():
                scores[seed] = seed_scores
                test_metrics = split_metrics(test.labels, seed_scores, multilabel, test.recordings)
                per_class["test"].append(test_metrics.get("per_class_ap"))
                entry["test"] = scalars(test_metrics)
            else:
                entry["diverged"] = True
        per_seed.append(entry)
    healthy = [e for e in per_seed if not e.get("diverged")]
    result = HeadResult(
        name=head["name"], kind=head["kind"], lr=chosen[0], weight_decay=chosen[1], options=dict(head["options"]),
        num_parameters=num_parameters, metric=metric,
        valid=_scalar_summary([e["valid"] for e in healthy]) if valid is not None and healthy else {},
        test=_scalar_summary([e["test"] for e in healthy]) if test is not None and healthy else {},
        per_seed=per_seed, per_class=per_class,
        status="ok" if len(healthy) == len(per_seed) else ("diverged" if not healthy else
                                                           f"diverged in {len(per_seed) - len(healthy)} seed(s)"),
        layer=layer,
    )
    return result, scores


# -- sound-event detection ------------------------------------------------------------------------------------
def _check_sed(config: dict, data: dict[str, SplitData]) -> None:
    """Refuse task sed before any training when a head gives no frame scores, a split's store keeps no strong
    labels or time steps, or the metrics' package (extra `sed`) is missing."""
    unable = [head["name"] for head in config["heads"] if not head_registry.gives_frames(head["kind"])]
    if unable:
        raise ConfigError(f"task sed: head(s) {', '.join(unable)} give no frame scores; use frame_linear or a "
                          "prototype head (proto, protofloat, protobin)")
    for role, split in data.items():
        store = split.store
        if not store.has_events or store.time_steps is None:
            missing = "keeps no sound events" if not store.has_events else "records no token time steps"
            raise ConfigError(f"task sed: the {role} store {store.path} {missing}; extract it with an events file "
                              "(events.tsv beside the manifest, or --events FILE)")
    if "test" in data:
        sed.sed_scores_eval()


def _sed_scores(test: SplitData, frame_scores: np.ndarray, settings: dict) -> tuple[dict, list[sed.Timeline]]:
    """Frame metrics and sed_scores_eval's metrics of frame scores [N, n_time, C] on the strong-labelled test rows,
    with their timelines (median-filtered as `settings` say)."""
    targets, scored = split_frames(test)
    strong = scored.any(axis=1)
    found = {key: value for key, value in sed.frame_metrics(targets, frame_scores, scored).items()}
    lines = sed.scored_timelines(test.store, test.indices[strong], frame_scores[strong], settings["median_filter"])
    found.update(sed.sed_metrics(lines, test.store.label_names, settings["threshold"]))
    return found, lines


def _evaluate_frames(result: HeadResult, members: list, test: SplitData, settings: dict,
                     test_frames: dict) -> list[dict]:
    """Add each healthy seed's sound-event metrics to `result` (its test metrics and their mean and std over seeds),
    from its frame scores in `test_frames` (`_test_scores`); returns the events it detects: one row per (seed, clip,
    event) with onset and offset in seconds."""
    names, found = test.store.label_names, []
    for entry, (seed, bank, k) in zip(result.per_seed, members, strict=True):
        if entry.get("diverged"):
            continue
        metrics_of_seed, lines = _sed_scores(test, test_frames[(id(bank), k)], settings)
        entry["test"].update(scalars(metrics_of_seed))
        found += sed.event_rows(result.key, seed, lines, names, settings["threshold"])
    healthy = [entry["test"] for entry in result.per_seed if not entry.get("diverged")]
    result.test = _scalar_summary(healthy) if healthy else {}
    return found


def _chance_frames(train: SplitData, test: SplitData, settings: dict) -> dict[str, dict]:
    """The test metrics of frame scores that know nothing of the audio (sed.chance_frame_scores), with the training
    split's per-class rate of positive steps as the `prior` score."""
    targets, scored = split_frames(train)
    prior = targets[scored].mean(axis=0) if scored.any() else np.zeros(targets.shape[-1])
    shape = split_frames(test)[0].shape
    return {name: _sed_scores(test, scores, settings)[0]
            for name, scores in sed.chance_frame_scores(shape, prior).items()}


# -- units: banks saved as soon as they are trained (resume) ------------------------------------------------
def _plan_units(config: dict) -> list[dict]:
    """The banks of a run: one per seed (data_order per_seed) or one for every seed (shared). Each unit lists its
    specs, their head names, its data seed and members [(seed, head index)]."""
    seeds = [config["seed"] + offset for offset in range(config["seeds"])]
    groups = [[seed] for seed in seeds] if config["data_order"] == "per_seed" else [seeds]
    units = []
    for group in groups:
        specs, names, layers = [], [], []
        for seed in group:
            seed_specs, seed_names, seed_layers = _layer_specs(config, *_bank_specs(config, seed))
            specs += seed_specs
            names += seed_names
            layers += seed_layers
        name = f"seed{group[0]}" if len(group) == 1 else f"seeds{group[0]}-{group[-1]}"
        units.append({"name": name, "specs": specs, "names": names, "layers": layers, "data_seed": group[0],
                      "members": [(spec.seed, k) for k, spec in enumerate(specs)]})
    return units


def _layer_specs(config: dict, specs: list[HeadSpec], names: list[str]) -> tuple[list[HeadSpec], list[str], list]:
    """Over several layers (config layer a list): every head on every layer, a layer-mixing head once over them all;
    with each spec's layer key (its layer, or a tuple of the layers it mixes). Over one layer: the specs as they
    are, keys None."""
    layers = config["layer"]
    if not isinstance(layers, list):
        return specs, names, [None] * len(specs)
    out_specs, out_names, keys = [], [], []
    for spec, name in zip(specs, names, strict=True):
        if mixes_layers(spec.kind):
            out_specs.append(spec)
            out_names.append(name)
            keys.append(tuple(spec.options.get("layers") or layers))
            continue
        for layer in layers:
            out_specs.append(dataclasses.replace(spec, layer=layer))
            out_names.append(name)
            keys.append(layer)
    return out_specs, out_names, keys


def _run_fingerprint(config: dict, stores: dict[str, TokenStore]) -> str:
    """What a saved unit must match to be reused: the resolved config and the stores' fingerprints."""
    settings = {key: value for key, value in config.items() if key != "predictions"}
    views = {role: store.describe_view() for role, store in stores.items()}
    text = json.dumps({"config": settings, "stores": views}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _progress(total: int, enabled: bool, metric: str):
    """A progress bar over epochs of every bank (heads x seeds share it) on a terminal, or a silent stand-in."""
    return tqdm(total=total, unit="epoch", desc="probe", disable=None if enabled else True, dynamic_ncols=True,
                file=sys.stderr,
                postfix={f"best valid {metric}": "-"})


def _show(bar, bank: HeadBank, metric: str) -> None:
    values = [m.get(metric) for m in bank.valid_metrics_ if isinstance(m.get(metric), float) and
              np.isfinite(m.get(metric))]
    best = getattr(bar, "best_", None)
    if values:
        best = max(values) if best is None else max(best, max(values))
        bar.best_ = best
    if best is not None:
        bar.set_postfix({f"best valid {metric}": f"{best:.4f}", "diverged": len(bank.diverged_)}, refresh=False)
    bar.update(1)


