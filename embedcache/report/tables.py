"""The numbers a report shows: head tables from a ledger (one per store fingerprint and subset, so no table mixes
data), per-class AP of a run's heads with its spread over seeds, scores per layer of a run over several layers, and
sweep trials."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedcache.errors import ConfigError, EmbedcacheError
from embedcache.results import split_label
from embedcache.store import TokenStore

METRIC_NAMES = {"map": "mAP", "accuracy": "accuracy"}


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a CSV file as dicts of strings; a file that is not UTF-8 CSV is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); is it the CSV embedcache wrote?") from None
    except csv.Error as error:
        raise ConfigError(f"{path}: not readable as CSV ({error}); is it the CSV embedcache wrote?") from None


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def dataset_name(store_path: str, cache: dict[str, str] | None = None) -> str:
    """A store's dataset: the folder of the manifest it was extracted from, else the store's own name."""
    cache = cache if cache is not None else {}
    if store_path not in cache:
        name = Path(store_path).name.removesuffix(".zarr")
        try:
            manifest = (TokenStore.open(store_path).provenance.get("manifest") or {}).get("path")
            if manifest:
                name = Path(manifest).parent.name or name
        except (EmbedcacheError, OSError):
            pass
        cache[store_path] = name
    return cache[store_path]


@dataclass(frozen=True)
class TableScope:
    """What one head table's numbers share: one store (path and fingerprint), one subset view, one encoder and metric.

    fingerprint is None when the run directory (metrics.json) is gone: the store path stands in and the subset is
    unknown.
    """

    store: str
    fingerprint: str | None
    subset: str | None
    dataset: str
    encoder: str
    metric: str

    def describe(self) -> str:
        """One line naming the scope: dataset, encoder, store, fingerprint and subset."""
        if self.fingerprint is None:
            view = "fingerprint and subset unknown (run directory gone)"
        else:
            view = f"fingerprint {self.fingerprint[:12] or '(none)'}, subset: {self.subset or 'whole store'}"
        return f"{self.dataset} · {self.encoder} · {self.store} ({view})"


@dataclass
class HeadCell:
    """One head's result in a scope: mean, std and count over seeds, and the split they come from."""

    mean: float
    std: float
    seeds: int
    split: str  # "test", or "valid" for a run without a test split
    run_dir: str
    left_out: int = 0  # seeds the ledger marks as not ok (diverged), not in the mean


FALLBACK_MARK = "†"
FALLBACK_NOTE = f"{FALLBACK_MARK} validation number: that run had no test split (not comparable with test numbers)"


@dataclass
class HeadTable:
    """Rows are heads (with the layer when a scope has several), cells their latest run's metric over seeds."""

    scope: TableScope
    rows: list[str] = field(default_factory=list)
    cells: dict[str, HeadCell] = field(default_factory=dict)

    @property
    def metric_name(self) -> str:
        return METRIC_NAMES.get(self.scope.metric, self.scope.metric)

    def cell_text(self, row: str) -> str:
        """'mean ± std' in percent; a validation fallback carries the mark; '-' for a missing cell."""
        cell = self.cells.get(row)
        if cell is None:
            return "-"
        text = f"{100 * cell.mean:.2f} ± {100 * cell.std:.2f}"
        return text if cell.split == "test" else f"{text} {FALLBACK_MARK}valid"

    def seeds_text(self, row: str) -> str:
        cell = self.cells[row]
        return f"{cell.seeds} ({cell.left_out} left out: not ok)" if cell.left_out else str(cell.seeds)

    def split_text(self, row: str) -> str:
        cell = self.cells[row]
        return "test" if cell.split == "test" else f"valid {FALLBACK_MARK} (no test split)"

    def best(self) -> str | None:
        """The row with the highest test mean; validation fallbacks never compete (None when no row is tested)."""
        entries = [(self.cells[row].mean, row) for row in self.rows if self.cells[row].split == "test"]
        return max(entries)[1] if entries else None

    @property
    def has_fallback(self) -> bool:
        return any(cell.split != "test" for cell in self.cells.values())

    def to_markdown(self) -> str:
        """The scope as a heading line, then the table (best in bold) and the fallback note when needed."""
        lines = [f"### {self.scope.describe()}", "",
                 f"| head | seeds | {self.metric_name} (%) | split |", "|---|---|---|---|"]
        best = self.best()
        for row in self.rows:
            text = self.cell_text(row)
            lines.append(f"| {row} | {self.seeds_text(row)} | {f'**{text}**' if row == best else text} | "
                         f"{self.split_text(row)} |")
        if self.has_fallback:
            lines += ["", FALLBACK_NOTE]
        return "\n".join(lines)


def run_view(run_dir: str | Path, cache: dict[str, dict | None] | None = None) -> dict | None:
    """The store view a run recorded in its metrics.json (store, fingerprint, subset), or None when unreadable."""
    cache = cache if cache is not None else {}
    key = str(run_dir)
    if key not in cache:
        try:
            view = json.loads((Path(run_dir) / "metrics.json").read_text()).get("view")
        except (OSError, ValueError, AttributeError):
            view = None
        cache[key] = view if isinstance(view, dict) and view.get("fingerprint") is not None else None
    return cache[key]


def subset_text(subset: dict | None) -> str | None:
    """A short, stable description of a subset view: 'classes=a,b; splits=train,test; clip_ids=120 ids'."""
    if not subset:
        return None
    parts = []
    for key in sorted(subset):
        values = [str(v) for v in subset[key]]
        shown = f"{len(values)} ids" if key == "clip_ids" or len(values) > 8 else ",".join(values)
        parts.append(f"{key}={shown}")
    return "; ".join(parts)


def _subset_key(subset: dict | None) -> str | None:
    return json.dumps(subset, sort_keys=True) if subset else None


def head_tables(ledger_rows: list[dict], store_names: dict[str, str] | None = None,
                views: dict[str, dict | None] | None = None) -> list[HeadTable]:
    """One table per scope (store path and fingerprint, subset, encoder, metric) from ledger rows: per head the
    latest tested run's test metric, mean ± std over seeds.

    A head that no run tested (no test split) shows its latest validation number, marked as such. A scope probed at
    several layers has a row per head and layer ("name L<layer>"). views: run_dir -> the view in its metrics.json
    (read when absent).
    """
    names = store_names if store_names is not None else {}
    views = views if views is not None else {}
    scoped: dict[tuple, tuple[TableScope, list[dict]]] = {}
    for row in ledger_rows:
        view = run_view(row["run_dir"], views)
        subset = view.get("subset") if view else None
        # The path as well as the fingerprint: stores written from arrays share one fingerprint whatever their data.
        identity = (row["store"], view["fingerprint"] if view else None, _subset_key(subset) if view else "?",
                    row["encoder"], row["metric"])
        if identity not in scoped:
            scope = TableScope(store=row["store"], fingerprint=view["fingerprint"] if view else None,
                               subset=subset_text(subset), dataset=dataset_name(row["store"], names),
                               encoder=row["encoder"], metric=row["metric"])
            scoped[identity] = (scope, [])
        scoped[identity][1].append(row)
    tables = [_scope_table(scope, rows) for scope, rows in scoped.values()]
    tables = [table for table in tables if table.rows]
    return sorted(tables, key=lambda t: (t.scope.dataset, t.scope.encoder, t.scope.store, t.scope.subset or ""))


def _scope_table(scope: TableScope, ledger_rows: list[dict]) -> HeadTable:
    several_layers = len({row["layer"] for row in ledger_rows}) > 1
    runs: dict[str, dict[tuple[str, str], list[dict]]] = {}  # head -> (timestamp, run_dir) -> rows
    for row in ledger_rows:
        name = f"{row['head']} L{row['layer']}" if several_layers else row["head"]
        runs.setdefault(name, {}).setdefault((row["timestamp"], row["run_dir"]), []).append(row)
    table = HeadTable(scope)
    for name, by_run in runs.items():
        # An empty test field means the run had no test split. The latest run with test numbers is the cell; only a
        # head never tested falls back to its latest validation number, marked.
        tested = [run for run, members in by_run.items() if all(m["test"].strip() for m in members)]
        split = "test" if tested else "valid"
        members = by_run[max(tested or by_run)]
        healthy = [m for m in members if (m.get("status") or "ok") == "ok"]
        values = [v for v in (_number(m[split]) for m in healthy) if v is not None]
        if not values:
            continue
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        table.cells[name] = HeadCell(float(np.mean(values)), std, len(values), split, members[0]["run_dir"],
                                     len(members) - len(healthy))
    # Test numbers first, best first; validation fallbacks after them.
    table.rows = sorted(table.cells, key=lambda r: (table.cells[r].split != "test", -table.cells[r].mean, r))
    return table


@dataclass
class PerClassAP:
    """Per-class AP of one head on one split: labels, mean AP and its std over seeds (NaN where a class has no
    positive), and how many seeds."""

    head: str
    run: str
    split: str
    labels: list[str]
    ap: np.ndarray
    std: np.ndarray | None = None
    seeds: int = 1
    test_split: bool = True  # False: the run had no test split and `split` is its validation split

    def __post_init__(self) -> None:
        if self.std is None:
            self.std = np.zeros_like(self.ap)

    @property
    def mean(self) -> float:
        """mAP over the classes with a positive (NaN when none has one)."""
        finite = self.ap[np.isfinite(self.ap)]
        return float(finite.mean()) if finite.size else math.nan


def per_class_ap(run_dir: str | Path, heads: list[str] | None = None) -> list[PerClassAP]:
    """Per-class AP of a run's heads (all, or the named ones in that order) on test, else validation, with the std
    over seeds probe wrote beside it (ap_std) and the seed count from metrics.json."""
    run_dir = Path(run_dir)
    rows = read_csv(run_dir / "per_class_ap.csv")
    splits = list(dict.fromkeys(row["split"] for row in rows))
    config_splits = _config_splits(run_dir)
    test, valid = (split_label(config_splits[r]) if config_splits.get(r) else None for r in ("test", "valid"))
    split = next((s for s in (test, valid) if s in splits), splits[0] if splits else None)
    available = list(dict.fromkeys(row["head"] for row in rows if row["split"] == split))
    chosen = heads or available
    missing = [h for h in chosen if h not in available]
    if missing:
        raise ConfigError(f"{run_dir}: no per-class AP for head(s) {missing}; this run has {available}")
    seeds = _seed_counts(run_dir)
    result = []
    for head in chosen:
        mine = [row for row in rows if row["head"] == head and row["split"] == split]
        ap = np.array([_nan_number(row["ap"]) for row in mine])
        std = np.array([_nan_number(row.get("ap_std")) for row in mine])
        result.append(PerClassAP(head, run_dir.name, split, [row["label"] for row in mine], ap,
                                 np.where(np.isnan(ap), np.nan, np.nan_to_num(std)), seeds.get(head, 1),
                                 test_split=split == test))
    return result


@dataclass
class LayerCurve:
    """One head of a run over several layers: its score per layer (mean and std over seeds), or for a layer-mixing
    head (weights set) one score over the layers it mixes and its softmax weight per layer (mean, std over seeds)."""

    head: str
    kind: str
    layers: list[int]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray | None = None
    weights_std: np.ndarray | None = None


@dataclass
class LayerScores:
    """A run over several layers: each head's score per layer (`metric` on `split`) and its layer-mixing heads."""

    run: str
    metric: str
    split: str  # "test", or "valid" for a run without a test split
    curves: list[LayerCurve]


def layer_scores(run_dir: str | Path) -> LayerScores | None:
    """Scores per layer of a run over several layers (its metrics.json), mAP where the run has it, else its selection
    metric; None for a run over one layer."""
    try:
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("layer"), list):
        return None
    entries = [entry for entry in metrics.get("heads") or [] if isinstance(entry, dict) and "layer" in entry]
    if not entries:
        return None
    split = "test" if any(entry.get("test") for entry in entries) else "valid"
    metric = "map" if any("map" in (entry.get(split) or {}) for entry in entries) else metrics.get(
        "selection_metric", "map")

    def score(entry: dict) -> tuple[float, float]:
        values = entry.get(split) or {}
        return _nan_number(values.get(metric)), _nan_number(values.get(f"{metric}_std", 0.0))

    curves: dict[str, LayerCurve] = {}
    for entry in entries:
        name, layer = str(entry.get("head")), entry["layer"]
        mean, std = score(entry)
        if isinstance(layer, list):
            weights = np.array([e["layer_weights"] for e in entry.get("per_seed") or [] if "layer_weights" in e],
                               dtype=np.float64)
            ok = weights.ndim == 2 and weights.shape[1] == len(layer)
            curves[name] = LayerCurve(
                name, str(entry.get("kind")), [int(v) for v in layer], np.array([mean]), np.array([std]),
                weights.mean(axis=0) if ok else None,
                (weights.std(axis=0, ddof=1) if len(weights) > 1 else np.zeros(len(layer))) if ok else None)
            continue
        curve = curves.setdefault(name, LayerCurve(name, str(entry.get("kind")), [], np.zeros(0), np.zeros(0)))
        curve.layers.append(int(layer))
        curve.mean, curve.std = np.append(curve.mean, mean), np.append(curve.std, std)
    for curve in curves.values():
        if curve.weights is None and len(curve.layers) > 1:
            order = np.argsort(curve.layers)
            curve.layers = [curve.layers[i] for i in order]
            curve.mean, curve.std = curve.mean[order], curve.std[order]
    return LayerScores(Path(run_dir).name, metric, split, list(curves.values()))


def _nan_number(text) -> float:
    value = _number(text)
    return np.nan if value is None else value


def _seed_counts(run_dir: Path) -> dict[str, int]:
    """Head name -> number of seeds, from the run's metrics.json."""
    try:
        heads = json.loads((run_dir / "metrics.json").read_text()).get("heads") or []
        # A head on one layer of several is named by its key (<name>_L<layer>) in per_class_ap.csv.
        return {h.get("key", h["head"]): len(h.get("per_seed") or []) or 1 for h in heads}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


def _config_splits(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    return (yaml.safe_load(path.read_text()) or {}).get("splits") or {}


@dataclass
class SweepTrials:
    """Trials of one sweep: lr, weight decay, validation metric (NaN if none), state ("complete", "pruned", ...)."""

    source: str
    metric: str
    lr: np.ndarray
    weight_decay: np.ndarray
    value: np.ndarray
    state: list[str]
    head: list[str]


def sweep_trials(path: str | Path, log: Callable[[str], None] | None = None) -> SweepTrials:
    """Trials from an Optuna sweep's trials.csv (states kept) or a probe run's grid sweep.csv (mean over seeds).

    Rows cut short, or whose lr or weight_decay is neither empty (a trial that never sampled) nor a finite number
    (hand-edited), are left out, with one `log` line.
    """
    path = Path(path)
    rows = read_csv(path)
    if not rows:
        raise ConfigError(f"{path}: no trials in it")
    metric_column = next((c for c in rows[0] if c and c.startswith("valid_")), None)
    if metric_column is None:
        raise ConfigError(f"{path}: no valid_<metric> column; expected a sweep's trials.csv or a run's sweep.csv")
    optuna = "state" in rows[0]
    missing = [c for c in ("lr", "weight_decay", *(() if optuna else ("head",))) if c not in rows[0]]
    if missing:
        raise ConfigError(f"{path}: no column(s) {missing}; expected a sweep's trials.csv or a run's sweep.csv")
    usable = [i for i, r in enumerate(rows) if None not in r and all(value is not None for value in r.values())
              and all(r[c] == "" or _number(r[c]) is not None for c in ("lr", "weight_decay"))]
    if len(usable) < len(rows):
        first = min(set(range(len(rows))) - set(usable))
        (log or (lambda line: None))(f"{path}: {len(rows) - len(usable)} row(s) cut short or with an lr or "
                                     f"weight_decay that is not a number left out (first: line {first + 2})")
        rows = [rows[i] for i in usable]
    if not rows:
        raise ConfigError(f"{path}: no usable trial in it (each row needs a numeric or empty lr and weight_decay)")
    metric = metric_column.removeprefix("valid_")
    if optuna:
        last = f"last_valid_{metric}"
        name = _sweep_head_name(path.parent / "sweep.yaml")
        # A pruned trial has no final value: show where it stood when it was stopped.
        values = [_number(r[metric_column]) if r["state"] == "complete" else _number(r.get(last)) for r in rows]
        return SweepTrials(str(path), metric, np.array([float(r["lr"] or "nan") for r in rows]),
                           np.array([float(r["weight_decay"] or "nan") for r in rows]),
                           np.array([np.nan if v is None else v for v in values]), [r["state"] for r in rows],
                           [name] * len(rows))
    grouped: dict[tuple, list[float]] = {}
    for row in rows:
        value = _number(row[metric_column])
        grouped.setdefault((row["head"], float(row["lr"] or "nan"), float(row["weight_decay"] or "nan")), []).append(
            np.nan if value is None else value)
    keys = list(grouped)
    return SweepTrials(str(path), metric, np.array([k[1] for k in keys]), np.array([k[2] for k in keys]),
                       np.array([np.nanmean(grouped[k]) if not np.isnan(grouped[k]).all() else np.nan for k in keys]),
                       ["complete"] * len(keys), [k[0] for k in keys])


def _sweep_head_name(path: Path) -> str:
    """The swept head's name from a sweep's sweep.yaml, or "trials"."""
    import yaml

    if not path.is_file():
        return "trials"
    head = (yaml.safe_load(path.read_text()) or {}).get("head") or {}
    return f"{head.get('name', 'trials')} (Optuna trials)"
