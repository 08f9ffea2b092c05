"""Probe results on disk: per-clip predictions and confusion matrices (the run directory's other files are written by
`probe` for now; this is where they are moving)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Predictions:
    """Scores [N, C] per (head, seed) for N clips, their ids (and recordings for windows), and true labels if known."""

    clip_ids: np.ndarray
    label_names: list[str]
    scores: dict[tuple[str, int], np.ndarray]
    labels: np.ndarray | None = None
    recording_ids: np.ndarray | None = None


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
