"""Epoch plans (shuffle windows) from the chunk index: the same windows as a scan of the split, in linear time."""

from __future__ import annotations

import numpy as np
import pytest

from bench.bench_plan import scan_plan
from embedcache.loader import ChunkIndex, sequential_windows, shuffle_windows


@pytest.mark.parametrize("window_chunks", [1, 3, 8])
def test_windows_equal_the_per_window_scan_they_replace(window_chunks):
    rng = np.random.default_rng(0)
    for _ in range(30):
        rows = np.sort(rng.choice(3000, int(rng.integers(1, 600)), replace=False))  # a split's sorted store rows
        chunk_of = rows // int(rng.integers(1, 9))
        planned, scanned = shuffle_windows(chunk_of, 4, 2, window_chunks), scan_plan(chunk_of, 4, 2, window_chunks)
        assert len(planned) == len(scanned)
        for (ids, positions), (scan_ids, scan_positions) in zip(planned, scanned, strict=True):
            np.testing.assert_array_equal(ids, scan_ids)
            np.testing.assert_array_equal(positions, scan_positions)


def test_a_million_rows_plan_covers_every_clip_once():
    chunk_of = np.arange(1_000_000) // 5
    windows = shuffle_windows(chunk_of, 0, 3, 8)
    assert len(windows) == 200_000 // 8
    every = np.concatenate([positions for _, positions in windows])
    assert len(every) == 1_000_000 and np.array_equal(np.sort(every), np.arange(1_000_000))
    first_ids, first_positions = windows[0]
    assert set(chunk_of[first_positions].tolist()) == set(first_ids.tolist())


def test_sequential_windows_and_the_index_of_unsorted_chunks():
    chunk_of = np.array([0, 0, 1, 3, 3, 3, 4])
    windows = sequential_windows(chunk_of, 2)
    assert [ids.tolist() for ids, _ in windows] == [[0, 1], [3, 4]]
    assert [positions.tolist() for _, positions in windows] == [[0, 1, 2], [3, 4, 5, 6]]
    index = ChunkIndex(np.array([2, 0, 2, 1]))
    assert index.positions(np.array([0, 2])).tolist() == [1, 0, 2] and index.sizes(np.array([2])).tolist() == [2]
