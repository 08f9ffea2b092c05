"""The report's figures, drawn with matplotlib's object API (no pyplot state, no display needed), saved as PNG.

Every figure keeps one colour scale for all its panels (with one colour bar), names every line in a legend, and
keeps tick labels apart (class names are abbreviated and laid out one per row).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullFormatter

from embedcache.report.evidence import (
    CORRECT,
    FALSE_POSITIVE,
    MISSED,
    NEITHER,
    Background,
    ClipEvidence,
    grid_map,
)
from embedcache.report.tables import METRIC_NAMES, LayerScores, PerClassAP, SweepTrials

DPI = 110
# Marker, colour and meaning of each status a drawn class can have (text colour, frame colour and legend).
STATUS_STYLE = {
    CORRECT: ("✓", "#1a7f37", "correct: true and predicted"),
    MISSED: ("○", "#c45f00", "missed: true, not predicted"),
    FALSE_POSITIVE: ("✗", "#c62828", "false positive: predicted, not true"),
    NEITHER: ("·", "#555555", "neither true nor predicted"),
}
SIMILARITY_LABEL = "cosine similarity of each token to the prototype (0 = no evidence)"
HEAD_MARKERS = "osD^vPX*<>"


def diverging_overlay(name: str = "RdBu_r", max_alpha: float = 0.7) -> ListedColormap:
    """A diverging colormap whose opacity grows with distance from its centre, so cos 0 (no evidence) leaves the
    spectrogram untouched and only strong similarity (either sign) colours it."""
    colors = colormaps[name](np.linspace(0.0, 1.0, 256))
    colors[:, 3] = max_alpha * np.abs(np.linspace(-1.0, 1.0, 256)) ** 0.8
    return ListedColormap(colors, name=f"{name}_overlay")


def centred_norm(limit: float) -> Normalize:
    """A colour scale from -limit to +limit: 0 sits in the middle of the colormap."""
    limit = float(limit) if np.isfinite(limit) and limit > 0 else 1.0
    return Normalize(vmin=-limit, vmax=limit)


def save(figure: Figure, path: Path) -> Path:
    """Write the figure as PNG and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    return path


def short_label(name: str, width: int = 28) -> str:
    """A class name cut to `width` characters with an ellipsis, so tick labels keep to their row."""
    return name if len(name) <= width else name[: width - 1] + "…"


# -- where the prototypes fire -------------------------------------------------------------------------------
def similarity_limit(evidence: ClipEvidence, classes: Sequence[int]) -> float:
    """The largest |cos| on the maps drawn for `classes` (their best prototypes), for a colour scale shared by all."""
    columns = [evidence.best_prototype(c) for c in classes]
    values = np.abs(evidence.similarity[:, columns]) if columns else np.zeros(0)
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else 0.0


def prototype_figure(clip_id: str, panels: Sequence[tuple[int, str]], label_names: Sequence[str],
                     evidence: ClipEvidence, background: Background, grid: tuple[int, int], head_name: str,
                     limit: float | None = None, reason: str | None = None, multilabel: bool = True) -> Figure:
    """One row per drawn class (panels: (class, status) from `panel_classes`): the clip's spectrogram with the
    similarity of every token to the class's best prototype, all rows on one centred scale of +-limit (default: the
    largest |cos| drawn) with one colour bar; titles and frames coloured by status."""
    if limit is None:
        limit = similarity_limit(evidence, [c for c, _ in panels])
    norm, overlay_map = centred_norm(limit), diverging_overlay()
    figure = Figure(figsize=(9.5, 2.1 * len(panels) + 1.3), layout="constrained")
    n_time, n_freq = grid
    if background.seconds is not None:
        extent = (0.0, background.seconds, 0.0, float(background.image.shape[0]))
        xlabel, ylabel = "time (s)", "mel bin"
    else:
        extent = (0.0, float(n_time), 0.0, float(n_freq))
        xlabel, ylabel = "time token", "frequency token"
    finite = background.image[np.isfinite(background.image)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    cell_w, cell_h = (extent[1] - extent[0]) / n_time, (extent[3] - extent[2]) / n_freq
    true = [label_names[c] for c, status in panels if status in (CORRECT, MISSED)]
    predicted = [label_names[c] for c, status in panels if status in (CORRECT, FALSE_POSITIVE)]
    rule = "p ≥ 0.5" if multilabel else "the most probable class"
    figure.suptitle(
        f"{clip_id}{f' (chosen for {reason})' if reason else ''} · head {head_name}\n"
        f"true: {', '.join(true) or '(none)'}  ·  predicted ({rule}): {', '.join(predicted) or '(none)'}",
        fontsize=10, x=0.01, ha="left",
    )
    axes = []
    for row, (label, status) in enumerate(panels):
        axis = figure.add_subplot(len(panels), 1, row + 1, sharex=axes[0] if axes else None)
        axes.append(axis)
        axis.imshow(background.image, origin="lower", aspect="auto", extent=extent, cmap="gray", vmin=low,
                    vmax=max(high, low + 1e-6), interpolation="nearest")
        prototype = evidence.best_prototype(label)
        similarity = grid_map(evidence.similarity[:, prototype], grid)  # [n_freq, n_time]
        overlay = axis.imshow(similarity, origin="lower", aspect="auto", extent=extent, cmap=overlay_map, norm=norm,
                              interpolation="nearest")
        overlay.set_label("similarity")
        if np.isfinite(similarity).any():
            f, t = np.unravel_index(np.nanargmax(similarity), similarity.shape)
            axis.add_patch(Rectangle((extent[0] + t * cell_w, extent[2] + f * cell_h), cell_w, cell_h, fill=False,
                                     edgecolor="lime", linewidth=2.0))
        mark, colour, _ = STATUS_STYLE[status]
        axis.set_title(
            f"{mark} {label_names[label]} ({status})   p={evidence.probabilities[label]:.2f}   prototype {prototype}: "
            f"max cos {evidence.scores[prototype]:.2f}, adds {evidence.contributions[label, prototype]:+.2f} "
            "to the logit",
            fontsize=9, loc="left", color=colour, fontweight="bold" if status != NEITHER else "normal",
        )
        for spine in axis.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(2.0 if status != NEITHER else 0.8)
        axis.set_ylabel(ylabel, fontsize=8)
        axis.tick_params(labelsize=8, labelbottom=row == len(panels) - 1)
    axes[-1].set_xlabel(f"{xlabel}   (background: {background.note}; green box: the best token)", fontsize=8)
    figure.colorbar(ScalarMappable(norm=norm, cmap=overlay_map), ax=axes, fraction=0.03, pad=0.01, shrink=0.9,
                    label="cos (shared scale)").ax.tick_params(labelsize=8)
    handles = [Line2D([], [], marker="s", linestyle="none", markersize=9, color=colour, label=f"{mark} {meaning}")
               for mark, colour, meaning in STATUS_STYLE.values()]
    figure.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8, frameon=False,
                  title=f"colour: {SIMILARITY_LABEL}", title_fontsize=8)
    return figure


# -- sound events ---------------------------------------------------------------------------------------------
TRUE_COLOUR = "#222222"


def event_timeline_figure(clip_id: str, background: Background, duration: float, label_names: Sequence[str],
                          truth: Sequence[tuple[float, float, str]],
                          predicted: dict[str, Sequence[tuple[float, float, str, float]]]) -> Figure:
    """The clip's spectrogram over its event timelines on one time axis (seconds): per class one lane of true events
    (dark) and one per head of its predicted events (`predicted`: head -> (onset, offset, label, score)), each bar's
    opacity its score."""
    heads = list(predicted)
    lanes = [(label, head) for label in label_names for head in [None, *heads]]
    colours = {head: colormaps["tab10"](i % 10) for i, head in enumerate(heads)}
    figure = Figure(figsize=(9.5, 2.4 + 0.22 * len(lanes)), layout="constrained")
    spectrum, timeline = figure.subplots(2, 1, sharex=True, height_ratios=[2.0, max(1.0, 0.16 * len(lanes))])
    seconds = background.seconds if background.seconds is not None else duration
    finite = background.image[np.isfinite(background.image)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    spectrum.imshow(background.image, origin="lower", aspect="auto", cmap="magma", vmin=low,
                    vmax=max(high, low + 1e-6), extent=(0.0, seconds, 0.0, float(background.image.shape[0])),
                    interpolation="nearest")
    spectrum.set_ylabel("mel bin" if background.kind == "spectrogram" else "frequency token", fontsize=8)
    spectrum.set_title(f"{clip_id}: true events and each head's predictions ({background.note})", fontsize=9,
                       loc="left")
    row = {lane: len(lanes) - 1 - i for i, lane in enumerate(lanes)}  # first class on top
    for onset, offset, label in truth:
        timeline.broken_barh([(onset, offset - onset)], (row[(label, None)] + 0.15, 0.7), facecolors=TRUE_COLOUR,
                             label="true")
    for head, events in predicted.items():
        for onset, offset, label, score in events:
            timeline.broken_barh([(onset, offset - onset)], (row[(label, head)] + 0.15, 0.7),
                                 facecolors=colours[head], alpha=float(np.clip(0.35 + 0.65 * score, 0.35, 1.0)),
                                 label=head)
    timeline.set_yticks([row[lane] + 0.5 for lane in lanes],
                        [f"{short_label(label, 20)} · {'true' if head is None else head}" for label, head in lanes],
                        fontsize=7)
    for i in range(1, len(label_names)):
        timeline.axhline(len(lanes) - i * (len(heads) + 1), color="#bbbbbb", linewidth=0.6)
    timeline.set_ylim(0, len(lanes))
    timeline.set_xlim(0.0, duration)
    timeline.set_xlabel("time (s)", fontsize=8)
    timeline.tick_params(labelsize=8)
    handles = [Rectangle((0, 0), 1, 1, color=TRUE_COLOUR, label="true event")]
    handles += [Rectangle((0, 0), 1, 1, color=colours[head], label=f"{head} (opacity: score)") for head in heads]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8, frameon=False)
    return figure


# -- per-class AP --------------------------------------------------------------------------------------------
def head_styles(count: int) -> list[tuple[tuple, str]]:
    """(colour, marker) per head: tab10 colours and a marker each, so heads stay apart beyond ten."""
    palette = colormaps["tab10"].colors
    return [(palette[i % len(palette)], HEAD_MARKERS[i % len(HEAD_MARKERS)]) for i in range(count)]


def _head_legend(item: PerClassAP) -> str:
    spread = f"std over {item.seeds} seeds" if item.seeds > 1 else "1 seed: no spread"
    return f"{item.head} (mAP {item.mean:.3f}; {spread})"


def per_class_figure(series: Sequence[PerClassAP], max_named: int = 40) -> Figure:
    """Per-class AP of every head with error bars (std over seeds), classes sorted by the first head's AP.

    Up to `max_named` classes: one row per class, named on the y axis (no rotated or overlapping labels); more: AP
    by class rank, points with error bars.
    """
    first = series[0]
    order = np.argsort(-np.nan_to_num(first.ap, nan=-1.0), kind="stable")
    count, styles = len(order), head_styles(len(series))
    split = first.split if first.test_split else f"{first.split} (validation: the run has no test split)"
    if count <= max_named:
        band = max(0.3, 0.1 * len(series))  # inches per class row
        figure = Figure(figsize=(9.0, band * count + 1.9), layout="constrained")
        axis = figure.add_subplot(1, 1, 1)
        rows = np.arange(count)
        step = 0.8 / len(series)
        for i, (item, (colour, marker)) in enumerate(zip(series, styles)):
            offset = (i - (len(series) - 1) / 2) * step
            axis.errorbar(item.ap[order], rows + offset, xerr=np.nan_to_num(item.std[order]), fmt=marker,
                          color=colour, markersize=5, elinewidth=1.2, capsize=2.5, label=_head_legend(item))
        axis.set_yticks(rows, [short_label(first.labels[i]) for i in order], fontsize=8)
        axis.set_ylim(count - 0.5, -0.5)  # the best class on top
        axis.set_xlim(0, 1.02)
        axis.set_xlabel(f"AP on {split}, mean ± std over seeds")
        axis.grid(axis="x", alpha=0.3)
        for boundary in rows[:-1] + 0.5:
            axis.axhline(boundary, color="#eeeeee", linewidth=0.6, zorder=0)
    else:
        figure = Figure(figsize=(11.0, 4.4), layout="constrained")
        axis = figure.add_subplot(1, 1, 1)
        x = np.arange(count)
        for item, (colour, marker) in zip(series, styles):
            axis.errorbar(x, item.ap[order], yerr=np.nan_to_num(item.std[order]), fmt=marker, color=colour,
                          markersize=2.5, elinewidth=0.5, alpha=0.8, label=_head_legend(item))
        axis.set_xlabel(f"class rank by {first.head}'s AP ({count} classes)")
        axis.set_ylim(0, 1.02)
        axis.set_ylabel(f"AP on {split}")
        axis.grid(axis="y", alpha=0.3)
    axis.set_title(f"per-class AP of {len(series)} head(s), sorted by {first.head}", fontsize=10, loc="left")
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return figure


# -- layers --------------------------------------------------------------------------------------------------
def layers_figure(scores: LayerScores) -> Figure:
    """Score vs layer, one line per head with error bars (std over seeds); a layer-mixing head is a dashed level
    over the layers it mixes, and its softmax weight per layer gets a panel of its own below."""
    mixes = [curve for curve in scores.curves if curve.weights is not None]
    figure = Figure(figsize=(8.0, 6.8 if mixes else 4.2), layout="constrained")
    axis = figure.add_subplot(2 if mixes else 1, 1, 1)
    styles = head_styles(len(scores.curves))
    every = sorted({layer for curve in scores.curves for layer in curve.layers})
    split = scores.split if scores.split == "test" else "valid (the run has no test split)"
    label = f"{METRIC_NAMES.get(scores.metric, scores.metric)} on {split}"
    for curve, (colour, marker) in zip(scores.curves, styles):
        spread = f"{curve.mean[0]:.3f} ± {curve.std[0]:.3f}" if len(curve.mean) else "-"
        if curve.weights is not None:
            span = [min(curve.layers) - 0.3, max(curve.layers) + 0.3]
            axis.plot(span, [curve.mean[0]] * 2, linestyle="--", color=colour, linewidth=1.8,
                      label=f"{curve.head}{'' if curve.head == curve.kind else f' ({curve.kind})'}: mix of "
                      f"{len(curve.layers)} layers, {spread}")
            axis.fill_between(span, curve.mean[0] - curve.std[0], curve.mean[0] + curve.std[0], color=colour,
                              alpha=0.12, linewidth=0)
            continue
        best = int(np.nanargmax(curve.mean)) if np.isfinite(curve.mean).any() else 0
        axis.errorbar(curve.layers, curve.mean, yerr=np.nan_to_num(curve.std), fmt=f"-{marker}", color=colour,
                      markersize=5, capsize=2.5, label=f"{curve.head} (best layer {curve.layers[best]}: "
                      f"{curve.mean[best]:.3f})")
    shown = every[:: math.ceil(len(every) / 16)] if every else every  # at most 16 tick labels: they never crowd
    axis.set_xticks(shown, [str(layer) for layer in shown])
    axis.set_xlabel("layer")
    axis.set_ylabel(label)
    axis.grid(alpha=0.3)
    axis.set_title(f"{label} per layer, mean ± std over seeds (run {scores.run})", fontsize=10, loc="left")
    axis.legend(fontsize=8, loc="best")
    if mixes:
        weights_axis = figure.add_subplot(2, 1, 2, sharex=axis)
        width = 0.8 / len(mixes)
        mix_styles = [styles[scores.curves.index(curve)] for curve in mixes]
        for i, (curve, (colour, _)) in enumerate(zip(mixes, mix_styles)):
            offset = (i - (len(mixes) - 1) / 2) * width
            weights_axis.bar(np.array(curve.layers) + offset, curve.weights, width, yerr=curve.weights_std,
                             color=colour, alpha=0.8, capsize=2, label=curve.head)
        weights_axis.axhline(1.0 / max(len(mixes[0].layers), 1), color="#777777", linewidth=0.8, linestyle=":",
                             label="uniform")
        weights_axis.set_xlabel("layer")
        weights_axis.set_ylabel("softmax weight")
        weights_axis.grid(axis="y", alpha=0.3)
        weights_axis.set_title("learned layer weights of the layer-mixing head(s), mean ± std over seeds",
                               fontsize=10, loc="left")
        weights_axis.legend(fontsize=8, loc="best")
    return figure


# -- sweeps --------------------------------------------------------------------------------------------------
def sweep_figure(trials: SweepTrials) -> Figure:
    """lr x weight decay (log axes) coloured by validation metric, one panel per head on one colour scale (one
    colour bar); pruned/failed marked."""
    heads = list(dict.fromkeys(trials.head))
    figure = Figure(figsize=(4.8 * len(heads) + 1.0, 4.2), layout="constrained")
    values = trials.value[np.isfinite(trials.value)]
    norm = Normalize(*((float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)))
    state = np.array(trials.state)
    axes = []
    for i, head in enumerate(heads):
        axis = figure.add_subplot(1, len(heads), i + 1)
        axes.append(axis)
        mine = np.array([h == head for h in trials.head])
        complete = mine & (state == "complete") & np.isfinite(trials.value)
        axis.scatter(trials.lr[complete], trials.weight_decay[complete], c=trials.value[complete], cmap="viridis",
                     norm=norm, s=60, edgecolors="black", linewidths=0.5, label="complete", zorder=3)
        pruned = mine & (state == "pruned")
        if pruned.any():
            axis.scatter(trials.lr[pruned], trials.weight_decay[pruned], marker="x", c="tab:gray", s=40,
                         label=f"pruned ({int(pruned.sum())})", zorder=2)
        failed = mine & np.isin(state, ["fail", "running"]) | (mine & (state == "complete") & ~complete)
        if failed.any():
            axis.scatter(trials.lr[failed], trials.weight_decay[failed], marker="x", c="tab:red", s=40,
                         label=f"failed / unfinished ({int(failed.sum())})", zorder=2)
        if complete.any():
            best = np.flatnonzero(complete)[np.argmax(trials.value[complete])]
            axis.scatter([trials.lr[best]], [trials.weight_decay[best]], marker="*", s=260, facecolors="none",
                         edgecolors="red", linewidths=1.5, label=f"best {trials.value[best]:.3f}", zorder=4)
        axis.set_xscale("log")
        axis.set_yscale("log")
        _log_ticks(axis.xaxis, trials.lr[mine])
        _log_ticks(axis.yaxis, trials.weight_decay[mine])
        axis.set_xlabel("learning rate")
        axis.set_ylabel("weight decay")
        axis.set_title(f"{head}: {int(mine.sum())} configurations", fontsize=10)
        axis.legend(fontsize=7, loc="best")
    figure.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=axes,
                    label=f"valid {METRIC_NAMES.get(trials.metric, trials.metric)}")
    return figure


def _log_ticks(axis, values: np.ndarray, at_most: int = 6) -> None:
    """Label a log axis at the grid's own values when there are few (0.003, 0.01, 0.03), else at decades only;
    never the crowded minor labels matplotlib puts on a narrow log range."""
    axis.set_minor_formatter(NullFormatter())
    unique = np.unique(values[np.isfinite(values) & (values > 0)])
    if 0 < len(unique) <= at_most:
        axis.set_ticks(unique, [f"{v:g}" for v in unique])


# -- training curves -----------------------------------------------------------------------------------------
def curve_group(label: str) -> str:
    """A curves.csv head label without its lr, weight decay and seed: the kind and options that every configuration
    of one head shares ("protobin lr=0.01 wd=0.0001 seed=0" -> "protobin")."""
    return re.sub(r" seed=\S+$", "", re.sub(r" lr=\S+ wd=\S+", "", label))


def _config_name(lr: float, weight_decay: float) -> str:
    return f"lr={lr:g} wd={weight_decay:g}"


def curve_figure(rows: Sequence[dict], metric: str, titles: dict[str, str] | None = None,
                 chosen: dict[str, tuple[float, float]] | None = None, columns: int = 3) -> Figure:
    """Small multiples of a run's curves.csv: per head (kind and options) a train-loss panel over a validation
    panel; colour = lr x weight decay (legend, the chosen one drawn thick), line style = seed. The validation panels
    share their y axis.

    titles / chosen: per `curve_group` key, the head name(s) and the (lr, wd) the run chose.
    """
    titles, chosen = titles or {}, chosen or {}
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(curve_group(row["head"]), []).append(row)
    ncols = min(len(groups), columns)
    nrows = math.ceil(len(groups) / ncols)
    figure = Figure(figsize=(4.7 * ncols, 5.6 * nrows), layout="constrained")
    grid = figure.add_gridspec(2 * nrows, ncols, height_ratios=[1.0, 1.25] * nrows)
    styles = ["-", "--", ":", "-."]
    value_key, metric_axes = f"valid_{metric}", []
    for index, (group, members) in enumerate(groups.items()):
        r, c = divmod(index, ncols)
        loss_axis = figure.add_subplot(grid[2 * r, c])
        metric_axis = figure.add_subplot(grid[2 * r + 1, c], sharex=loss_axis,
                                         sharey=metric_axes[0] if metric_axes else None)
        metric_axes.append(metric_axis)
        configs = sorted({(float(m["lr"]), float(m["weight_decay"])) for m in members})
        seeds = sorted({m["seed"] for m in members}, key=lambda s: (len(s), s))
        colours = colormaps["plasma"](np.linspace(0.05, 0.8, len(configs)))
        best = chosen.get(group)
        thick = [best is not None and math.isclose(lr, best[0]) and math.isclose(wd, best[1]) for lr, wd in configs]
        for (lr, wd), colour, bold in zip(configs, colours, thick):
            for seed in seeds:
                line = [m for m in members if (float(m["lr"]), float(m["weight_decay"])) == (lr, wd)
                        and m["seed"] == seed]
                epochs = [int(m["epoch"]) for m in line]
                style = {"color": colour, "linestyle": styles[seeds.index(seed) % len(styles)],
                         "linewidth": 2.2 if bold else 1.1}
                loss_axis.plot(epochs, [float(m["train_loss"]) for m in line], **style)
                values = [(e, float(m[value_key])) for e, m in zip(epochs, line) if m.get(value_key)]
                if values:
                    metric_axis.plot(*zip(*values), **style)
        if any(float(m["train_loss"]) > 0 for m in members):
            loss_axis.set_yscale("log", nonpositive="clip")
        loss_axis.set_title(f"{titles.get(group, group)}: {len(configs)} config(s) x {len(seeds)} seed(s)",
                            fontsize=10, loc="left")
        loss_axis.set_ylabel("train loss", fontsize=8)
        loss_axis.tick_params(labelbottom=False, labelsize=8)
        metric_axis.set_ylabel(f"valid {METRIC_NAMES.get(metric, metric)}", fontsize=8)
        metric_axis.set_xlabel("epoch", fontsize=8)
        metric_axis.tick_params(labelsize=8)
        for axis in (loss_axis, metric_axis):
            axis.grid(alpha=0.3)
        handles = [Line2D([], [], color=colour, linewidth=2.2 if bold else 1.1,
                          label=_config_name(lr, wd) + (" (chosen)" if bold else ""))
                   for (lr, wd), colour, bold in zip(configs, colours, thick)]
        if len(seeds) > 1:
            handles += [Line2D([], [], color="black", linewidth=1.1, linestyle=styles[i % len(styles)],
                               label=f"seed {seed}") for i, seed in enumerate(seeds)]
        metric_axis.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2,
                           frameon=False)
    return figure
