"""`embedcache suite SUITE.yaml`: the paper's matrix, encoders x data sets x heads, from one file.

For every (data set, encoder) the store is extracted once (resumable; a finished store is reused), then every head is
swept with the protocol config (Sobol then TPE trials, successive halving, the top trials re-run with seeds) in one
Optuna storage, so N machines running the same suite split the matrix between them with no coordinator of ours. A
cell is done when its `cell.json` is written; a second run computes only the missing cells (a new encoder, data set
or head). The table has Table 2's shape: rows encoder x head, columns data sets, mean ± std over seeds, with the
protobin - linear delta, ranks per data set, the pairwise win matrix (Fig. 5: a head wins a cell when it is better by
more than one std) and bootstrap confidence intervals over test clips.
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from embedcache.errors import ConfigError, EmbedcacheError

SUITE_KEYS = ("name", "encoders", "datasets", "heads", "protocol", "sweep", "out", "storage", "throughput",
              "bootstrap")


@dataclass(frozen=True)
class EncoderEntry:
    """An encoder of the matrix: registry name, checkpoint or random init, options, layers."""

    name: str
    label: str
    checkpoint: str | None = None
    random_init: bool = False
    options: dict = field(default_factory=dict)
    layers: str = "last"


@dataclass(frozen=True)
class DatasetEntry:
    """A data set of the matrix: its manifest, and extract settings (max_seconds, window, ...) for its stores.

    A data set not at hand yet can be planned (`--dry-run` only) from its size: `planned` holds clips, train_clips,
    seconds (typical clip length) and classes instead of a manifest.
    """

    name: str
    manifest: str | None
    extract: dict = field(default_factory=dict)
    planned: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    """A parsed SUITE.yaml; relative paths are taken from the file's folder."""

    name: str
    encoders: tuple[EncoderEntry, ...]
    datasets: tuple[DatasetEntry, ...]
    heads: tuple[str, ...]
    protocol: dict
    sweep: dict
    out: Path
    storage: str
    throughput: dict
    bootstrap: int

    def cells(self) -> list[tuple[DatasetEntry, EncoderEntry, str]]:
        return [(d, e, h) for d in self.datasets for e in self.encoders for h in self.heads]

    def store_path(self, dataset: DatasetEntry, encoder: EncoderEntry) -> Path:
        return self.out / "stores" / f"{dataset.name}-{encoder.label}.zarr"

    def cell_dir(self, dataset: DatasetEntry, encoder: EncoderEntry, head: str) -> Path:
        return self.out / "cells" / dataset.name / encoder.label / head


def _relative(base: Path, value: str | None) -> str | None:
    if value is None or "://" in str(value):
        return value
    path = Path(value).expanduser()
    # Lexically, from the suite file's folder as given (a linked configs/ folder keeps its neighbours).
    return str(path if path.is_absolute() else Path(os.path.normpath(base / path)))


def load_suite(path: str | Path) -> Suite:
    """Parse and check SUITE.yaml: every key named, every entry complete, names unique."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read the suite ({error})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a suite is a mapping with encoders, datasets and heads")
    unknown = sorted(set(raw) - set(SUITE_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; a suite has {', '.join(SUITE_KEYS)}")
    base = Path(os.path.abspath(path)).parent
    encoders = []
    for index, entry in enumerate(raw.get("encoders") or []):
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{path}: encoders[{index}]: give a name (and checkpoint, random_init, options)")
        extra = sorted(set(entry) - {"name", "label", "checkpoint", "random_init", "options", "layers"})
        if extra:
            raise ConfigError(f"{path}: encoders[{index}]: unknown key(s) {extra}")
        encoders.append(EncoderEntry(str(entry["name"]), str(entry.get("label", entry["name"])),
                                     _relative(base, entry.get("checkpoint")), bool(entry.get("random_init", False)),
                                     dict(entry.get("options") or {}), str(entry.get("layers", "last"))))
    datasets = []
    planning = {"clips", "train_clips", "seconds", "classes"}
    for index, entry in enumerate(raw.get("datasets") or []):
        if not isinstance(entry, dict) or "name" not in entry or not ("manifest" in entry or planning <= set(entry)):
            raise ConfigError(f"{path}: datasets[{index}]: give a name and a manifest (or, to plan with --dry-run, "
                              "clips, train_clips, seconds and classes)")
        extra = sorted(set(entry) - {"name", "manifest", "extract"} - planning)
        if extra:
            raise ConfigError(f"{path}: datasets[{index}]: unknown key(s) {extra}")
        planned = {key: entry[key] for key in planning if key in entry}
        if planned and not all(isinstance(value, int | float) and value > 0 for value in planned.values()):
            raise ConfigError(f"{path}: datasets[{index}]: clips, train_clips, seconds and classes must be numbers > 0")
        datasets.append(DatasetEntry(str(entry["name"]), _relative(base, entry.get("manifest")),
                                     dict(entry.get("extract") or {}), planned))
    heads = raw.get("heads") or []
    heads = [h.strip() for h in heads.split(",")] if isinstance(heads, str) else [str(h) for h in heads]
    for what, names in (("encoders", [e.label for e in encoders]), ("datasets", [d.name for d in datasets]),
                        ("heads", heads)):
        if not names:
            raise ConfigError(f"{path}: {what}: name at least one")
        if len(set(names)) != len(names):
            raise ConfigError(f"{path}: {what}: names must be unique (give repeated encoders a `label`)")
    protocol = raw.get("protocol") or {}
    if isinstance(protocol, str):
        from embedcache.probe import load_config

        protocol = load_config(_relative(base, protocol))
    out = Path(_relative(base, raw.get("out") or f"runs/suite-{path.stem}"))
    bootstrap = raw.get("bootstrap", 1000)
    if not isinstance(bootstrap, int) or bootstrap < 0:
        raise ConfigError(f"{path}: bootstrap: {bootstrap!r} is not a whole number of resamples >= 0")
    return Suite(
        name=str(raw.get("name") or path.stem), encoders=tuple(encoders), datasets=tuple(datasets),
        heads=tuple(heads), protocol=dict(protocol), sweep=dict(raw.get("sweep") or {}), out=out,
        storage=str(raw.get("storage") or f"sqlite:///{out / 'studies.db'}"), throughput=dict(raw.get("throughput")
                                                                                               or {}),
        bootstrap=bootstrap,
    )


# -- planning and cost ----------------------------------------------------------------------------------------
@dataclass
class CellPlan:
    dataset: str
    encoder: str
    head: str
    done: bool
    store_ready: bool


def plan(suite: Suite) -> list[CellPlan]:
    """Every cell, whether its result exists and whether its store is complete."""
    from embedcache.store import TokenStore

    ready = {}
    for dataset in suite.datasets:
        for encoder in suite.encoders:
            try:
                ready[dataset.name, encoder.label] = TokenStore.open(suite.store_path(dataset, encoder)).is_complete
            except EmbedcacheError:
                ready[dataset.name, encoder.label] = False
    return [CellPlan(d.name, e.label, h, (suite.cell_dir(d, e, h) / "cell.json").is_file(), ready[d.name, e.label])
            for d, e, h in suite.cells()]


def estimate(suite: Suite, cells: list[CellPlan], measure: bool = True) -> dict:
    """What the missing cells cost: store bytes, and extraction and probe hours from throughput (the suite's
    `throughput:` numbers, else measured here), with the assumptions named."""
    from embedcache.datasets import read_manifest
    from embedcache.encoders.catalog import describe
    from embedcache.probe import resolve_config
    from embedcache.sweep import SweepConfig

    sweep = SweepConfig.from_dict(suite.sweep)
    protocol = resolve_config(suite.protocol)
    epochs = protocol["train"]["epochs"]
    given = suite.throughput
    encoder_rates, head_rates = dict(given.get("encoder_clips_per_s") or {}), dict(given.get("head_clip_epochs_per_s")
                                                                                   or {})
    stores, extract_s, probe_s, notes = [], 0.0, 0.0, []
    for dataset in suite.datasets:
        if dataset.manifest is None:  # planned from its size alone
            n_clips, train_clips = int(dataset.planned["clips"]), int(dataset.planned["train_clips"])
            seconds, n_classes = float(dataset.planned["seconds"]), int(dataset.planned["classes"])
        else:
            manifest = read_manifest(dataset.manifest)
            n_clips, n_classes = len(manifest.clips), len(manifest.label_names)
            train_clips = sum(1 for clip in manifest.clips if clip.split == "train") or n_clips
            seconds = float(dataset.extract.get("window") or dataset.extract.get("max_seconds") or
                            _median_seconds([clip.path for clip in manifest.clips[:50]]))
        for encoder in suite.encoders:
            row = describe(encoder.name, seconds)
            if "error" in row:
                raise ConfigError(f"suite: encoder {encoder.name}: {row['error']}")
            layers = row["layers"] if encoder.layers == "all" else len(str(encoder.layers).split(","))
            nbytes = n_clips * (row["tokens"] + row["prefix"]) * row["embed_dim"] * 2 * layers
            missing = [c for c in cells if c.dataset == dataset.name and c.encoder == encoder.label and not c.done]
            rate = encoder_rates.get(encoder.label) or encoder_rates.get(encoder.name)
            if rate is None and measure:
                rate = measure_encoder(encoder, seconds)
                notes.append(f"{encoder.label}: {rate:.1f} clips/s measured here on {seconds:g} s clips")
            store_ready = all(c.store_ready for c in cells if c.dataset == dataset.name and c.encoder == encoder.label)
            if not store_ready and rate:
                extract_s += n_clips / rate
            for cell in missing:
                head_rate = head_rates.get(cell.head)
                if head_rate is None and measure:
                    head_rate = measure_head(cell.head, row["tokens"], row["embed_dim"], n_classes)
                    head_rates[cell.head] = head_rate
                    notes.append(f"{cell.head}: {head_rate:.0f} clip-epochs/s measured here at T={row['tokens']}, "
                                 f"D={row['embed_dim']}")
                if head_rate:
                    # Every trial trains up to `epochs` (pruning is ignored: an upper bound), then top_k x seeds; a
                    # head fitted without an optimiser (knn, logreg) is one pass per seed.
                    if _fitted_once(cell.head):
                        clip_epochs = sweep.final_seeds * train_clips
                    else:
                        clip_epochs = (sweep.trials + sweep.top_k * sweep.final_seeds) * epochs * train_clips
                    probe_s += clip_epochs / head_rate
            stores.append({"dataset": dataset.name, "encoder": encoder.label, "clips": n_clips,
                           "tokens": row["tokens"], "embed_dim": row["embed_dim"], "layers": layers,
                           "float16_bytes": nbytes, "ready": store_ready})
    return {
        "cells": len(cells), "missing": sum(not c.done for c in cells), "stores": stores,
        "store_bytes": sum(s["float16_bytes"] for s in stores if not s["ready"]),
        "extract_hours": extract_s / 3600, "probe_hours": probe_s / 3600, "extract_s": extract_s,
        "probe_s": probe_s,
        "assumptions": [
            f"every trial runs all {epochs} epochs (successive halving only lowers this)",
            f"{sweep.trials} trials + top {sweep.top_k} x {sweep.final_seeds} seeds per cell, one cell at a time",
            "throughput: " + ("; ".join(notes) if notes else "as given in the suite's `throughput:`"),
        ],
    }


def _fitted_once(kind: str) -> bool:
    from embedcache import heads

    return not heads.uses_optimiser(kind)


def _median_seconds(paths: list[Path]) -> float:
    """Median length of the clips (from their headers): the length throughput is measured at."""
    import soundfile

    lengths = []
    for path in paths:
        try:
            info = soundfile.info(str(path))
            lengths.append(info.frames / info.samplerate)
        except (RuntimeError, OSError):
            continue
    return float(np.median(lengths)) if lengths else 10.0


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def measure_encoder(encoder: EncoderEntry, seconds: float, batch: int = 4) -> float:
    """Forward clips/s of the encoder on random audio, here (its checkpoint loaded, or random weights)."""
    import torch

    from embedcache import encoders
    from embedcache.device import resolve_device

    device = resolve_device("auto")
    model = encoders.create(encoder.name, checkpoint=encoder.checkpoint, random_init=encoder.random_init or
                            encoder.checkpoint is None, **encoder.options).to(device)
    wave = torch.randn(batch, int(seconds * model.sample_rate), device=device) * 0.1
    with torch.inference_mode():
        model(wave, [model.num_layers - 1])
        started = time.perf_counter()
        model(wave, [model.num_layers - 1])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return batch / max(1e-9, time.perf_counter() - started)


def measure_head(kind: str, tokens: int, dim: int, classes: int, clips: int = 64) -> float:
    """Training clip-epochs/s of one head on random tokens of the store's shape, here."""
    import torch

    from embedcache import heads
    from embedcache.device import resolve_device

    device = resolve_device("auto")
    head = heads.create(kind, num_classes=classes, embed_dim=dim).to(device)
    batch = heads.TokenBatch(torch.randn(clips, tokens, dim, device=device))
    if not head.uses_optimiser:  # fitted once from pooled tokens: the pooling pass is what it costs per clip
        started = time.perf_counter()
        batch.mean.sum().item()
        return clips / max(1e-9, time.perf_counter() - started)
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-3) if any(True for _ in head.parameters()) else None
    target = torch.rand(clips, classes, device=device).round()
    started = time.perf_counter()
    for _ in range(2):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(batch), target)
        if optimiser is not None and loss.requires_grad:
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * clips / max(1e-9, time.perf_counter() - started)


# -- running --------------------------------------------------------------------------------------------
def run_suite(suite: Suite, log: Callable[[str], None] = print) -> list[dict]:
    """Extract missing stores and sweep missing cells, then write the table; returns every finished cell."""
    from embedcache.extract import ExtractConfig, extract
    from embedcache.sweep import run_sweep

    unplanned = [d.name for d in suite.datasets if d.manifest is None]
    if unplanned:
        raise ConfigError(f"suite: data set(s) {unplanned} have no manifest (sizes for --dry-run only); write their "
                          "manifests (embedcache manifest ...) and name them")
    suite.out.mkdir(parents=True, exist_ok=True)
    (suite.out / "suite.yaml").write_text(yaml.safe_dump(_suite_record(suite), sort_keys=False))
    for dataset in suite.datasets:
        for encoder in suite.encoders:
            cells = [h for h in suite.heads if not (suite.cell_dir(dataset, encoder, h) / "cell.json").is_file()]
            if not cells:
                continue
            store = suite.store_path(dataset, encoder)
            log(f"{dataset.name} x {encoder.label}: extracting (or resuming) {store}")
            extract(ExtractConfig(
                encoder=encoder.name, manifest=dataset.manifest, out=str(store), checkpoint=encoder.checkpoint,
                random_init=encoder.random_init, encoder_options=dict(encoder.options), layers=encoder.layers,
                progress=False, **dataset.extract,
            ))
            for head in cells:
                folder = suite.cell_dir(dataset, encoder, head)
                study = f"{suite.name}-{dataset.name}-{encoder.label}-{head}"
                log(f"{dataset.name} x {encoder.label} x {head}: sweeping (study {study})")
                report = run_sweep(store, head, folder, config=suite.protocol, sweep=suite.sweep,
                                   storage=suite.storage, study_name=study, log=lambda _: None)
                if report.best is None:
                    log(f"{study}: trials still running elsewhere; its cell is left for a later run")
                    continue
                _write_json(folder / "cell.json", cell_result(report, dataset.name, encoder.label, head))
    cells = collect(suite)
    write_tables(suite, cells)
    return cells


def cell_result(report, dataset: str, encoder: str, head: str) -> dict:
    """A finished cell: the chosen configuration, its test metric per seed and their mean ± std, and the test
    predictions of the chosen trial (for the bootstrap)."""
    metric = report.metric
    trial_name = f"trial{report.best['trial']}"
    result = next(r for r in report.final.results if r.name == trial_name)
    seeds = [e["test"].get(metric) for e in result.per_seed if e.get("test")]
    return {
        "dataset": dataset, "encoder": encoder, "head": head, "metric": metric, "lr": report.best["lr"],
        "weight_decay": report.best["weight_decay"], "test": float(np.mean(seeds)) if seeds else None,
        "test_std": float(np.std(seeds, ddof=1)) if len(seeds) > 1 else 0.0, "seeds": seeds,
        "num_parameters": result.num_parameters, "predictions": str(report.final.run_dir / "predictions.csv"),
        "trial": trial_name, "study": report.study_name,
    }


def collect(suite: Suite) -> list[dict]:
    """Every finished cell of this suite (in the suite's order)."""
    cells = []
    for dataset, encoder, head in suite.cells():
        path = suite.cell_dir(dataset, encoder, head) / "cell.json"
        if path.is_file():
            cells.append(json.loads(path.read_text()))
    return cells


# -- the table ------------------------------------------------------------------------------------------
def bootstrap_interval(predictions: str | Path, trial: str, metric: str, resamples: int, seed: int = 0) -> list:
    """95% interval of the test metric (mean over seeds) over `resamples` resamplings of the test clips."""
    from embedcache.metrics import multiclass_metrics, multilabel_metrics

    with open(predictions, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["head"] == trial]
    if not rows or resamples == 0:
        return []
    true_cols = [c for c in rows[0] if c.startswith("true:")]
    score_cols = [c for c in rows[0] if c.startswith("score:")]
    seeds = sorted({row["seed"] for row in rows})
    per_seed = {s: [row for row in rows if row["seed"] == s] for s in seeds}
    targets = np.array([[int(row[c]) for c in true_cols] for row in per_seed[seeds[0]]])
    scores = {s: np.array([[float(row[c]) for c in score_cols] for row in per_seed[s]]) for s in seeds}
    compute = multilabel_metrics if metric == "map" else multiclass_metrics
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, len(targets), len(targets))
        values.append(np.nanmean([compute(targets[pick], scores[s][pick])[metric] for s in seeds]))
    return [float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))]


def wins(cells: list[dict], heads: list[str]) -> dict[str, dict[str, int]]:
    """Pairwise win counts: a beats b in a (data set, encoder) cell when its mean is higher by more than the
    larger of the two stds (the paper's "better by more than one std", Fig. 5)."""
    table = {a: {b: 0 for b in heads} for a in heads}
    by_cell = {}
    for cell in cells:
        if cell["test"] is not None:
            by_cell.setdefault((cell["dataset"], cell["encoder"]), {})[cell["head"]] = cell
    for group in by_cell.values():
        for a in heads:
            for b in heads:
                if a != b and a in group and b in group:
                    margin = max(group[a]["test_std"], group[b]["test_std"])
                    table[a][b] += int(group[a]["test"] - group[b]["test"] > margin)
    return table


def table_rows(suite: Suite, cells: list[dict]) -> list[dict]:
    """Table 2's rows: per encoder and head, each data set's mean ± std (%), CI and rank, and the mean rank."""
    datasets = [d.name for d in suite.datasets]
    lookup = {(c["dataset"], c["encoder"], c["head"]): c for c in cells}
    ranks: dict[tuple[str, str, str], int] = {}
    for dataset in datasets:
        scored = sorted((c for c in cells if c["dataset"] == dataset and c["test"] is not None),
                        key=lambda c: -c["test"])
        for rank, cell in enumerate(scored, start=1):
            ranks[dataset, cell["encoder"], cell["head"]] = rank
    rows = []
    for encoder in (e.label for e in suite.encoders):
        for head in suite.heads:
            row = {"encoder": encoder, "head": head}
            own = []
            for dataset in datasets:
                cell = lookup.get((dataset, encoder, head))
                row[dataset] = cell
                if (dataset, encoder, head) in ranks:
                    own.append(ranks[dataset, encoder, head])
            row["mean_rank"] = float(np.mean(own)) if own else None
            rows.append(row)
    return rows


def deltas(suite: Suite, cells: list[dict]) -> dict[str, dict[str, float]]:
    """protobin - linear (percentage points) per encoder and data set, where both were run."""
    lookup = {(c["dataset"], c["encoder"], c["head"]): c for c in cells}
    out = {}
    for encoder in (e.label for e in suite.encoders):
        for dataset in (d.name for d in suite.datasets):
            a, b = lookup.get((dataset, encoder, "protobin")), lookup.get((dataset, encoder, "linear"))
            if a and b and a["test"] is not None and b["test"] is not None:
                out.setdefault(encoder, {})[dataset] = 100 * (a["test"] - b["test"])
    return out


def _cell_text(cell: dict | None, interval: list) -> str:
    if cell is None:
        return "-"
    if cell["test"] is None:
        return "n/a"
    text = f"{100 * cell['test']:.2f} ± {100 * cell['test_std']:.2f}"
    if interval:
        text += f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
    return text


def write_tables(suite: Suite, cells: list[dict]) -> dict[str, Path]:
    """table.md, table.csv and table.html under the suite's out folder (and intervals.json for the bootstrap)."""
    datasets = [d.name for d in suite.datasets]
    cache_path = suite.out / "intervals.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    intervals = {}
    for cell in cells:
        key = f"{cell['dataset']}/{cell['encoder']}/{cell['head']}/{suite.bootstrap}"
        if key not in cache and cell["test"] is not None and Path(cell["predictions"]).is_file():
            cache[key] = bootstrap_interval(cell["predictions"], cell["trial"], cell["metric"], suite.bootstrap)
        intervals[cell["dataset"], cell["encoder"], cell["head"]] = cache.get(key, [])
    _write_json(cache_path, cache)
    rows = table_rows(suite, cells)
    header = ["encoder", "head", *datasets, "mean rank"]
    body = [[r["encoder"], r["head"], *(_cell_text(r[d], intervals.get((d, r["encoder"], r["head"]), []))
                                        for d in datasets), "-" if r["mean_rank"] is None else f"{r['mean_rank']:.2f}"]
            for r in rows]
    delta = deltas(suite, cells)
    win = wins(cells, list(suite.heads))
    metric = cells[0]["metric"] if cells else "map"
    lines = [f"# {suite.name}: test {metric} (%), mean ± std over seeds [95% bootstrap CI over test clips]", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells_) + " |" for cells_ in body]
    if delta:
        lines += ["", "## protobin − linear (percentage points)", "", "| encoder | " + " | ".join(datasets) + " |",
                  "|" + "---|" * (len(datasets) + 1)]
        lines += [f"| {e} | " + " | ".join(f"{v[d]:+.2f}" if d in v else "-" for d in datasets) + " |"
                  for e, v in delta.items()]
    lines += ["", "## Wins (row beats column by more than one std, counted over data set x encoder cells)", "",
              "| | " + " | ".join(suite.heads) + " |", "|" + "---|" * (len(suite.heads) + 1)]
    lines += [f"| {a} | " + " | ".join("-" if a == b else str(win[a][b]) for b in suite.heads) + " |"
              for a in suite.heads]
    paths = {"md": suite.out / "table.md", "csv": suite.out / "table.csv", "html": suite.out / "table.html"}
    paths["md"].write_text("\n".join(lines) + "\n")
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["encoder", "head", "dataset", "metric", "test", "test_std", "ci_low", "ci_high", "rank",
                         "lr", "weight_decay", "num_parameters", "seeds"])
        for cell in cells:
            interval = intervals.get((cell["dataset"], cell["encoder"], cell["head"]), [])
            rank = next((r for r in rows if r["encoder"] == cell["encoder"] and r["head"] == cell["head"]), {})
            writer.writerow([cell["encoder"], cell["head"], cell["dataset"], cell["metric"], cell["test"],
                             cell["test_std"], *(interval or ["", ""]), rank.get("mean_rank", ""), cell["lr"],
                             cell["weight_decay"], cell["num_parameters"], len(cell["seeds"])])
    cells_html = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in body)
    paths["html"].write_text(
        f"<!DOCTYPE html><html lang=en><meta charset=utf-8><title>{html.escape(suite.name)}</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style>"
        f"<h1>{html.escape(suite.name)}</h1><p>test {metric} (%), mean ± std over seeds [95% bootstrap CI]</p>"
        "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + f"</tr>{cells_html}</table>"
        "</html>\n")
    return paths


def _suite_record(suite: Suite) -> dict:
    record = asdict(suite)
    record["out"] = str(suite.out)
    return record


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v)
                                  else str(v)))
    partial.replace(path)


def format_plan(suite: Suite, cells: list[CellPlan], cost: dict | None = None) -> str:
    """The --dry-run text: every cell's state, and what the missing ones cost."""
    lines = [f"{suite.name}: {len(suite.datasets)} data set(s) x {len(suite.encoders)} encoder(s) x "
             f"{len(suite.heads)} head(s) = {len(cells)} cells, {sum(not c.done for c in cells)} to compute"]
    for cell in cells:
        state = "done" if cell.done else ("to sweep" if cell.store_ready else "to extract and sweep")
        lines.append(f"  {cell.dataset} x {cell.encoder} x {cell.head}: {state}")
    if cost:
        lines.append(f"stores to write: {cost['store_bytes'] / 1e9:.2f} GB (float16, before compression); "
                     f"extraction about {_hours(cost['extract_s'])}, probes about {_hours(cost['probe_s'])}")
        lines += [f"  assumption: {text}" for text in cost["assumptions"]]
    return "\n".join(lines)

