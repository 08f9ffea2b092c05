"""How recordings become store rows: one row per clip (cropped at a bound), or fixed windows of long recordings.

Pure functions on sample counts; `extract` turns a plan into decoded audio and store arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Longest audio one row holds for encoders that take any length, unless --max-seconds says otherwise: FSD50K's
# longest clip and Whisper's window. Longer clips are cropped (counted, listed) or cut into --window rows.
DEFAULT_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class RowPlan:
    """Every row of a store: which manifest clip it comes from and which of its samples it holds.

    clip: [R] manifest clip index; offsets: [R] first sample in the recording; lengths: [R] real samples fed to
    the encoder; num_samples: [R] real samples of the row's audio before cropping (the whole clip, or the window);
    lost: [R] samples cropped away. capacity: the most samples one row holds (the store's row width).
    """

    clip: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    num_samples: np.ndarray
    lost: np.ndarray
    capacity: int
    window: int | None = None
    hop: int | None = None

    @property
    def n_rows(self) -> int:
        return len(self.clip)

    def row_ids(self, clip_ids: Sequence[str]) -> list[str]:
        """Row ids: the clip id, or `<clip id>#<k>` for the k-th window of a recording."""
        if self.window is None:
            return [clip_ids[c] for c in self.clip]
        ids, previous, k = [], -1, 0
        for clip in self.clip.tolist():
            k = k + 1 if clip == previous else 0
            previous = clip
            ids.append(f"{clip_ids[clip]}#{k}")
        return ids

    def describe(self) -> dict:
        """JSON-able plan settings recorded in the provenance (and in the resume fingerprint)."""
        return {"num_samples": self.capacity, "window_samples": self.window, "hop_samples": self.hop}


def plan_clips(lengths: np.ndarray, limit: int | None, fixed_input: int | None) -> RowPlan:
    """One row per clip. A fixed-length encoder's rows hold its input (`fixed_input` samples); otherwise rows are as
    long as the longest clip. Either way no row holds more than `limit` samples: longer clips are cropped."""
    lengths = np.asarray(lengths, np.int64)
    bounds = [value for value in (limit, fixed_input) if value is not None]
    bound = min(bounds) if bounds else int(lengths.max())
    kept = np.minimum(lengths, bound)
    capacity = fixed_input if fixed_input is not None else int(kept.max())
    n = len(lengths)
    return RowPlan(np.arange(n), np.zeros(n, np.int64), kept, lengths, lengths - kept, capacity)


def window_offsets(length: int, window: int, hop: int) -> list[int]:
    """Starts of the windows over a recording of `length` samples: every `hop` while a window ends inside it, then
    one window ending at the recording's end (so nothing is lost); one short window for a short recording."""
    offsets = list(range(0, max(0, length - window), hop))
    offsets.append(max(0, length - window))
    return sorted(set(offsets))


def plan_windows(lengths: np.ndarray, window: int, hop: int) -> RowPlan:
    """Rows of `window` samples every `hop` samples of each recording (see `window_offsets`)."""
    if window < 1 or hop < 1:
        raise ValueError(f"window ({window}) and hop ({hop}) must be positive sample counts")
    clips, offsets, sizes = [], [], []
    for clip, length in enumerate(np.asarray(lengths, np.int64).tolist()):
        for offset in window_offsets(length, window, hop):
            clips.append(clip)
            offsets.append(offset)
            sizes.append(min(window, length - offset))
    sizes = np.asarray(sizes, np.int64)
    return RowPlan(np.asarray(clips, np.int64), np.asarray(offsets, np.int64), sizes, sizes.copy(),
                   np.zeros(len(sizes), np.int64), window, window, hop)
