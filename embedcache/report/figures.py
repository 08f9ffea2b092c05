"""The report's figures, drawn with matplotlib's object API (no pyplot state, no display needed), saved as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from embedcache.report.evidence import Background, ClipEvidence, grid_map
from embedcache.report.tables import PerClassAP, SweepTrials

DPI = 110


def fading_colormap(name: str = "autumn_r", max_alpha: float = 0.8) -> ListedColormap:
    """A colormap whose opacity rises with the value, so weak similarity leaves the spectrogram visible."""
    colors = colormaps[name](np.linspace(0.0, 1.0, 256))
    colors[:, 3] = np.linspace(0.0, max_alpha, 256) ** 1.5
    return ListedColormap(colors, name=f"{name}_fading")


def save(figure: Figure, path: Path) -> Path:
    """Write the figure as PNG and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    return path


def prototype_figure(clip_id: str, true_labels: Sequence[str], label_names: Sequence[str], evidence: ClipEvidence,
                     background: Background, grid: tuple[int, int], head_name: str, top: int = 3) -> Figure:
    """One row per top class: the clip's spectrogram with its best prototype's similarity over the token grid."""
    classes = evidence.top_classes(top)
    figure = Figure(figsize=(9.5, 2.6 * len(classes) + 0.4), layout="constrained")
    n_time, n_freq = grid
    if background.seconds is not None:
        extent = (0.0, background.seconds, 0.0, float(background.image.shape[0]))
        xlabel, ylabel = "time (s)", "mel bin"
    else:
        extent = (0.0, float(n_time), 0.0, float(n_freq))
        xlabel, ylabel = "time token", "frequency token"
    cell_w, cell_h = (extent[1] - extent[0]) / n_time, (extent[3] - extent[2]) / n_freq
    figure.suptitle(f"{clip_id}: true labels {', '.join(true_labels) or '(none)'}; head {head_name}",
                    fontsize=10, x=0.01, ha="left")
    for row, label in enumerate(classes):
        axis = figure.add_subplot(len(classes), 1, row + 1)
        axis.imshow(background.image, origin="lower", aspect="auto", extent=extent, cmap="gray",
                    interpolation="nearest")
        prototype = evidence.best_prototype(label)
        similarity = grid_map(evidence.similarity[:, prototype], grid)  # [n_freq, n_time]
        finite = similarity[np.isfinite(similarity)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
        overlay = axis.imshow(similarity, origin="lower", aspect="auto", extent=extent, cmap=fading_colormap(),
                              vmin=low, vmax=max(high, low + 1e-6), interpolation="nearest")
        if np.isfinite(similarity).any():
            f, t = np.unravel_index(np.nanargmax(similarity), similarity.shape)
            axis.add_patch(Rectangle((extent[0] + t * cell_w, extent[2] + f * cell_h), cell_w, cell_h, fill=False,
                                     edgecolor="cyan", linewidth=2.0))
        mark = "✓" if label_names[label] in true_labels else "✗"
        axis.set_title(
            f"{mark} {label_names[label]}  p={evidence.probabilities[label]:.2f}  prototype {prototype}: "
            f"max cos {evidence.scores[prototype]:.2f}, "
            f"adds {evidence.contributions[label, prototype]:+.2f} to the logit",
            fontsize=9, loc="left",
        )
        axis.set_ylabel(ylabel, fontsize=8)
        if row == len(classes) - 1:
            axis.set_xlabel(f"{xlabel}   (background: {background.note})", fontsize=8)
        figure.colorbar(overlay, ax=axis, fraction=0.025, pad=0.01, label="cos")
    return figure


def per_class_figure(series: Sequence[PerClassAP], max_named: int = 40) -> Figure:
    """Per-class AP of two (or more) heads, classes sorted by the first head's AP, best first."""
    first = series[0]
    order = np.argsort(-np.nan_to_num(first.ap, nan=-1.0), kind="stable")
    count = len(order)
    width = max(7.0, min(18.0, 0.28 * count + 3)) if count <= max_named else 10.0
    figure = Figure(figsize=(width, 4.2), layout="constrained")
    axis = figure.add_subplot(1, 1, 1)
    x = np.arange(count)
    if count <= max_named:
        width = 0.8 / len(series)
        for i, item in enumerate(series):
            axis.bar(x + (i - (len(series) - 1) / 2) * width, item.ap[order], width,
                     label=f"{item.head} (mean {np.nanmean(item.ap):.3f})")
        axis.set_xticks(x, [first.labels[i] for i in order], rotation=60, ha="right", fontsize=7)
    else:
        for item in series:
            axis.plot(x, item.ap[order], marker=".", linestyle="none", markersize=3,
                      label=f"{item.head} (mean {np.nanmean(item.ap):.3f})")
        axis.set_xlabel(f"class rank by {first.head}'s AP ({count} classes)")
    axis.set_ylim(0, 1.02)
    axis.set_ylabel(f"AP ({first.split})")
    axis.set_title(f"per-class AP, sorted by {first.head}", fontsize=10)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    return figure


def sweep_figure(trials: SweepTrials) -> Figure:
    """lr x weight decay (log axes) coloured by validation metric, one panel per head; pruned/failed marked."""
    heads = list(dict.fromkeys(trials.head))
    figure = Figure(figsize=(5.2 * len(heads), 4.2), layout="constrained")
    values = trials.value[np.isfinite(trials.value)]
    vmin, vmax = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    state = np.array(trials.state)
    for i, head in enumerate(heads):
        axis = figure.add_subplot(1, len(heads), i + 1)
        mine = np.array([h == head for h in trials.head])
        complete = mine & (state == "complete") & np.isfinite(trials.value)
        points = axis.scatter(trials.lr[complete], trials.weight_decay[complete], c=trials.value[complete],
                              cmap="viridis", vmin=vmin, vmax=vmax, s=60, edgecolors="black", linewidths=0.5,
                              label="complete", zorder=3)
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
        axis.set_xlabel("learning rate")
        axis.set_ylabel("weight decay")
        axis.set_title(f"{head}: {int(mine.sum())} configurations", fontsize=10)
        axis.legend(fontsize=7, loc="best")
        figure.colorbar(points, ax=axis, label=f"valid {trials.metric}")
    return figure


def curve_figure(rows: Sequence[dict], metric: str) -> Figure:
    """Validation metric per epoch of every head configuration in a run's curves.csv (log-scaled loss beside it)."""
    figure = Figure(figsize=(13, 3.8), layout="constrained")
    loss_axis, metric_axis = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["head"], []).append(row)  # the head label already names lr, wd and seed
    for label, members in groups.items():
        epochs = [int(m["epoch"]) for m in members]
        losses = [float(m["train_loss"]) for m in members]
        loss_axis.plot(epochs, losses, label=label, linewidth=1)
        values = [(e, float(m[f"valid_{metric}"])) for e, m in zip(epochs, members) if m.get(f"valid_{metric}")]
        if values:
            metric_axis.plot(*zip(*values), label=label, linewidth=1)
    if any(float(r["train_loss"]) > 0 for r in rows):
        loss_axis.set_yscale("log", nonpositive="clip")
    loss_axis.set_title("train loss", fontsize=10)
    metric_axis.set_title(f"valid {metric}", fontsize=10)
    for axis in (loss_axis, metric_axis):
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    if len(groups) <= 12:
        metric_axis.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return figure

