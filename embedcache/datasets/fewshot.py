"""Multi-label-aware k-shot sampling of a manifest's train split (the BirdSet few-shot protocol); the other splits
are copied as they are."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedcache.datasets.adapters import write_manifest, write_split_record
from embedcache.datasets.manifest import Clip, Manifest, read_manifest
from embedcache.errors import ConfigError

COUNTING = ("a selected clip counts once for every label it carries; classes are filled rarest first from one "
            "seeded order of the train clips, so a class can end with more than k positives (co-occurring labels) "
            "and a class with fewer than k train clips gets all of them")


@dataclass
class FewShot:
    """A k-shot manifest before it is written: all clips (selected train clips + other splits) and the counts."""

    clips: list[Clip]
    label_names: list[str]
    available: dict[str, int]  # train clips carrying each label
    selected: dict[str, int]  # selected train clips carrying each label
    record: dict  # written as <out>.split.json


def sample_few_shot(manifest: Manifest, shots: int, seed: int, split: str = "train") -> FewShot:
    """Pick train clips so every class has `shots` positives where it has that many (see COUNTING)."""
    if shots < 1:
        raise ConfigError(f"--shots {shots}: give a positive number of clips per class")
    rows = [i for i, clip in enumerate(manifest.clips) if clip.split == split]
    if not rows:
        raise ConfigError(f"{manifest.source}: no clips in split {split!r} (splits: "
                          f"{', '.join(manifest.split_names())}); pass --split NAME")
    matrix = manifest.label_matrix()[rows].astype(bool)  # [N, C]
    available = matrix.sum(axis=0)
    order = np.random.default_rng(seed).permutation(len(rows))
    chosen = np.zeros(len(rows), dtype=bool)
    counts = np.zeros(len(manifest.label_names), dtype=int)
    for c in sorted(range(len(counts)), key=lambda c: (available[c], c)):
        needed = shots - counts[c]
        if needed <= 0:
            continue
        candidates = order[matrix[order, c] & ~chosen[order]][:needed]
        chosen[candidates] = True
        counts += matrix[candidates].sum(axis=0)
    keep = set(np.asarray(rows)[chosen].tolist())
    clips = [clip for i, clip in enumerate(manifest.clips) if clip.split != split or i in keep]
    names = manifest.label_names
    available_by_name = {name: int(n) for name, n in zip(names, available, strict=True)}
    selected_by_name = {name: int(n) for name, n in zip(names, counts, strict=True)}
    record = {
        "adapter": "fewshot", "source": str(manifest.source), "source_sha256": manifest.sha256, "split": split,
        "shots": shots, "seed": seed, "counting": COUNTING, "train_clips": len(rows), "selected_clips": len(keep),
        "unlabelled_train_clips": int((~matrix.any(axis=1)).sum()),
        "classes": {name: {"available": available_by_name[name], "selected": selected_by_name[name]}
                    for name in names},
    }
    return FewShot(clips, list(names), available_by_name, selected_by_name, record)


def write_few_shot(
    source: str | Path,
    shots: int,
    seed: int,
    out: str | Path | None = None,
    split: str = "train",
    labels_path: str | Path | None = None,
) -> tuple[Path, FewShot]:
    """Read a manifest, sample k shots of its train split, write the new manifest (+ labels.txt, .split.json)."""
    manifest = read_manifest(source, labels_path)
    few = sample_few_shot(manifest, shots, seed, split)
    if out is None:
        out = manifest.source.with_name(f"{manifest.source.stem}.{shots}shot-seed{seed}.csv")
    out = Path(out).absolute()
    if out == manifest.source:
        raise ConfigError(f"--out {out}: that is the source manifest; write the few-shot manifest to another file")
    path = write_manifest(out, few.clips, few.label_names)
    write_split_record(path, few.record)
    return path, few
