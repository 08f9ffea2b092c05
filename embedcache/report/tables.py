"""The numbers a report shows: the head-comparison table from a ledger (the paper's Table 2 shape: rows encoder x
head, columns datasets), per-class AP of a run's heads, and sweep trials."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedcache.errors import ConfigError, EmbedcacheError
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


@dataclass
class HeadTable:
    """Rows (encoder, head), columns datasets, cells (mean, std, seeds) of the test metric; metrics per dataset."""

    rows: list[tuple[str, str]]
    datasets: list[str]
    metrics: dict[str, str]
    cells: dict[tuple[tuple[str, str], str], tuple[float, float, int]] = field(default_factory=dict)

    def cell_text(self, row: tuple[str, str], dataset: str) -> str:
        """'mean ± std' in percent, or '-' for a missing cell."""
        if (row, dataset) not in self.cells:
            return "-"
        mean, std, _ = self.cells[row, dataset]
        return f"{100 * mean:.2f} ± {100 * std:.2f}"

    def best_in_column(self, dataset: str) -> tuple[str, str] | None:
        """The row with the highest mean in a dataset column."""
        entries = [(self.cells[row, dataset][0], row) for row in self.rows if (row, dataset) in self.cells]
        return max(entries)[1] if entries else None

    def to_markdown(self) -> str:
        """The table as GitHub markdown, best per column in bold."""
        header = ["encoder", "head"] + [f"{d} ({METRIC_NAMES.get(self.metrics[d], self.metrics[d])})"
                                        for d in self.datasets]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        best = {d: self.best_in_column(d) for d in self.datasets}
        for row in self.rows:
            cells = [f"**{self.cell_text(row, d)}**" if best[d] == row else self.cell_text(row, d)
                     for d in self.datasets]
            lines.append("| " + " | ".join([*row, *cells]) + " |")
        return "\n".join(lines)


def head_table(ledger_rows: list[dict], store_names: dict[str, str] | None = None) -> HeadTable:
    """Table 2 from ledger rows: per (encoder, head, dataset) the latest run's test metric, mean ± std over seeds.

    Test falls back to validation for runs without a test split. An encoder probed at several layers on one dataset
    appears once per layer ("name L<layer>").
    """
    names = store_names if store_names is not None else {}
    layers: dict[tuple[str, str], set] = {}
    for row in ledger_rows:
        layers.setdefault((row["encoder"], dataset_name(row["store"], names)), set()).add(row["layer"])
    latest: dict[tuple, str] = {}
    groups: dict[tuple, list[dict]] = {}
    for row in ledger_rows:
        dataset = dataset_name(row["store"], names)
        encoder = row["encoder"]
        if len(layers[encoder, dataset]) > 1:
            encoder = f"{encoder} L{row['layer']}"
        key = (encoder, row["head"], dataset)
        run = (row["timestamp"], row["run_dir"])
        if key not in latest or run > latest[key]:
            latest[key] = run
            groups[key] = []
        if run == latest[key]:
            groups[key].append(row)
    table = HeadTable(rows=[], datasets=[], metrics={})
    for (encoder, head, dataset), members in groups.items():
        values = [v for v in (_number(m["test"]) if _number(m["test"]) is not None else _number(m["valid"])
                              for m in members) if v is not None]
        if not values:
            continue
        if (encoder, head) not in table.rows:
            table.rows.append((encoder, head))
        if dataset not in table.datasets:
            table.datasets.append(dataset)
        table.metrics[dataset] = members[0]["metric"]
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        table.cells[(encoder, head), dataset] = (float(np.mean(values)), std, len(values))
    table.rows.sort()
    table.datasets.sort()
    return table


@dataclass
class PerClassAP:
    """Per-class AP of one head on one split: labels and APs (NaN where a class has no positive)."""

    head: str
    run: str
    split: str
    labels: list[str]
    ap: np.ndarray


def per_class_ap(run_dir: str | Path, heads: list[str] | None = None) -> list[PerClassAP]:
    """Per-class AP of a run's heads (all, or the named ones in that order) on test, else validation."""
    run_dir = Path(run_dir)
    rows = read_csv(run_dir / "per_class_ap.csv")
    splits = list(dict.fromkeys(row["split"] for row in rows))
    config_splits = _config_splits(run_dir)
    split = next((s for s in (config_splits.get("test"), config_splits.get("valid")) if s in splits),
                 splits[0] if splits else None)
    available = list(dict.fromkeys(row["head"] for row in rows if row["split"] == split))
    chosen = heads or available
    missing = [h for h in chosen if h not in available]
    if missing:
        raise ConfigError(f"{run_dir}: no per-class AP for head(s) {missing}; this run has {available}")
    result = []
    for head in chosen:
        mine = [row for row in rows if row["head"] == head and row["split"] == split]
        ap = np.array([_number(row["ap"]) if _number(row["ap"]) is not None else np.nan for row in mine])
        result.append(PerClassAP(head, run_dir.name, split, [row["label"] for row in mine], ap))
    return result


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
