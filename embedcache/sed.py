"""Sound-event detection from frame scores: each row's scores on its own timeline (seconds), median-filtered; timed
events above a threshold; and DCASE's metrics from sed_scores_eval (the optional extra `sed`): threshold-independent
PSDS1 and PSDS2, collar-based (event) and segment-based F1.

Metrics are never re-implemented here: sed_scores_eval computes them from the score timelines and the true events.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedcache import metrics
from embedcache.errors import ConfigError
from embedcache.events import merged, row_events
from embedcache.store import TokenStore

EXTRA = "sed"
# DCASE 2021-2023 task 4's two PSDS scenarios (intersection-based, eFPR per hour up to 100).
PSDS1 = {"dtc_threshold": 0.7, "gtc_threshold": 0.7, "cttc_threshold": None, "alpha_ct": 0.0, "alpha_st": 1.0,
         "max_efpr": 100.0}
PSDS2 = {"dtc_threshold": 0.1, "gtc_threshold": 0.1, "cttc_threshold": 0.3, "alpha_ct": 0.5, "alpha_st": 1.0,
         "max_efpr": 100.0}
# sed_eval's event-based F1 (DCASE): 200 ms onset collar, offset collar max(200 ms, 20 % of the event); 1 s segments.
EVENT_COLLARS = {"onset_collar": 0.2, "offset_collar": 0.2, "offset_collar_rate": 0.2}
SEGMENT_SECONDS = 1.0
METRICS = ("psds1", "psds2", "event_f1", "segment_f1")
# probe's `sed` settings: frame scores median-filtered over this many seconds (0: none), events above threshold.
DEFAULTS = {"median_filter": 0.5, "threshold": 0.5}


def sed_scores_eval():
    """The sed_scores_eval package, or a one-line ConfigError naming the extra that installs it."""
    try:
        import sed_scores_eval as package
    except ImportError:
        raise ConfigError(f"sound-event metrics need sed_scores_eval: pip install 'embedcache[{EXTRA}]'") from None
    return package


# -- timelines -------------------------------------------------------------------------------------------------
@dataclass
class Timeline:
    """One row's frame scores on its own time axis: timestamps [n + 1] seconds between its n valid steps, scores
    [n, C], its duration in seconds and its true events (onset, offset, label) in seconds, merged per label."""

    clip_id: str
    timestamps: np.ndarray
    scores: np.ndarray
    duration: float
    truth: list[tuple[float, float, str]]


def filter_steps(seconds: float, stride_seconds: float) -> int:
    """A median filter of `seconds` in time steps of `stride_seconds`: the nearest odd count, at least 1."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ConfigError(f"sed.median_filter: {seconds!r} is not a length in seconds >= 0 (0: no filter)")
    steps = max(1, round(seconds / stride_seconds))
    return steps if steps % 2 else steps + 1


def median_filter(scores: np.ndarray, length: int) -> np.ndarray:
    """Each class's scores [n, C] median-filtered over `length` (odd) steps; the ends repeat the first/last step."""
    if length <= 1 or len(scores) == 0:
        return scores
    half = length // 2
    padded = np.pad(scores, ((half, half), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, length, axis=0)  # [n, C, length]
    return np.median(windows, axis=-1).astype(scores.dtype)


def timelines(store: TokenStore, rows: np.ndarray, frame_scores: np.ndarray, median_seconds: float) -> list[Timeline]:
    """The timelines of store rows from their frame scores [n, n_time, C] (view classes), median-filtered."""
    steps, rate = store.time_steps, store.sample_rate
    if steps is None or not rate:
        raise ConfigError(f"{store.path}: the store records no token time steps or sample rate; extract it with an "
                          "encoder that defines time_steps")
    rows = np.asarray(rows, np.int64)
    length = filter_steps(median_seconds, steps.stride / rate)
    names = store.label_names
    lengths = store.row_lengths[rows]
    events = store.view_events
    found = ([[] for _ in rows] if events is None else  # new audio: no true events
             row_events(events, store.recording_ids[rows], store.offsets[rows], lengths))
    n_freq = store.grid[1]
    out = []
    for i, row in enumerate(rows.tolist()):
        n = int(store.valid_tokens[row]) // n_freq
        truth = merged([(a / rate, b / rate, names[code]) for a, b, code in found[i]])
        out.append(Timeline(str(store.clip_ids[row]), steps.boundaries(n, int(lengths[i])) / rate,
                            median_filter(np.asarray(frame_scores[i, :n], np.float64), length),
                            float(lengths[i]) / rate, truth))
    return out


def detect_events(timeline: Timeline, label_names: Sequence[str], threshold: float) -> list[tuple]:
    """(onset s, offset s, label, score) of every run of steps whose score is above `threshold`; an event's score is
    its run's highest."""
    found = []
    above = timeline.scores > threshold
    for c, label in enumerate(label_names):
        edges = np.diff(np.concatenate([[0], above[:, c].astype(np.int8), [0]]))
        for start, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
            found.append((float(timeline.timestamps[start]), float(timeline.timestamps[stop]), label,
                          float(timeline.scores[start:stop, c].max())))
    return sorted(found)


def recording_timelines(store: TokenStore, rows: np.ndarray, lines: Sequence[Timeline]) -> list[Timeline]:
    """Timelines of window rows (`lines`, one per row of `rows`) joined into one per recording, in first-seen order:
    each window's steps placed at its offset, the scores of overlapping windows averaged over the time both cover
    (0 where none does), the recording's own true events, merged per label. Event metrics then count an event once
    per recording, as DCASE scores whole files, not once per window that holds it."""
    rate = store.sample_rate
    names = store.label_names
    events = store.view_events
    grouped = events.by_recording() if events is not None else {}
    members: dict[str, list[tuple[float, Timeline]]] = {}
    for row, line in zip(np.asarray(rows, np.int64).tolist(), lines, strict=True):
        members.setdefault(str(store.recording_ids[row]), []).append((float(store.offsets[row]) / rate, line))
    out = []
    for recording, windows in members.items():
        bounds = np.unique(np.concatenate([line.timestamps + offset for offset, line in windows]))
        middles = (bounds[:-1] + bounds[1:]) / 2
        total = np.zeros((len(middles), len(names)))
        count = np.zeros(len(middles))
        for offset, line in windows:
            times = line.timestamps + offset
            step = np.searchsorted(times, middles, side="right") - 1
            inside = (step >= 0) & (step < len(line.scores)) & (middles < times[-1])
            total[inside] += line.scores[step[inside]]
            count[inside] += 1
        scores = np.divide(total, count[:, None], out=np.zeros_like(total), where=count[:, None] > 0)
        truth = merged([(int(events.onsets[i]) / rate, int(events.offsets[i]) / rate, names[int(events.labels[i])])
                        for i in grouped.get(recording, np.zeros(0, np.int64)).tolist()])
        duration = max(offset + line.duration for offset, line in windows)
        out.append(Timeline(recording, bounds, scores, duration, truth))
    return out


def scored_timelines(store: TokenStore, rows: np.ndarray, frame_scores: np.ndarray,
                     median_seconds: float) -> list[Timeline]:
    """The timelines events are detected and scored on: one per row, or one per recording when the rows are
    windows of longer recordings (`recording_timelines`)."""
    lines = timelines(store, rows, frame_scores, median_seconds)
    return recording_timelines(store, rows, lines) if store.is_windowed else lines


def event_rows(head: str, seed: int, lines: Sequence[Timeline], label_names: Sequence[str],
               threshold: float) -> list[dict]:
    """One row per event detected on `lines` (head, seed, clip_id, onset, offset in seconds, label, score): the rows
    of event_predictions.csv."""
    return [{"head": head, "seed": seed, "clip_id": line.clip_id, "onset": round(onset, 6),
             "offset": round(offset, 6), "label": label, "score": round(score, 6)}
            for line in lines for onset, offset, label, score in detect_events(line, label_names, threshold)]


# -- metrics ---------------------------------------------------------------------------------------------------
def sed_metrics(lines: Sequence[Timeline], label_names: Sequence[str], threshold: float = 0.5) -> dict:
    """PSDS1, PSDS2 (threshold-independent), event-based and segment-based macro F1 at `threshold`, all computed
    by sed_scores_eval from the timelines and their true events."""
    package = sed_scores_eval()
    from sed_scores_eval.base_modules.scores import create_score_dataframe

    names = list(label_names)
    scores = {line.clip_id: create_score_dataframe(line.scores, line.timestamps, names) for line in lines if
              len(line.scores)}
    truth = {line.clip_id: list(line.truth) for line in lines if line.clip_id in scores}
    durations = {line.clip_id: line.duration for line in lines if line.clip_id in scores}
    if not scores:
        raise ConfigError("sound-event metrics: no row has a valid time step to score")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class with no true event divides by zero; it scores 0
        psds1 = package.intersection_based.psds(scores=scores, ground_truth=truth, audio_durations=durations,
                                                **PSDS1)[0]
        psds2 = package.intersection_based.psds(scores=scores, ground_truth=truth, audio_durations=durations,
                                                **PSDS2)[0]
        event_f1 = package.collar_based.fscore(scores=scores, ground_truth=truth, threshold=threshold,
                                               **EVENT_COLLARS)[0]
        segment_f1 = package.segment_based.fscore(scores=scores, ground_truth=truth, audio_durations=durations,
                                                  threshold=threshold, segment_length=SEGMENT_SECONDS)[0]
    return {"psds1": float(psds1), "psds2": float(psds2), "event_f1": float(event_f1["macro_average"]),
            "segment_f1": float(segment_f1["macro_average"]), "event_f1_micro": float(event_f1["micro_average"]),
            "segment_f1_micro": float(segment_f1["micro_average"])}


def frame_metrics(targets: np.ndarray, scores: np.ndarray, mask: np.ndarray) -> dict:
    """Frame-level (per valid time step) mAP, micro AP and macro AUROC of scores [N, n_time, C] against uint8 targets
    of the same shape where mask [N, n_time] holds, keys prefixed `frame_` (no extra needed; threshold-free)."""
    found = metrics.multilabel_metrics(targets[mask], scores[mask])
    return {f"frame_{key}": value for key, value in found.items()}


def chance_frame_scores(shape: tuple[int, ...], prior: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Frame scores [N, n_time, C] that know nothing of the audio: `random` (uniform, seeded) and `prior` (each
    class's rate of positive training steps, the same everywhere)."""
    rng = np.random.default_rng(seed)
    return {"random": rng.random(shape).astype(np.float32),
            "prior": np.broadcast_to(np.asarray(prior, np.float32), shape).copy()}
