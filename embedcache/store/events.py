"""Sound events (strong labels) kept in a token store, beside the tokens and read with them.

    events/recording_ids   [E] UTF-8: the recording (manifest clip) of each event, as in the row array recording_ids
    events/onsets          [E] int64: first sample of the event in its recording, at the encoder's sample rate
    events/offsets         [E] int64: sample after its last, same rate (offset > onset)
    events/labels          [E] int32: codes into layout.label_names

The root attribute `events` = {count: E, unit: "samples"} says they are there; a store without it has no strong
labels. A reader that knows nothing of events ignores them (no format change).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import zarr

from embedcache.events import Events

ATTR = "events"
UNIT = "samples"
ARRAYS = {"events/recording_ids": "string", "events/onsets": "int64", "events/offsets": "int64",
          "events/labels": "int32"}


def event_arrays(attrs: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """Path -> (shape, dtype name) of the event arrays the attributes promise (none without `events`)."""
    record = attrs.get(ATTR)
    if not isinstance(record, dict):
        return {}
    return {path: ((int(record["count"]),), dtype) for path, dtype in ARRAYS.items()}


def write_events(group: zarr.Group, events: Events, array_options: dict) -> dict:
    """Create and fill the event arrays; returns the root attribute that announces them."""
    count = len(events)
    options = {**array_options, "chunks": (max(1, count),)}
    group.create_array("events/recording_ids", shape=(count,), dtype=str, **options)[:] = np.asarray(
        events.recording_ids, dtype=str)
    group.create_array("events/onsets", shape=(count,), dtype="int64", **options)[:] = np.asarray(events.onsets,
                                                                                                   np.int64)
    group.create_array("events/offsets", shape=(count,), dtype="int64", **options)[:] = np.asarray(events.offsets,
                                                                                                    np.int64)
    group.create_array("events/labels", shape=(count,), dtype="int32", **options)[:] = np.asarray(events.labels,
                                                                                                   np.int32)
    return {"count": count, "unit": UNIT}


def read_events(read: Callable[[str], np.ndarray]) -> Events:
    """The events through `read(path)` (the reader's checked read of a whole array)."""
    return Events(np.array(read("events/recording_ids").tolist(), dtype=str), read("events/onsets"),
                  read("events/offsets"), read("events/labels"))


def event_problems(events: Events, n_labels: int, recordings: set[str]) -> list[tuple[str, str]]:
    """(array, what) for event values that cannot be used: onset < 0, offset <= onset, a label code outside
    layout.label_names, a recording no row comes from."""
    problems = []
    if (events.onsets < 0).any():
        problems.append(("events/onsets", f"{int((events.onsets < 0).sum())} negative value(s)"))
    if (events.offsets <= events.onsets).any():
        problems.append(("events/offsets", f"{int((events.offsets <= events.onsets).sum())} event(s) end at or "
                                           "before their onset"))
    if ((events.labels < 0) | (events.labels >= n_labels)).any():
        problems.append(("events/labels", f"codes outside 0..{n_labels - 1} (the layout's label_names)"))
    unknown = sorted(set(events.recording_ids.tolist()) - recordings)
    if unknown:
        problems.append(("events/recording_ids", f"{len(unknown)} recording(s) no row comes from, e.g. "
                                                 f"{unknown[:3]}"))
    return problems
