"""Reports from probe runs, sweeps and ledgers: PNG figures and one self-contained HTML page.

`build_report(source, out_dir)` accepts a probe run directory (metrics.json), a sweep directory (trials.csv, with its
final/ run) or a ledger CSV, and writes what the source supports: where a prototype head's prototypes fire on chosen
clips, per-class AP of two heads, the head-comparison table (rows encoder x head, columns datasets), sweep plots and
training curves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from embedcache.errors import ConfigError
from embedcache.probe import read_ledger
from embedcache.report import figures
from embedcache.report.evidence import PROTOTYPE_KINDS, clip_background, clip_evidence, load_head
from embedcache.report.page import Section, head_table_html, render_page
from embedcache.report.tables import head_table, per_class_ap, read_csv, sweep_trials
from embedcache.store import TokenStore

__all__ = ["ReportResult", "ReportSources", "build_report", "find_sources"]


@dataclass
class ReportSources:
    """What a report can draw from: probe run directories, a ledger, an Optuna sweep's trials.csv."""

    source: Path
    run_dirs: list[Path] = field(default_factory=list)
    ledger: Path | None = None
    trials: Path | None = None


@dataclass
class ReportResult:
    """The files a report wrote and the notes on what it left out."""

    html: Path
    images: list[Path]
    table: Path | None
    notes: list[str]


def _is_run(path: Path) -> bool:
    return (path / "metrics.json").is_file()


def find_sources(source: str | Path) -> ReportSources:
    """Classify SOURCE: a run directory, a sweep directory, a folder with ledger.csv, a ledger or trials CSV."""
    path = Path(source).resolve()
    found = ReportSources(path)
    if path.is_file() and path.suffix == ".csv":
        columns = read_csv(path)[:1]
        if columns and "state" in columns[0]:
            return find_sources(path.parent)
        if columns and "run_dir" not in columns[0]:
            raise ConfigError(f"{path}: neither a results ledger (run_dir column) nor a sweep's trials.csv")
        found.ledger = path
        for row in read_ledger(path, log=lambda line: None):  # build_report notes the rows it skips
            run = Path(row["run_dir"])
            if _is_run(run) and run not in found.run_dirs:
                found.run_dirs.append(run)
        return found
    if not path.is_dir():
        raise ConfigError(f"{path}: give a probe run directory, a sweep directory or a ledger CSV")
    if _is_run(path):
        found.run_dirs.append(path)
        parent = path.parent
        found.ledger = parent / "ledger.csv" if (parent / "ledger.csv").is_file() else None
        found.trials = parent / "trials.csv" if (parent / "trials.csv").is_file() else None
    elif (path / "trials.csv").is_file():
        found.trials = path / "trials.csv"
        if _is_run(path / "final"):
            found.run_dirs.append(path / "final")
        found.ledger = path / "ledger.csv" if (path / "ledger.csv").is_file() else None
    elif (path / "ledger.csv").is_file():
        return find_sources(path / "ledger.csv")
    else:
        raise ConfigError(
            f"{path}: no metrics.json (probe run), trials.csv (sweep) or ledger.csv in it; point at one of those"
        )
    return found


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]


def _run_config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}


def _prototype_weights(run_dir: Path, head: str | None) -> tuple[str, Path] | None:
    """(head name, weights file of its lowest seed) of the first prototype head of a run, or of `head`."""
    config = _run_config(run_dir)
    for entry in config.get("heads", []):
        if (head is None and entry["kind"] in PROTOTYPE_KINDS) or entry["name"] == head:
            # weights/<name>_seed<s>.safetensors; the packed-prototype files beside them do not match the pattern.
            pattern = re.compile(rf"{re.escape(entry['name'])}_seed(\d+)\.safetensors")
            seeds = {int(m.group(1)): f for f in (run_dir / "weights").glob("*.safetensors")
                     if (m := pattern.fullmatch(f.name))}
            if seeds:
                return entry["name"], seeds[min(seeds)]
    return None


def choose_clips(store: TokenStore, config: dict, clips: list[str] | None, count: int) -> list[int]:
    """Store indices of the named clips, or of `count` clips of the test (else valid, else train) split, those with
    the most labels first."""
    ids = list(store.clip_ids)
    if clips:
        missing = [c for c in clips if c not in ids]
        if missing:
            raise ConfigError(f"{store.path}: no clip(s) {missing[:5]} in this store; pass ids from its clip_ids")
        return [ids.index(c) for c in clips]
    splits = config.get("splits") or {}
    for role in ("test", "valid", "train"):
        name = splits.get(role)
        if name in store.split_names and len(store.split_indices(name)):
            indices = store.split_indices(name)
            label_counts = store.labels[indices].sum(axis=1)
            return [int(i) for i in indices[np.argsort(-label_counts, kind="stable")][:count]]
    return list(range(min(count, store.n_clips)))


def prototype_section(run_dir: Path, out_dir: Path, clips: list[str] | None, count: int, top: int,
                      head: str | None) -> tuple[Section, list[Path]]:
    """Figures of where the run's prototype head fires on chosen clips."""
    section = Section("Where the prototypes fire")
    found = _prototype_weights(run_dir, head)
    if found is None:
        what = f"head {head!r}" if head else f"a prototype head ({', '.join(PROTOTYPE_KINDS)})"
        section.paragraphs.append(f"{run_dir.name} has no weights of {what}; nothing to draw.")
        return section, []
    name, weights = found
    config = _run_config(run_dir)
    store = TokenStore.open(config["store"], subset=config.get("subset"))  # the run's view: same label columns
    probe_head = load_head(weights)
    layer = config.get("layer")
    multilabel = config.get("task", "multilabel") == "multilabel"
    section.paragraphs.append(
        f"Head {name} ({probe_head.kind}, {weights.name}) on {Path(store.path).name}, layer {layer}. Each row is one "
        "of the clip's most probable classes: the prototype that adds most to that class's logit, its cosine "
        "similarity to every patch token drawn over the time x frequency token grid (cyan box: the best token, the "
        "one its max-pooled score comes from), over the clip's spectrogram when the audio can be read."
    )
    images, manifests = [], {}
    for index in choose_clips(store, config, clips, count):
        tokens = store.read_tokens(layer, index, index + 1)[0]
        mask = store.token_mask(index, index + 1)[0]
        evidence = clip_evidence(probe_head, tokens, mask, multilabel)
        background = clip_background(store, index, tokens, mask, manifests)
        clip_id = str(store.clip_ids[index])
        true = [store.label_names[c] for c in np.flatnonzero(store.labels[index])]
        figure = figures.prototype_figure(clip_id, true, store.label_names, evidence, background, store.grid, name,
                                          top=min(top, len(store.label_names)))
        path = figures.save(figure, out_dir / f"prototypes_{_safe(clip_id)}.png")
        images.append(path)
        section.images.append((path, f"{clip_id} ({background.kind}; {background.note})"))
    return section, images


def _per_class_series(run_dirs: list[Path], heads: list[str] | None) -> list:
    available = {}
    for run in run_dirs:
        if not (run / "per_class_ap.csv").is_file():
            continue
        for item in per_class_ap(run):
            available.setdefault(item.head, item)
    if heads:
        missing = [h for h in heads if h not in available]
        if missing:
            raise ConfigError(f"no per-class AP for head(s) {missing}; the runs have {sorted(available)}")
        return [available[h] for h in heads]
    # The paper's comparison: a prototype head against a pooled one, when the runs have both.
    kinds = {run_kind for run in run_dirs for run_kind in _head_kinds(run).items()}
    prototype = [name for name, kind in kinds if kind in PROTOTYPE_KINDS and name in available]
    pooled = [name for name, kind in kinds if kind not in PROTOTYPE_KINDS and name in available]
    if prototype and pooled:
        order = list(available)
        return [available[min(prototype, key=order.index)], available[min(pooled, key=order.index)]]
    return list(available.values())[:2]


def _head_kinds(run_dir: Path) -> dict[str, str]:
    """Head name -> kind of a run, from its config.yaml."""
    return {entry["name"]: entry["kind"] for entry in _run_config(run_dir).get("heads", [])}


def build_report(
    source: str | Path,
    out_dir: str | Path,
    clips: list[str] | None = None,
    n_clips: int = 3,
    top_classes: int = 3,
    heads: list[str] | None = None,
    prototype_head: str | None = None,
) -> ReportResult:
    """Write PNGs, head_table.md and one self-contained report.html for a run, sweep or ledger into out_dir.

    heads: the heads whose per-class AP is compared (default: the first prototype head and the first pooled one,
    else the first two found);
    prototype_head: the head whose prototypes are drawn (default: the first proto/protofloat/protobin head).
    """
    sources = find_sources(source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections, images, notes = [], [], []
    table_path = None

    if sources.run_dirs:
        section, drawn = prototype_section(sources.run_dirs[0], out_dir, clips, n_clips, top_classes, prototype_head)
        sections.append(section)
        images += drawn
        series = _per_class_series(sources.run_dirs, heads)
        section = Section("Per-class AP")
        if len(series) >= 1:
            path = figures.save(figures.per_class_figure(series), out_dir / "per_class_ap.png")
            images.append(path)
            runs = sorted({s.run for s in series})
            section.paragraphs.append(f"Heads {', '.join(s.head for s in series)} on split {series[0].split} "
                                      f"(run {', '.join(runs)}), averaged over seeds; classes sorted by the first.")
            section.images.append((path, "per-class AP"))
        else:
            section.paragraphs.append("No per_class_ap.csv in the run(s).")
        sections.append(section)
    else:
        notes.append("no probe run directory found: no prototype maps or per-class AP")

    section = Section("Head comparison (rows encoder x head, columns datasets)")
    if sources.ledger is not None:
        table = head_table(read_ledger(sources.ledger, log=notes.append))
        table_path = out_dir / "head_table.md"
        table_path.write_text(table.to_markdown() + "\n")
        section.paragraphs.append(
            f"From {sources.ledger.name}: each cell is the latest run's test metric (validation where a run had no "
            "test split), mean ± std over seeds, in %; the best per dataset is highlighted."
        )
        section.tables.append(head_table_html(table))
    else:
        section.paragraphs.append("No ledger found beside the run; pass a ledger CSV to compare encoders and heads.")
        notes.append("no ledger: no head-comparison table")
    sections.append(section)

    section = Section("Sweep")
    if sources.trials is not None:
        trials = sweep_trials(sources.trials, log=notes.append)
        path = figures.save(figures.sweep_figure(trials), out_dir / "sweep_trials.png")
        images.append(path)
        counts = {s: trials.state.count(s) for s in dict.fromkeys(trials.state)}
        section.paragraphs.append(f"Optuna trials from {sources.trials}: "
                                  + ", ".join(f"{n} {s}" for s, n in counts.items())
                                  + "; pruned trials are placed at the validation value they were stopped at.")
        section.images.append((path, "sweep trials: lr x weight decay"))
    for run in sources.run_dirs[:1]:
        if (run / "sweep.csv").is_file():
            grid = sweep_trials(run / "sweep.csv", log=notes.append)
            if len(grid.lr) > len(set(grid.head)):  # more than one configuration per head
                path = figures.save(figures.sweep_figure(grid), out_dir / "sweep_grid.png")
                images.append(path)
                section.paragraphs.append(f"The grid trained in run {run.name}, mean validation over seeds.")
                section.images.append((path, "grid: lr x weight decay"))
    if not section.images:
        section.paragraphs.append("No sweep results (trials.csv) and a single configuration per head.")
    sections.append(section)

    if sources.run_dirs and (sources.run_dirs[0] / "curves.csv").is_file():
        rows = read_csv(sources.run_dirs[0] / "curves.csv")
        metric = next((c.removeprefix("valid_") for c in (rows[0] if rows else {}) if c.startswith("valid_")), None)
        if rows and metric:
            path = figures.save(figures.curve_figure(rows, metric), out_dir / "curves.png")
            images.append(path)
            sections.append(Section("Training curves", images=[(path, "train loss and validation metric")]))

    html_path = out_dir / "report.html"
    html_path.write_text(render_page(f"embedcache report: {sources.source.name}", str(sources.source), sections))
    return ReportResult(html_path, images, table_path, notes)

