"""How recordings become store rows: one row per clip (cropped at a bound), or fixed windows of long recordings.

Pure functions on sample counts; `extract` turns a plan into decoded audio and store arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

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
    # Augmented copies (rows past n_base): which base row each copies, and ((base row, SNR dB), ...) mixed into it.
    n_base: int | None = None
    copy_of: tuple[int, ...] = ()
    mixes: tuple[tuple[tuple[int, float], ...], ...] = ()
    mixup: Mixup | None = None

    @property
    def n_rows(self) -> int:
        return len(self.clip)

    def row_ids(self, clip_ids: Sequence[str]) -> list[str]:
        """Row ids: the clip id, `<clip id>#<k>` for the k-th window of a recording, `<row id>~mix<j>` for the
        j-th mixup copy of a row."""
        base = self.n_base if self.n_base is not None else self.n_rows
        if self.window is None:
            ids = [clip_ids[c] for c in self.clip[:base]]
        else:
            ids, previous, k = [], -1, 0
            for clip in self.clip[:base].tolist():
                k = k + 1 if clip == previous else 0
                previous = clip
                ids.append(f"{clip_ids[clip]}#{k}")
        per_copy = len(self.copy_of) // self.mixup.copies if self.mixup else 0
        return ids + [f"{ids[row]}~mix{1 + i // per_copy}" for i, row in enumerate(self.copy_of)]

    def describe(self) -> dict:
        """JSON-able plan settings recorded in the provenance (and in the resume fingerprint)."""
        return {"num_samples": self.capacity, "window_samples": self.window, "hop_samples": self.hop,
                "augment": None if self.mixup is None else {"kind": "mixup", **asdict(self.mixup)}}


@dataclass(frozen=True)
class Mixup:
    """Pre-generated mixup copies of the training rows (BirdSet's few-shot protocol, as "Unmute the Patch Tokens"
    used it: 5 copies, p = 0.9). With probability p a copy has 1..max_mixed other training rows added, each at an
    SNR drawn uniformly in [min_snr_db, max_snr_db] below it, and the union of their labels (BirdSet's
    MultilabelMix settings: SNR 2-30 dB, up to 3 samples, union of targets); otherwise it repeats its row."""

    copies: int = 5
    p: float = 0.9
    min_snr_db: float = 2.0
    max_snr_db: float = 30.0
    max_mixed: int = 3
    seed: int = 0
    split: str = "train"

    def __post_init__(self):
        if self.copies < 1 or not 0.0 <= self.p <= 1.0 or self.max_mixed < 1 or self.min_snr_db > self.max_snr_db:
            raise ValueError(f"mixup: copies >= 1, 0 <= p <= 1, max_mixed >= 1 and min_snr <= max_snr ({self})")


def add_mixup(plan: RowPlan, train_rows: np.ndarray, mixup: Mixup) -> RowPlan:
    """`plan` followed by `mixup.copies` copies of its `train_rows` (row indices), each with its mixing recipe: a
    pure function of (seed, copy, row), so a resumed or sharded run plans the same copies."""
    train_rows = np.asarray(train_rows, np.int64)
    copy_of, mixes = [], []
    for copy in range(1, mixup.copies + 1):
        for row in train_rows.tolist():
            rng = np.random.default_rng([mixup.seed, copy, row])
            recipe: tuple[tuple[int, float], ...] = ()
            others = train_rows[train_rows != row]
            if len(others) and rng.random() < mixup.p:
                count = int(rng.integers(1, min(mixup.max_mixed, len(others)) + 1))
                chosen = rng.choice(others, size=count, replace=False)
                snrs = rng.uniform(mixup.min_snr_db, mixup.max_snr_db, size=count)
                recipe = tuple((int(other), round(float(snr), 3)) for other, snr in zip(chosen, snrs, strict=True))
            copy_of.append(row)
            mixes.append(recipe)
    rows = np.asarray(copy_of, np.int64)

    def grow(values: np.ndarray) -> np.ndarray:
        return np.concatenate([values, values[rows]]) if len(rows) else values

    return replace(plan, clip=grow(plan.clip), offsets=grow(plan.offsets), lengths=grow(plan.lengths),
                   num_samples=grow(plan.num_samples), lost=grow(plan.lost), n_base=plan.n_rows,
                   copy_of=tuple(copy_of), mixes=tuple(mixes), mixup=mixup)


def mix(wave: np.ndarray, others: Sequence[np.ndarray], snrs_db: Sequence[float]) -> np.ndarray:
    """`wave` plus each other waveform (cropped or zero-padded to its length) scaled to `snr_db` below it (RMS)."""
    out = wave.astype(np.float64)
    power = np.sqrt(np.mean(out**2)) if len(out) else 0.0
    for other, snr in zip(others, snrs_db, strict=True):
        fitted = np.zeros(len(out))
        fitted[: min(len(out), len(other))] = other[: len(out)]
        level = np.sqrt(np.mean(fitted**2))
        if level > 0 and power > 0:
            out += fitted * (power / level) / 10 ** (snr / 20)
    return out.astype(np.float32)


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
