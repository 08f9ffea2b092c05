"""Datasets: manifests (clip_id, path, labels, split), adapters for standard layouts, the bundled sample set."""

from embedcache.datasets.adapters import (
    from_audioset,
    from_class_folders,
    from_esc50,
    from_fsd50k,
    plan_class_folders,
    write_folder_plan,
    write_manifest,
)
from embedcache.datasets.fewshot import sample_few_shot, write_few_shot
from embedcache.datasets.hf import from_hf
from embedcache.datasets.manifest import Clip, Manifest, find_bad_rows, read_label_file, read_manifest
from embedcache.datasets.sample import build_sample_set
from embedcache.datasets.speech_commands import from_speech_commands

__all__ = [
    "Clip",
    "Manifest",
    "build_sample_set",
    "find_bad_rows",
    "from_audioset",
    "from_class_folders",
    "from_esc50",
    "from_fsd50k",
    "from_hf",
    "from_speech_commands",
    "plan_class_folders",
    "read_label_file",
    "read_manifest",
    "sample_few_shot",
    "write_few_shot",
    "write_folder_plan",
    "write_manifest",
]
