"""Probe results and where they touch disk: the result types, the run directory (config, metrics, curves, weights,
predictions), the saved units a run resumes from, the results ledger, and the comparison tables.

`probe` computes; this module writes and reads. Nothing here trains.
"""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import io
import json
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from embedcache.errors import ConfigError, StoreError
from embedcache.loader import SplitData
from embedcache.sed import METRICS
from embedcache.store import TokenStore
from embedcache.train import HeadBank


@dataclass
class Predictions:
    """Scores [N, C] per (head, seed) for N clips, their ids (and recordings for windows), and true labels if known."""

    clip_ids: np.ndarray
    label_names: list[str]
    scores: dict[tuple[str, int], np.ndarray]
    labels: np.ndarray | None = None
    recording_ids: np.ndarray | None = None
    # A sound-event run's detections: one row per (head, seed, clip, event), EVENT_PREDICTION_COLUMNS.
    events: list[dict] | None = None


def write_predictions(path: str | Path, predictions: Predictions) -> Path:
    """One CSV row per (head, seed, clip): true labels (when known) and each class's score, float32 exact (9 digits)."""
    path = Path(path)
    names, p = predictions.label_names, predictions
    columns = ["head", "seed", "clip_id", *(["recording_id"] if p.recording_ids is not None else []),
               *([f"true:{name}" for name in names] if p.labels is not None else []),
               *(f"score:{name}" for name in names)]
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for (head, seed), values in sorted(p.scores.items()):
            for row, clip_id in enumerate(p.clip_ids):
                writer.writerow([
                    head, seed, clip_id, *([p.recording_ids[row]] if p.recording_ids is not None else []),
                    *(p.labels[row].tolist() if p.labels is not None else []), *(f"{v:.9g}" for v in values[row]),
                ])
    partial.replace(path)
    return path


def confusion_rows(predictions: Predictions) -> list[dict]:
    """Per head, true x predicted counts (argmax) summed over seeds, for single-label data."""
    names, rows = predictions.label_names, []
    for head in dict.fromkeys(head for head, _ in predictions.scores):
        counts = np.zeros((len(names), len(names)), np.int64)
        for (name, _), values in predictions.scores.items():
            if name == head:
                np.add.at(counts, (predictions.labels.argmax(axis=1), values.argmax(axis=1)), 1)
        rows += [{"head": head, "true": names[t], **{f"predicted:{p}": int(counts[t, i]) for i, p in enumerate(names)}}
                 for t in range(len(names))]
    return rows


UNITS_DIR = "units"


LEDGER_COLUMNS = [
    "timestamp", "run_dir", "store", "encoder", "checkpoint_sha256", "layer", "task", "head", "kind", "options",
    "lr", "weight_decay", "seed", "epochs", "batch_size", "num_parameters", "metric", "valid", "test",
    "test_map", "test_micro_ap", "test_macro_auroc", "test_accuracy", "status",
]


# Columns added after the first ledgers were written: an older ledger lacks them (read as empty, added on append).
LEDGER_ADDED = ("status",)


# -- results --------------------------------------------------------------------------------------------
@dataclass
class HeadResult:
    """The chosen configuration of one named head, its metrics per split (mean and std over seeds) and per seed."""

    name: str
    kind: str
    lr: float
    weight_decay: float
    options: dict
    num_parameters: int
    metric: str
    valid: dict
    test: dict
    per_seed: list[dict] = field(default_factory=list)
    per_class: dict = field(default_factory=dict)
    # "ok", "diverged" (every seed) or "diverged in N seed(s)" (those seeds are left out of the means).
    status: str = "ok"
    # In a run over several layers: the layer this head read, or the list a layer-mixing head mixed; None in a run
    # over one layer (the run's `layer`).
    layer: int | list[int] | None = None

    @property
    def key(self) -> str:
        """How files name this result: the head's name, with _L<layer> for one of several layers."""
        return head_key(self.name, self.layer)


def head_key(name: str, layer: int | Sequence[int] | None) -> str:
    """A head's name in file names, predictions and tables: `name`, or `name_L<layer>` for a head that read one layer
    of a run over several (a layer-mixing head keeps its name)."""
    return name if layer is None or not isinstance(layer, int) else f"{name}_L{layer}"


def layers_label(layer: int | Sequence[int]) -> str:
    """A layer, or the layers a mixing head mixes as ranges: 6 -> '6', [0, 1, 2, 3, 6] -> '0-3+6'."""
    if isinstance(layer, int):
        return str(layer)
    values, runs = sorted(int(v) for v in layer), []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return "+".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


LAYERS_LABEL = re.compile(r"\d+(-\d+)?(\+\d+(-\d+)?)*")


@dataclass
class ProbeReport:
    """What a probe run produced; `results` holds one HeadResult per named head."""

    run_dir: Path
    config: dict
    results: list[HeadResult]
    data_paths: dict
    sweep: list[dict]
    ledger: Path | None
    # How the roles were matched to the store's splits (an alias in place of a missing default name, ...).
    split_notes: list[str] = field(default_factory=list)


@dataclass
class FoldsReport:
    """A cross-validation: one probe run per fold (`runs`, in `plan` order) and, per head, `summary` over folds."""

    run_dir: Path
    config: dict
    plan: list[dict]
    runs: list[ProbeReport]
    summary: list[dict]
    ledger: Path


# -- split roles ----------------------------------------------------------------------------------------
def split_names_of(value: str | Sequence[str] | None) -> list[str]:
    """A role's split names as a list ([] for a null role)."""
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def split_label(value: str | Sequence[str] | None) -> str:
    """How a role's splits are named in tables and files: 'dev', 'fold1+fold2', or '' for none."""
    return "+".join(split_names_of(value))


def load_units(out_dir: Path, fingerprint: str, overwrite: bool) -> dict[str, tuple[dict, dict]]:
    """The finished units of an interrupted run with the same settings (name -> snapshot); none with overwrite."""
    folder = out_dir / UNITS_DIR
    if not folder.is_dir():
        return {}
    if overwrite:
        shutil.rmtree(folder)
        return {}
    found = {}
    for state_path in sorted(folder.glob("*.json")):
        try:
            state = json.loads(state_path.read_text())
            tensors = load_file(str(state_path.with_suffix(".safetensors")))
        except (OSError, ValueError, json.JSONDecodeError, SafetensorError) as error:
            raise ConfigError(f"{state_path}: a saved unit of an interrupted run cannot be read ({error}); pass "
                              "--overwrite to start the run again") from None
        if state.get("fingerprint") != fingerprint:
            raise ConfigError(f"{out_dir} holds an interrupted run made with other settings or another store "
                              f"({state_path.name}); resume with the same command, or pass --overwrite to start over")
        found[state_path.stem] = (tensors, state["bank"])
    return found


def save_unit(out_dir: Path, name: str, fingerprint: str, bank: HeadBank) -> None:
    """Write a trained bank atomically (weights, then the JSON that marks it done)."""
    folder = out_dir / UNITS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tensors, state = bank.snapshot()
    save_file(tensors, str(folder / f"{name}.safetensors"))
    partial = folder / f"{name}.json.partial"
    partial.write_text(json.dumps({"fingerprint": fingerprint, "bank": state}))
    partial.replace(folder / f"{name}.json")


def scalars(values: dict) -> dict:
    # Counts (n_classes_scored, ...) stay ints; metric values become plain floats.
    return {
        key: int(value) if isinstance(value, (int, np.integer)) else float(value)
        for key, value in values.items()
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    }


# -- run directory ----------------------------------------------------------------------------------------
def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_run(report: ProbeReport, bank_list: list, store: TokenStore) -> None:
    run_dir = report.run_dir
    (run_dir / "weights").mkdir(parents=True, exist_ok=True)
    for stale in (run_dir / "weights").glob("*.safetensors"):  # an overwritten run must not keep old heads
        stale.unlink()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(report.config, sort_keys=False))
    metrics = {
        "store": report.config["store"],
        "layer": report.config["layer"],
        "task": report.config["task"],
        "selection_metric": report.results[0].metric,
        "splits": report.config["splits"],
        "split_notes": report.split_notes,
        "data_paths": report.data_paths,
        "view": store.describe_view(),
        "label_names": store.label_names,
        "std": "sample standard deviation over seeds (ddof=1)",
        "heads": [
            {"head": r.name, **({} if r.layer is None else {"layer": r.layer, "key": r.key}), "kind": r.kind,
             "lr": r.lr, "weight_decay": r.weight_decay, "options": r.options,
             "num_parameters": r.num_parameters, "status": r.status, "valid": r.valid, "test": r.test,
             "per_seed": [{key: value for key, value in e.items() if key not in ("index", "bank")}
                          for e in r.per_seed]}
            for r in report.results
        ],
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_csv(run_dir / "per_class_ap.csv", _per_class_rows(report, store))
    if isinstance(report.config["layer"], list):
        write_csv(run_dir / "layers.csv", layer_rows(report))
    write_csv(run_dir / "sweep.csv", report.sweep)
    curves = [{"bank_seed": unit["data_seed"], **row} for unit, bank in bank_list for row in bank.curves_]
    write_csv(run_dir / "curves.csv", curves)
    for result in report.results:
        for entry in result.per_seed:
            _save_head(run_dir / "weights", result, entry["seed"], entry["bank"].heads_[entry["index"]])


def layer_rows(report: ProbeReport) -> list[dict]:
    """layers.csv of a run over several layers: per head and layer its chosen configuration's validation and test
    metrics (mean and std over seeds); then per layer-mixing head and layer its softmax weight (mean over seeds)."""
    metric = report.results[0].metric
    rows = []
    for r in report.results:
        rows.append({
            "head": r.name, "kind": r.kind, "layer": layers_label(r.layer if r.layer is not None else
                                                                  report.config["layer"]),
            "lr": r.lr, "weight_decay": r.weight_decay, "seeds": len(r.per_seed), "status": r.status,
            f"valid_{metric}": r.valid.get(metric, ""), f"valid_{metric}_std": r.valid.get(f"{metric}_std", ""),
            f"test_{metric}": r.test.get(metric, ""), f"test_{metric}_std": r.test.get(f"{metric}_std", ""),
            "test_map": r.test.get("map", ""), "test_map_std": r.test.get("map_std", ""), "weight": "",
        })
    for r in report.results:
        weights = [e["layer_weights"] for e in r.per_seed if "layer_weights" in e]
        layers = r.layer if isinstance(r.layer, list) else None
        if not weights or layers is None or len(weights[0]) != len(layers):
            continue
        mean = np.mean(np.asarray(weights, dtype=np.float64), axis=0)
        rows += [{"head": r.name, "kind": r.kind, "layer": layer, "seeds": len(weights), "weight": float(w)}
                 for layer, w in zip(layers, mean, strict=True)]
    return rows


SED_COLUMNS = ("frame_map", *METRICS)
EVENT_PREDICTION_COLUMNS = ["head", "seed", "clip_id", "onset", "offset", "label", "score"]


def sed_rows(results: Sequence[HeadResult], chance: dict[str, dict]) -> list[dict]:
    """sed.csv of a sound-event detection run: per head its chosen configuration's test metrics (mean and std over
    seeds), then one row per chance baseline (frame scores that know nothing of the audio)."""
    rows = [{"head": r.key, "kind": r.kind, "lr": r.lr, "weight_decay": r.weight_decay, "seeds": len(r.per_seed),
             **{key: r.test.get(key, "") for key in SED_COLUMNS},
             **{f"{key}_std": r.test.get(f"{key}_std", "") for key in SED_COLUMNS}} for r in results]
    return rows + [{"head": f"chance:{name}", "kind": "chance", **{key: found.get(key, "") for key in SED_COLUMNS}}
                   for name, found in chance.items()]


def write_sed(run_dir: Path, rows: list[dict], detections: list[dict]) -> None:
    """sed.csv (`sed_rows`) and event_predictions.csv: every detected test event (head, seed, clip_id, onset,
    offset in seconds, label, score)."""
    columns = ["head", "kind", "lr", "weight_decay", "seeds", *SED_COLUMNS, *(f"{key}_std" for key in SED_COLUMNS)]
    write_csv(run_dir / "sed.csv", rows, columns)
    write_csv(run_dir / "event_predictions.csv", detections, EVENT_PREDICTION_COLUMNS)


def write_test_predictions(run_dir: Path, test: SplitData, scores: dict, multilabel: bool) -> None:
    """predictions.csv: every test clip's scores per head and seed; confusion.csv for single-label data."""
    store = test.store
    predictions = Predictions(
        clip_ids=store.clip_ids[test.indices], label_names=list(store.label_names), scores=scores, labels=test.labels,
        recording_ids=store.recording_ids[test.indices] if store.is_windowed else None,
    )
    write_predictions(run_dir / "predictions.csv", predictions)
    if not multilabel:
        write_csv(run_dir / "confusion.csv", confusion_rows(predictions))


def write_folds(report: FoldsReport) -> None:
    run_dir = report.run_dir
    (run_dir / "config.yaml").write_text(yaml.safe_dump(report.config, sort_keys=False))
    summary = {
        "store": report.config["store"],
        "layer": report.config["layer"],
        "task": report.config["task"],
        "selection_metric": report.runs[0].results[0].metric,
        "protocol": "per fold k: test on fold k, choose lr/wd on the next fold (cyclically), train on the others"
        if report.plan[0]["valid"] else "per fold k: test on fold k, train on the others (no validation fold)",
        "std": "sample standard deviation over folds (ddof=1) of each fold's test metric (its mean over seeds)",
        "plan": report.plan,
        "heads": report.summary,
    }
    (run_dir / "folds.json").write_text(json.dumps(summary, indent=2))
    write_csv(run_dir / "folds.csv", fold_rows(report))


def fold_rows(report: FoldsReport) -> list[dict]:
    """folds.csv: per head one row per fold, then a 'mean' and a 'std' row over folds."""
    rows = []
    for head in report.summary:
        prefix = {"head": head["head"], "kind": head["kind"], "metric": head["metric"]}
        for fold, entry in zip(head["folds"], report.plan, strict=True):
            rows.append({**prefix, "fold": fold["fold"], "train": split_label(entry["train"]),
                         "valid": entry["valid"] or "", "test": entry["test"], "lr": fold["lr"],
                         "weight_decay": fold["weight_decay"], "seeds": fold["seeds"],
                         f"valid_{head['metric']}": "" if fold["valid"] is None else fold["valid"],
                         **{f"test_{key}": value for key, value in fold["test"].items()}})
        for statistic in ("mean", "std"):
            rows.append({**prefix, "fold": statistic,
                         **{f"test_{key}": value for key, value in head[f"test_{statistic}"].items()}})
    return rows


def _per_class_rows(report: ProbeReport, store: TokenStore) -> list[dict]:
    rows = []
    for result in report.results:
        for role in ("valid", "test"):
            arrays = [a for a in result.per_class[role] if a is not None]
            if not arrays:
                continue
            stacked = np.asarray(arrays, dtype=np.float64)  # [seeds, C]
            for c, label in enumerate(store.label_names):
                rows.append({
                    "head": result.key, "split": split_label(report.config["splits"][role]), "label": label,
                    "ap": float(np.nanmean(stacked[:, c])) if not np.isnan(stacked[:, c]).all() else "",
                    "ap_std": float(np.nanstd(stacked[:, c], ddof=1)) if len(arrays) > 1 and
                    not np.isnan(stacked[:, c]).all() else 0.0,
                })
    return rows


def _save_head(folder: Path, result: HeadResult, seed: int, head: torch.nn.Module) -> None:
    metadata = {
        "head": result.name, "config": json.dumps(head.config), "lr": repr(result.lr),
        "weight_decay": repr(result.weight_decay), "seed": str(seed),
    }
    if isinstance(result.layer, int):  # one layer of several: the layer it reads (a mixing head's config has its own)
        metadata["layer"] = str(result.layer)
    state = {key: value.detach().cpu().contiguous() for key, value in head.state_dict().items()}
    save_file(state, str(folder / f"{result.key}_seed{seed}.safetensors"), metadata=metadata)
    if hasattr(head, "packed_prototypes"):
        packed = head.packed_prototypes()
        save_file(
            {"bits": torch.from_numpy(np.asarray(packed["bits"], dtype=np.uint8))},
            str(folder / f"{result.key}_seed{seed}.prototypes_packed.safetensors"),
            metadata={"shape": json.dumps(packed["shape"]), "encoding": packed["encoding"], **metadata},
        )


# -- ledger ---------------------------------------------------------------------------------------------
def ledger_rows(report: ProbeReport, store: TokenStore) -> list[dict]:
    """One ledger row per head and seed, with the store's provenance."""
    encoder = store.provenance.get("encoder", {}) or {}
    timestamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    train = report.config["train"]
    rows = []
    for result in report.results:
        for entry in result.per_seed:
            test = entry.get("test", {})
            rows.append({
                "timestamp": timestamp, "run_dir": str(report.run_dir), "store": str(report.config["store"]),
                "encoder": encoder.get("name", store.provenance.get("source", "")),
                "checkpoint_sha256": encoder.get("checkpoint_sha256") or "",
                "layer": report.config["layer"] if result.layer is None else layers_label(result.layer),
                "task": report.config["task"], "head": result.name,
                "kind": result.kind, "options": json.dumps(result.options, sort_keys=True), "lr": result.lr,
                "weight_decay": result.weight_decay, "seed": entry["seed"], "epochs": train["epochs"],
                "batch_size": train["batch_size"], "num_parameters": result.num_parameters, "metric": result.metric,
                "valid": entry.get("valid", {}).get(result.metric, ""), "test": test.get(result.metric, ""),
                **{f"test_{key}": test.get(key, "") for key in ("map", "micro_ap", "macro_auroc", "accuracy")},
                "status": "diverged" if entry.get("diverged") else "ok",
            })
    return rows


def append_ledger(path: Path, rows: list[dict]) -> None:
    """Append rows to the ledger CSV (header on creation), under a file lock so parallel runs do not interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", newline="") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        header = handle.readline().strip()
        older = [column for column in LEDGER_COLUMNS if column not in LEDGER_ADDED]
        if header and header.split(",") == older:
            _add_ledger_columns(handle)
            header = ",".join(LEDGER_COLUMNS)
        if header and header.split(",") != LEDGER_COLUMNS:
            raise StoreError(
                f"{path}: this ledger has columns {header.split(',')[:6]}... not embedcache's {LEDGER_COLUMNS[:6]}...; "
                "pass a new --ledger path"
            )
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=LEDGER_COLUMNS)
        if not header:
            writer.writeheader()
        writer.writerows(rows)
        handle.seek(0, io.SEEK_END)
        handle.write(buffer.getvalue())


def _add_ledger_columns(handle) -> None:
    """Rewrite an older ledger (held open and locked) with the columns added since, empty in its rows."""
    handle.seek(0)
    rows = list(csv.reader(handle))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(LEDGER_COLUMNS)
    writer.writerows(row + [""] * len(LEDGER_ADDED) for row in rows[1:] if row)
    handle.seek(0)
    handle.truncate()
    handle.write(buffer.getvalue())


# Ledger columns read as numbers: column -> "float" (finite), "int", "metric" (a number, NaN or empty), "layer" (int,
# a mixing head's layers as `layers_label` writes them, or empty). A hand-edited row that breaks them is left out,
# never averaged into a table.
LEDGER_NUMBERS = {
    "lr": "float", "weight_decay": "float", "seed": "int", "epochs": "int", "batch_size": "int",
    "num_parameters": "int", "layer": "layer", "valid": "metric", "test": "metric", "test_map": "metric",
    "test_micro_ap": "metric", "test_macro_auroc": "metric", "test_accuracy": "metric",
}


LEDGER_WARNINGS_SHOWN = 20


def _ledger_value_problem(column: str, text: str) -> str | None:
    kind = LEDGER_NUMBERS[column]
    if text == "" and kind in ("metric", "layer"):
        return None
    shown = repr(text[:40] + ("..." if len(text) > 40 else ""))
    if kind == "layer" and LAYERS_LABEL.fullmatch(text):
        return None  # the layers a mixing head mixed, e.g. '0-11'
    if kind in ("int", "layer"):
        try:
            int(text)
        except ValueError:
            return f"{column} {shown} is not a whole number"
        return None
    try:
        number = float(text)
    except ValueError:
        return f"{column} {shown} is not a number"
    if kind == "float" and not np.isfinite(number):
        return f"{column} {shown} is not a number"
    return None


def read_ledger(path: str | Path, log: Callable[[str], None] = print) -> list[dict]:
    """The ledger's rows as dicts of strings (embedcache's columns, in order).

    A hand-edited ledger is expected: a row with a field that is not a number where one belongs, or with too few or
    too many fields, is left out with one `log` line naming its line; extra columns are ignored with one line. A file
    that is not a ledger at all (missing columns, not UTF-8, not CSV) is a ConfigError.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no results ledger there (a probe run appends to <out>/../ledger.csv)")
    rows, skipped = [], 0
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise ConfigError(f"{path}: empty: no header row; a results ledger starts with "
                                  f"{','.join(LEDGER_COLUMNS[:3])},... (pass the ledger.csv a probe run wrote)")
            missing = [column for column in LEDGER_COLUMNS if column not in header and column not in LEDGER_ADDED]
            if missing:
                raise ConfigError(f"{path}: not an embedcache results ledger: missing column(s) {missing[:6]}"
                                  f"{'...' if len(missing) > 6 else ''}; pass the ledger.csv a probe run wrote")
            repeated = sorted({column for column in header if header.count(column) > 1})
            if repeated:
                raise ConfigError(f"{path}: column(s) {repeated[:6]} appear twice in the header; remove the copies")
            extra = [column[:40] for column in header if column not in LEDGER_COLUMNS]
            if extra:
                log(f"{path}: column(s) {extra[:6]}{'...' if len(extra) > 6 else ''} are not embedcache's; ignored")
            for values in reader:
                if not values:
                    continue  # a blank line
                problem = None
                if len(values) != len(header):
                    problem = (f"{len(values)} fields, the header has {len(header)} (a truncated or hand-edited "
                               "row)")
                else:
                    row = dict(zip(header, values))
                    problem = next(filter(None, (_ledger_value_problem(c, row[c]) for c in LEDGER_NUMBERS)), None)
                if problem:
                    skipped += 1
                    if skipped <= LEDGER_WARNINGS_SHOWN:
                        log(f"{path} line {reader.line_num}: {problem}; row skipped")
                    continue
                rows.append({column: row.get(column, "") for column in LEDGER_COLUMNS})
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); pass the ledger.csv a probe run "
                          "wrote") from None
    except csv.Error as error:  # a field over csv's size limit, a stray quote, ...
        raise ConfigError(f"{path} line {reader.line_num}: not readable as CSV ({error}); fix or remove that "
                          "line") from None
    if skipped > LEDGER_WARNINGS_SHOWN:
        log(f"{path}: {skipped - LEDGER_WARNINGS_SHOWN} more row(s) skipped")
    return rows


# -- tables ---------------------------------------------------------------------------------------------
def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "-"
    return f"{100 * mean:6.2f} ± {100 * (std or 0.0):.2f}"


def _render_table(header: list[str], lines: list[list[str]]) -> str:
    """Left-aligned columns under a header and a rule of dashes."""
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]
    render = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *lines]]
    render.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(render)


def _rows_from_ledger(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        # One line per run and head configuration: a run's seeds are averaged, separate runs stay apart.
        key = (row["run_dir"], row["store"], row["layer"], row["head"], row["kind"], row["options"], row["lr"],
               row["weight_decay"], row["metric"])
        groups.setdefault(key, []).append(row)
    table = []
    for (run_dir, store, layer, head, kind, _, lr, wd, metric), members in groups.items():
        def stats(column: str, members: list[dict] = members) -> tuple[float | None, float | None]:
            values = np.array([float(m[column]) for m in members if m.get(column) not in ("", None)])
            if not len(values):
                return None, None
            return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0

        table.append({
            "run": Path(run_dir).name, "store": Path(store).name, "layer": layer, "head": head, "kind": kind,
            "lr": float(lr), "weight_decay": float(wd), "params": int(members[0]["num_parameters"]),
            "seeds": len(members), "metric": metric, "valid": stats("valid"), "test": stats("test"),
            "test_map": stats("test_map"),
        })
    return table


def _rows_from_report(report: ProbeReport) -> list[dict]:
    rows = []
    for r in report.results:
        rows.append({
            "store": Path(report.config["store"]).name,
            "layer": report.config["layer"] if r.layer is None else layers_label(r.layer), "head": r.name,
            "kind": r.kind, "lr": r.lr, "weight_decay": r.weight_decay, "params": r.num_parameters,
            "seeds": len(r.per_seed), "metric": r.metric,
            "valid": (r.valid.get(r.metric), r.valid.get(f"{r.metric}_std")),
            "test": (r.test.get(r.metric), r.test.get(f"{r.metric}_std")),
            "test_map": (r.test.get("map"), r.test.get("map_std")),
            "test_recording_map": (r.test.get("recording_map"), r.test.get("recording_map_std")),
            "status": r.status,
        })
    return rows


def format_comparison_table(report_or_rows: ProbeReport | Sequence[dict]) -> str:
    """A text table, one line per head configuration: mAP (and the selection metric) as mean ± std over seeds, in %."""
    rows = (_rows_from_report(report_or_rows) if isinstance(report_or_rows, ProbeReport)
            else _rows_from_ledger(list(report_or_rows)))
    if not rows:
        return "(no results)"
    multi_store = len({row["store"] for row in rows}) > 1
    prefix_columns = (["run"] if "run" in rows[0] else []) + (["store"] if multi_store else [])
    header = prefix_columns + [
        "head", "kind", "layer", "lr", "wd", "params", "seeds", "valid", "test mAP (%)", "test metric (%)"]
    # Stores of windows: the recording-level mAP (window scores max-pooled per recording) gets its own column.
    recordings = any(row.get("test_recording_map", (None,))[0] is not None for row in rows)
    if recordings:
        header.append("test recording mAP (%)")
    lines = []
    for row in rows:
        metric_cell = f"{row['metric']} {_fmt(*row['test'])}" if row["metric"] != "map" else "-"
        valid_cell = f"{row['metric']} {_fmt(*row['valid'])}"
        test_cell = _fmt(*row["test_map"])
        if row.get("status", "ok") != "ok":  # diverged seeds are left out of the means, and said so
            test_cell = row["status"] if test_cell == "-" else f"{test_cell} ({row['status']})"
        lines.append([row[column] for column in prefix_columns] + [
            row["head"], row["kind"], str(row["layer"]), f"{row['lr']:g}", f"{row['weight_decay']:g}",
            f"{row['params']:,}", str(row["seeds"]), valid_cell, test_cell, metric_cell,
        ] + ([_fmt(*row["test_recording_map"])] if recordings else []))
    return _render_table(header, lines)


def format_folds_table(report: FoldsReport) -> str:
    """Per head: the test metric of every fold and mean ± std over folds, in %."""
    folds = [entry["fold"] for entry in report.plan]
    metric = report.summary[0]["metric"]
    header = ["head", "kind", *folds, f"test {metric} (%) mean ± std"]
    if metric != "map":
        header.append("test mAP (%) mean ± std")
    lines = []
    for head in report.summary:
        cells = [head["head"], head["kind"], *(f"{100 * fold['test'][metric]:.2f}" for fold in head["folds"]),
                 _fmt(head["test_mean"][metric], head["test_std"][metric])]
        if metric != "map":
            cells.append(_fmt(head["test_mean"].get("map"), head["test_std"].get("map")))
        lines.append(cells)
    return _render_table(header, lines)
