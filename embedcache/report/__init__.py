"""Reports from probe runs, sweeps and ledgers: PNG figures and one self-contained HTML page.

`build_report(source, out_dir)` accepts a probe run directory (metrics.json), a sweep directory (trials.csv, with its
final/ run) or a ledger CSV, and writes what the source supports: where a prototype head's prototypes fire on clips
chosen to cover the classes (true, predicted and missed labels marked, one colour scale), per-class AP of every head
with its spread over seeds, scores per layer of a run over several layers (with a layer-mixing head's learned
weights), head tables scoped to one store fingerprint and subset, sweep plots and training curves (one panel per
head).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from embedcache import sed
from embedcache.errors import ConfigError
from embedcache.report import figures
from embedcache.report.evidence import (
    PROTOTYPE_KINDS,
    clip_background,
    clip_evidence,
    cover_classes,
    load_head,
    panel_classes,
    predicted_classes,
)
from embedcache.report.page import Section, head_table_html, render_page
from embedcache.report.tables import head_tables, layer_scores, per_class_ap, read_csv, sweep_trials
from embedcache.results import read_ledger
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


def _prototype_weights(run_dir: Path, head: str | None) -> tuple[str, Path, int | None] | None:
    """(head name, weights file of its lowest seed, its layer) of the first prototype head of a run, or of `head`;
    in a run over several layers, on the layer with its best validation score (layer None: the run's one layer)."""
    config = _run_config(run_dir)
    for entry in config.get("heads", []):
        if (head is None and entry["kind"] in PROTOTYPE_KINDS) or entry["name"] == head:
            stem = _best_layer_key(run_dir, entry["name"])
            # weights/<name>_seed<s>.safetensors; the packed-prototype files beside them do not match the pattern.
            pattern = re.compile(rf"{re.escape(stem[0])}_seed(\d+)\.safetensors")
            seeds = {int(m.group(1)): f for f in (run_dir / "weights").glob("*.safetensors")
                     if (m := pattern.fullmatch(f.name))}
            if seeds:
                return entry["name"], seeds[min(seeds)], stem[1]
    return None


def _best_layer_key(run_dir: Path, name: str) -> tuple[str, int | None]:
    """(file stem, layer) of head `name`: in a run over several layers its key on the best validation layer."""
    entries = [h for h in _metrics_heads(run_dir) if h.get("head") == name and isinstance(h.get("layer"), int)]
    if not entries:
        return name, None

    def valid(entry: dict) -> float:
        values = [v for k, v in (entry.get("valid") or {}).items() if not k.endswith("_std")
                  and isinstance(v, float)]
        return values[0] if values and np.isfinite(values[0]) else -np.inf

    best = max(entries, key=valid)
    return str(best.get("key") or f"{name}_L{best['layer']}"), int(best["layer"])


def choose_clips(store: TokenStore, config: dict, clips: list[str] | None,
                 count: int) -> list[tuple[int, int | None]]:
    """(store index, class it was chosen for) of the named clips (class None), or of up to `count` clips of the test
    (else valid, else train) split that cover the classes: for each class in turn not yet shown, its first clip."""
    ids = list(store.clip_ids)
    if clips:
        missing = [c for c in clips if c not in ids]
        if missing:
            raise ConfigError(f"{store.path}: no clip(s) {missing[:5]} in this store; pass ids from its clip_ids")
        return [(ids.index(c), None) for c in clips]
    splits = config.get("splits") or {}
    for role in ("test", "valid", "train"):
        names = [name for name in _split_names(splits.get(role)) if name in store.split_names]
        indices = np.sort(np.concatenate([store.split_indices(name) for name in names])) if names else np.zeros(0)
        if len(indices):
            chosen = cover_classes(np.asarray(store.labels), indices, count)
            return chosen or [(int(i), None) for i in indices[:count]]
    return [(i, None) for i in range(min(count, store.n_clips))]


def _split_names(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def prototype_section(run_dir: Path, out_dir: Path, clips: list[str] | None, count: int, top: int,
                      head: str | None) -> tuple[Section, list[Path]]:
    """Figures of where the run's prototype head fires on clips that cover the classes, all on one colour scale."""
    section = Section("Where the prototypes fire")
    found = _prototype_weights(run_dir, head)
    if found is None:
        what = f"head {head!r}" if head else f"a prototype head ({', '.join(PROTOTYPE_KINDS)})"
        section.paragraphs.append(f"{run_dir.name} has no weights of {what}; nothing to draw.")
        return section, []
    name, weights, layer = found
    config = _run_config(run_dir)
    store = TokenStore.open(config["store"], subset=config.get("subset"))  # the run's view: same label columns
    probe_head = load_head(weights)
    layer = config.get("layer") if layer is None else layer
    multilabel = config.get("task", "multilabel") == "multilabel"
    labels = np.asarray(store.labels)
    drawn, manifests = [], {}
    for index, reason in choose_clips(store, config, clips, count):
        tokens = store.read_tokens(layer, index, index + 1)[0]
        mask = store.token_mask(index, index + 1)[0]
        evidence = clip_evidence(probe_head, tokens, mask, multilabel)
        true = {int(c) for c in np.flatnonzero(labels[index])}
        panels = panel_classes(evidence.probabilities, true, predicted_classes(evidence.probabilities, multilabel),
                               min(top, len(store.label_names)))
        drawn.append((index, reason, evidence, panels, clip_background(store, index, tokens, mask, manifests)))
    # One scale for every map of the report: the same colour means the same cosine in every panel and clip.
    limit = max((figures.similarity_limit(e, [c for c, _ in panels]) for _, _, e, panels, _ in drawn), default=1.0)
    covered = sorted({int(c) for index, *_ in drawn for c in np.flatnonzero(labels[index])})
    section.paragraphs.append(
        f"Head {name} ({probe_head.kind}, {weights.name}) on {Path(store.path).name}, layer {layer}; "
        f"{len(drawn)} clip(s) covering {len(covered)} of {len(store.label_names)} classes"
        + (" (for each class in turn, the first clip of the split that has it)" if not clips else "") + ". "
        f"Each row is a class: the {top} most probable, then every true class not among them. The map is the cosine "
        "similarity of every patch token to the prototype that adds most to that class's logit, over the time x "
        f"frequency token grid (green box: the best token), on one scale of ±{limit:.2f} for every panel and clip: "
        "red is similar, blue opposite, uncoloured (cos 0) no evidence. Titles and frames: green ✓ correct, orange ○ "
        "missed true label, red ✗ false positive, grey neither."
    )
    images = []
    for index, reason, evidence, panels, background in drawn:
        clip_id = str(store.clip_ids[index])
        figure = figures.prototype_figure(
            clip_id, panels, store.label_names, evidence, background, store.grid, name, limit=limit,
            reason=None if reason is None else store.label_names[reason], multilabel=multilabel,
        )
        path = figures.save(figure, out_dir / f"prototypes_{_safe(clip_id)}.png")
        images.append(path)
        section.images.append((path, f"{clip_id} ({background.kind}; {background.note})"))
    return section, images


def events_section(run_dir: Path, out_dir: Path, clips: list[str] | None,
                   count: int) -> tuple[Section | None, list[Path]]:
    """A sound-event detection run (event_predictions.csv): each chosen clip's true and predicted events (the lowest
    seed of every head) as timelines under its spectrogram."""
    path = run_dir / "event_predictions.csv"
    if not path.is_file():
        return None, []
    config = _run_config(run_dir)
    store = TokenStore.open(config["store"], subset=config.get("subset"))
    rows = read_csv(path)
    heads = list(dict.fromkeys(row["head"] for row in rows))
    seeds = {head: min(int(row["seed"]) for row in rows if row["head"] == head) for head in heads}
    layer = config.get("layer") if isinstance(config.get("layer"), int) else None
    section = Section("Sound events: true and predicted timelines")
    images, manifests = [], {}
    for index, _ in choose_clips(store, config, clips, count):
        clip_id = str(store.clip_ids[index])
        tokens, mask = store.read_tokens(layer, index, index + 1)[0], store.token_mask(index, index + 1)[0]
        background = clip_background(store, index, tokens, mask, manifests)
        line = sed.timelines(store, [index], np.zeros((1, store.grid[0], len(store.label_names))), 0.0)[0]
        predicted = {head: [(float(r["onset"]), float(r["offset"]), r["label"], float(r["score"])) for r in rows
                            if r["head"] == head and int(r["seed"]) == seeds[head] and r["clip_id"] == clip_id]
                     for head in heads}
        figure = figures.event_timeline_figure(clip_id, background, line.duration, store.label_names, line.truth,
                                               predicted)
        image = figures.save(figure, out_dir / f"events_{_safe(clip_id)}.png")
        images.append(image)
        section.images.append((image, f"{clip_id}: true events and the events of {', '.join(heads)}"))
    section.paragraphs.append(
        f"Run {run_dir.name} (sound-event detection, threshold {config.get('sed', {}).get('threshold')}, median "
        f"filter {config.get('sed', {}).get('median_filter')} s): for {len(images)} test clip(s) chosen to cover the "
        "classes, the spectrogram over one lane per class and source: the true events (dark) and each head's "
        "predicted events (event_predictions.csv, its lowest seed), each bar as opaque as its score. Metrics: sed.csv."
    )
    return section, images


def per_class_section(run_dirs: list[Path], out_dir: Path, heads: list[str] | None,
                      max_runs: int = 4) -> tuple[Section, list[Path]]:
    """Per-class AP of every head (or the named ones) of each run, with error bars over seeds."""
    section = Section("Per-class AP")
    runs = [run for run in run_dirs if (run / "per_class_ap.csv").is_file()]
    if heads:
        available = {item.head for run in runs for item in per_class_ap(run)}
        missing = [h for h in heads if h not in available]
        if missing:
            raise ConfigError(f"no per-class AP for head(s) {missing}; the runs have {sorted(available)}")
    images = []
    for run in runs[:max_runs]:
        names = [h for h in heads if h in {item.head for item in per_class_ap(run)}] if heads else None
        if heads and not names:
            continue
        series = per_class_ap(run, names)
        if not series:
            continue
        if not heads:  # the strongest head first: classes are sorted by its AP
            series.sort(key=lambda item: -np.nan_to_num(item.mean, nan=-1.0))
        stem = "per_class_ap" if len(runs) == 1 else f"per_class_ap_{_safe(run.name)}"
        path = figures.save(figures.per_class_figure(series), out_dir / f"{stem}.png")
        images.append(path)
        seeds = sorted({item.seeds for item in series})
        split = series[0].split if series[0].test_split else f"{series[0].split} (validation: no test split)"
        section.paragraphs.append(
            f"Run {run.name}: heads {', '.join(s.head for s in series)} on split {split}; error bars are the std "
            f"over {'/'.join(map(str, seeds))} seed(s); classes sorted by {series[0].head}'s AP."
        )
        section.images.append((path, f"per-class AP, run {run.name}"))
    if len(runs) > max_runs:
        section.paragraphs.append(f"{len(runs) - max_runs} more run(s) left out; report on a run directory for its "
                                  "per-class AP.")
    if not images:
        section.paragraphs.append("No per_class_ap.csv in the run(s).")
    return section, images


def layers_section(run_dir: Path, out_dir: Path) -> tuple[Section | None, list[Path]]:
    """A run over several layers: each head's score per layer, and a layer-mixing head's learned weights."""
    scores = layer_scores(run_dir)
    if scores is None:
        return None, []
    path = figures.save(figures.layers_figure(scores), out_dir / "layers.png")
    section = Section("Layers", images=[(path, "score per layer, one line per head")])
    lines = []
    for curve in scores.curves:
        if curve.weights is not None:
            top = int(np.argmax(curve.weights))
            lines.append(f"{curve.head} mixes layers {curve.layers[0]}-{curve.layers[-1]} with most weight on layer "
                         f"{curve.layers[top]} ({curve.weights[top]:.2f})")
        elif np.isfinite(curve.mean).any():
            best = int(np.nanargmax(curve.mean))
            lines.append(f"{curve.head} is best on layer {curve.layers[best]} ({curve.mean[best]:.3f})")
    section.paragraphs.append(
        f"Run {scores.run} trained every head on every chosen layer in one pass; each point is that head's chosen "
        f"configuration on that layer ({scores.metric} on {scores.split}, mean ± std over seeds); the numbers are in "
        f"layers.csv. " + "; ".join(lines) + "."
    )
    return section, [path]


def curves_section(run_dir: Path, out_dir: Path) -> tuple[Section | None, list[Path]]:
    """One small panel pair (train loss, validation metric) per head of the run's curves.csv."""
    if not (run_dir / "curves.csv").is_file():
        return None, []
    rows = read_csv(run_dir / "curves.csv")
    metric = next((c.removeprefix("valid_") for c in (rows[0] if rows else {}) if c.startswith("valid_")), None)
    if not rows or not metric:
        return None, []
    titles: dict[str, list[str]] = {}
    kinds = {}
    for entry in _run_config(run_dir).get("heads", []):
        extra = "".join(f" {key}={value}" for key, value in sorted((entry.get("options") or {}).items()))
        key = f"{entry['kind']}{extra}"
        titles.setdefault(key, []).append(entry["name"])
        kinds[entry["name"]] = key
    chosen = {kinds[h["head"]]: (float(h["lr"]), float(h["weight_decay"])) for h in _metrics_heads(run_dir)
              if h.get("head") in kinds and len(titles[kinds[h["head"]]]) == 1}
    figure = figures.curve_figure(rows, metric, titles={k: " / ".join(v) for k, v in titles.items()}, chosen=chosen)
    path = figures.save(figure, out_dir / "curves.png")
    count = len({figures.curve_group(row["head"]) for row in rows})
    section = Section("Training curves", images=[(path, "train loss and validation metric, one panel per head")])
    section.paragraphs.append(
        f"{len({row['head'] for row in rows})} curves of run {run_dir.name}, one panel pair per head ({count}): "
        "colour is the lr x weight decay configuration (the chosen one thick), line style the seed."
    )
    return section, [path]


def _metrics_heads(run_dir: Path) -> list[dict]:
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("heads") or []
    except (OSError, ValueError, AttributeError):
        return []


def build_report(
    source: str | Path,
    out_dir: str | Path,
    clips: list[str] | None = None,
    n_clips: int = 6,
    top_classes: int = 3,
    heads: list[str] | None = None,
    prototype_head: str | None = None,
) -> ReportResult:
    """Write PNGs, head_table.md and one self-contained report.html for a run, sweep or ledger into out_dir.

    n_clips: at most this many clips for the prototype maps, chosen to cover the classes (unless `clips` names them);
    heads: the heads whose per-class AP is drawn (default: every head of each run);
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
        section, drawn = events_section(sources.run_dirs[0], out_dir, clips, n_clips)
        if section is not None:
            sections.append(section)
            images += drawn
        section, drawn = per_class_section(sources.run_dirs, out_dir, heads)
        sections.append(section)
        images += drawn
        section, drawn = layers_section(sources.run_dirs[0], out_dir)
        if section is not None:
            sections.append(section)
            images += drawn
    else:
        notes.append("no probe run directory found: no prototype maps or per-class AP")

    section = Section("Head tables (one per store and subset)")
    if sources.ledger is not None:
        tables = head_tables(read_ledger(sources.ledger, log=notes.append))
        table_path = out_dir / "head_table.md"
        table_path.write_text("\n\n".join(table.to_markdown() for table in tables) + "\n")
        section.paragraphs.append(
            f"From {sources.ledger.name}: one table per store (path and fingerprint) and subset, so no table mixes "
            "data; each cell is the latest tested run's test metric, mean ± std over seeds, in %, the best test cell "
            "highlighted. A head that no run tested (no test split) shows its latest validation number, marked † and "
            "never counted as a test number."
        )
        if len(tables) > 1:
            notes.append(f"{sources.ledger.name} mixes {len(tables)} stores/subsets: one head table each")
        section.tables += [head_table_html(table) for table in tables]
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

    if sources.run_dirs:
        section, drawn = curves_section(sources.run_dirs[0], out_dir)
        if section is not None:
            sections.append(section)
            images += drawn

    html_path = out_dir / "report.html"
    html_path.write_text(render_page(f"embedcache report: {sources.source.name}", str(sources.source), sections))
    return ReportResult(html_path, images, table_path, notes)

