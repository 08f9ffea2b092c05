"""Group-aware splits: a group key per file name, the "takes of one source" heuristic, and a class-stratified
assignment of whole groups to train/valid/test (a group never straddles splits)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import PurePosixPath

import numpy as np

from embedcache.errors import ConfigError

# `--group-by takes`: the preset that groups the files the take heuristic finds (see take_base).
TAKES = "takes"
# A trailing take number: `_3`, `-take2`, `_v1`, ` 02`, `.rr4`, `-vel127`, `_layer2` (case-insensitive).
_TAKE_SUFFIX = re.compile(r"[-_ .]*(?:take|version|vel|layer|var|rr|v)?[-_ .]*\d+$", re.IGNORECASE)
# Warn when at least this share of the files (and at least _MIN_TAKES files) look like takes of one source.
_TAKE_SHARE = 0.2
_MIN_TAKES = 4


def take_base(stem: str) -> str:
    """The file stem without its trailing take number (`kick_v2` -> `kick`); '' when nothing was stripped."""
    base = _TAKE_SUFFIX.sub("", stem)
    return base if base != stem else ""


def find_takes(names_by_class: dict[str, list[str]]) -> dict[tuple[str, int], str]:
    """(class, file index) -> take base for the files that look like takes of one source.

    A file is a take when its stem minus the trailing number (take_base) is non-empty, is not its class name, is
    shared by at least two files (in any class: one speaker's takes of several words) and is not the base of every
    file in its class (`dog_001` .. `dog_100` is an enumeration, not takes).
    """
    bases = {label: [take_base(PurePosixPath(name).stem) for name in names] for label, names in names_by_class.items()}
    shared = Counter(base for label, names in bases.items() for base in names if base and base.lower() != label.lower())
    takes = {}
    for label, names in bases.items():
        in_class = Counter(names)
        for index, base in enumerate(names):
            if shared.get(base, 0) >= 2 and in_class[base] < len(names):
                takes[(label, index)] = base
    return takes


def takes_warning(names_by_class: dict[str, list[str]]) -> str | None:
    """One line when many file names look like takes of one source (no --group-by given), else None."""
    takes = find_takes(names_by_class)
    total = sum(len(names) for names in names_by_class.values())
    if len(takes) < max(_MIN_TAKES, _TAKE_SHARE * total):
        return None
    first, base = next(iter(takes.items()))
    second = next(place for place, other in takes.items() if other == base and place != first)
    example = ", ".join(f"{label}/{names_by_class[label][index]}" for label, index in (first, second))
    return (f"{len(takes)} of {total} file names look like takes of one source (e.g. {example}) and may straddle "
            "splits; pass --group-by takes (or --group-by REGEX) to keep each source in one split")


def group_keys(group_by: str, names_by_class: dict[str, list[str]]) -> dict[tuple[str, int], str]:
    """(class, file index) -> group key: the regex's first capture group (or whole match) searched in the file name,
    or the take base for `takes` (a file that is no take is its own group). Keys are global: one key in two class
    folders is one group. `names_by_class` holds each file's path inside its class folder."""
    if group_by == TAKES:
        takes = find_takes(names_by_class)
        return {(label, i): takes.get((label, i), f"{label}/{name}")
                for label, names in names_by_class.items() for i, name in enumerate(names)}
    try:
        pattern = re.compile(group_by)
    except re.error as error:
        raise ConfigError(f"--group-by {group_by!r}: not a regular expression ({error})") from None
    keys, unmatched = {}, []
    for label, names in names_by_class.items():
        for i, name in enumerate(names):
            match = pattern.search(PurePosixPath(name).name)
            if match is None:
                unmatched.append(f"{label}/{name}")
                continue
            key = match.group(1) if pattern.groups and match.group(1) is not None else match.group(0)
            keys[(label, i)] = key
    if unmatched:
        raise ConfigError(f"--group-by {group_by!r} matches no part of {len(unmatched)} file name(s), e.g. "
                          f"{unmatched[0]}; make it match every file name (the key is its first group or the match)")
    return keys


def grouped_splits(
    labels: Sequence[str], keys: Sequence[str], ratios: Sequence[float], split_names: Sequence[str],
    rng: np.random.Generator,
) -> list[str]:
    """A split name per file such that files with one key share a split, per-class counts near ratio x class size.

    Greedy: groups in a seeded shuffle, then largest first; each goes to the split (ratio > 0) furthest below its
    per-class targets for the group's classes (deficits weighed by class size, so small classes count as much).
    """
    classes = sorted(set(labels))
    column = {name: i for i, name in enumerate(classes)}
    members: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        members.setdefault(key, []).append(index)
    vectors = {}
    for key, indices in members.items():
        vector = np.zeros(len(classes))
        for index in indices:
            vector[column[labels[index]]] += 1
        vectors[key] = vector
    total = sum(vectors.values())
    target = np.asarray(ratios, dtype=float)[:, None] * total[None, :]  # [splits, C]
    counts = np.zeros_like(target)
    order = [list(members)[i] for i in rng.permutation(len(members))]
    order.sort(key=lambda key: -len(members[key]))  # stable: the shuffle breaks ties
    open_splits = [s for s, ratio in enumerate(ratios) if ratio > 0]
    assigned = [""] * len(labels)
    for key in order:
        vector = vectors[key]
        costs = [float(np.sum(vector * (counts[s] + vector - target[s]) / total)) for s in open_splits]
        best = open_splits[int(np.argmin(costs))]
        counts[best] += vector
        for index in members[key]:
            assigned[index] = split_names[best]
    return assigned
