"""Strong labels on the token grid: sound events (recording, onset, offset, label) and the time step each token
column covers, so events become per-step targets of a row and per-step scores become timed events.

Everything here counts samples at the encoder's sample rate, like a store's offsets and num_samples. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TimeSteps:
    """Which samples of a row the encoder's token time step t covers: [start + t * stride, start + t * stride + span),
    the union of the spectrogram frames that step's patch reads (cut to the row's samples).

    start is negative for centred frames (their first window reaches before sample 0).
    """

    start: int
    span: int
    stride: int

    def __post_init__(self):
        if self.span < 1 or self.stride < 1:
            raise ValueError(f"time steps: span ({self.span}) and stride ({self.stride}) must be positive samples")

    @classmethod
    def of_patches(cls, frame_start: int, frame_span: int, hop: int, frames_per_step: int) -> TimeSteps:
        """Steps of patches of `frames_per_step` frames, frame i covering [frame_start + i * hop, ... + frame_span)."""
        return cls(frame_start, (frames_per_step - 1) * hop + frame_span, frames_per_step * hop)

    @classmethod
    def from_dict(cls, values: dict) -> TimeSteps:
        return cls(int(values["start"]), int(values["span"]), int(values["stride"]))

    def to_dict(self) -> dict:
        return {"start": self.start, "span": self.span, "stride": self.stride}

    def covered(self, n_time: int, length: int) -> np.ndarray:
        """[n_time, 2] int64: the samples [first, stop) each step covers in a row of `length` samples."""
        first = self.start + self.stride * np.arange(n_time, dtype=np.int64)
        return np.stack([np.clip(first, 0, length), np.clip(first + self.span, 0, length)], axis=1)

    def boundaries(self, n_steps: int, length: int) -> np.ndarray:
        """[n_steps + 1] float sample times between steps: each step owns one stride centred on what it covers, the
        first from 0 and the last up to the row's end when it gets there (gapless, no overlap: a score timeline)."""
        centre = self.start + self.span / 2 + self.stride * np.arange(n_steps + 1, dtype=np.float64)
        bounds = centre - self.stride / 2
        bounds[0] = 0.0
        if n_steps and bounds[-2] < length < bounds[-1]:
            bounds[-1] = float(length)
        return bounds


@dataclass(frozen=True)
class Events:
    """Sound events: recording ids [E] (str), onsets and offsets [E] (int64 samples from the recording's start) and
    label codes [E] (int32, columns of the store's label_names)."""

    recording_ids: np.ndarray
    onsets: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.onsets)

    def select(self, keep: np.ndarray) -> Events:
        """The events where `keep` [E] (bool or indices) holds."""
        return Events(self.recording_ids[keep], self.onsets[keep], self.offsets[keep], self.labels[keep])

    def relabel(self, columns: Sequence[int]) -> Events:
        """Events of the classes `columns` (label codes) only, their codes renumbered to positions in `columns`."""
        position = {int(code): i for i, code in enumerate(columns)}
        keep = np.array([int(code) in position for code in self.labels], dtype=bool)
        kept = self.select(keep)
        codes = np.array([position[int(code)] for code in kept.labels], np.int32)
        return Events(kept.recording_ids, kept.onsets, kept.offsets, codes)

    def by_recording(self) -> dict[str, np.ndarray]:
        """Recording id -> indices of its events, in onset order."""
        order = np.lexsort((self.offsets, self.onsets, self.recording_ids))
        groups: dict[str, list[int]] = {}
        for index in order.tolist():
            groups.setdefault(str(self.recording_ids[index]), []).append(index)
        return {name: np.asarray(indices, np.int64) for name, indices in groups.items()}


RowEvents = list[tuple[int, int, int]]


def row_events(events: Events, recordings: Sequence[str], offsets: np.ndarray, lengths: np.ndarray) -> list[RowEvents]:
    """Per row, its events as (onset, offset, label code) in samples from the row's first sample, cut to the row:
    a row holds samples [offset, offset + length) of its recording, so windows see their recording's events shifted."""
    grouped = events.by_recording()
    rows = []
    for recording, offset, length in zip(recordings, np.asarray(offsets).tolist(), np.asarray(lengths).tolist()):
        found = []
        for index in grouped.get(str(recording), np.zeros(0, np.int64)).tolist():
            onset = max(0, int(events.onsets[index]) - offset)
            offset_in_row = min(length, int(events.offsets[index]) - offset)
            if offset_in_row > onset:
                found.append((onset, offset_in_row, int(events.labels[index])))
        rows.append(found)
    return rows


def frame_targets(rows: Sequence[RowEvents], lengths: np.ndarray, steps: TimeSteps, n_time: int,
                  num_classes: int) -> np.ndarray:
    """[N, n_time, C] uint8: 1 where an event of class c overlaps the samples time step t of row n covers."""
    targets = np.zeros((len(rows), n_time, num_classes), np.uint8)
    for n, (found, length) in enumerate(zip(rows, np.asarray(lengths).tolist())):
        if not found:
            continue
        covered = steps.covered(n_time, length)
        for onset, offset, code in found:
            hit = (covered[:, 0] < offset) & (covered[:, 1] > onset) & (covered[:, 1] > covered[:, 0])
            targets[n, hit, code] = 1
    return targets


def strong_rows(events: Events, recordings: Sequence[str], labels: np.ndarray) -> np.ndarray:
    """[N] bool: rows whose strong labels are known: their recording has events, or no (weak) label at all. A row
    with weak labels and no event of its recording is weakly labelled only (DESED's weak set)."""
    annotated = set(np.asarray(events.recording_ids).tolist())
    return np.array([str(r) in annotated for r in recordings], dtype=bool) | (np.asarray(labels).sum(axis=1) == 0)


def merged(events: Sequence[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Events with overlapping or touching events of one label joined (scoring tools count them as one)."""
    out: list[list] = []
    for onset, offset, label in sorted(events, key=lambda e: (e[2], e[0], e[1])):
        if out and out[-1][2] == label and onset <= out[-1][1]:
            out[-1][1] = max(out[-1][1], offset)
        else:
            out.append([onset, offset, label])
    return sorted((a, b, c) for a, b, c in out)
