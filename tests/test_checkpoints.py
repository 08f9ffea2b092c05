"""Safe checkpoint loading: allow-listed metadata types, safetensors, sha256 and refusals."""

import argparse
import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from embedcache.checkpoints import find_state_dict, load_checkpoint, sha256_file
from embedcache.errors import ConfigError


def test_sha256_matches_hashlib_across_chunk_sizes(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(path, chunk_bytes=1000) == hashlib.sha256(data).hexdigest()


def test_allow_listed_metadata_loads_without_arbitrary_unpickling(tmp_path):
    path = tmp_path / "train.pth"
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.save(
        {"model": weights, "args": argparse.Namespace(lr=0.1, target_length=1024), "best": np.float64(0.25)}, path
    )
    loaded = load_checkpoint(path)
    assert loaded["args"].target_length == 1024
    assert float(loaded["best"]) == 0.25
    assert torch.equal(loaded["model"]["w"], weights["w"])


def test_safetensors_files_load_and_truncated_ones_are_refused(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"a": torch.ones(3), "b": torch.zeros(2, 2)}, str(path))
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["a"], torch.ones(3)) and loaded["b"].shape == (2, 2)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ConfigError, match="truncated"):
        load_checkpoint(broken)


def test_non_dict_and_garbage_files_are_refused(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ConfigError, match="not a dict"):
        load_checkpoint(path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_checkpoint(garbage)


def test_find_state_dict_prefers_named_containers_and_keeps_only_tensors(tmp_path):
    checkpoint = {"model": {"a": torch.ones(1), "meta": "x"}, "state_dict": {"b": torch.ones(1)}, "epoch": 3}
    assert list(find_state_dict(checkpoint, "f.pt", ("model",))) == ["a"]
    assert list(find_state_dict(checkpoint, "f.pt", ("state_dict", "model"))) == ["b"]
    assert list(find_state_dict({"c": torch.ones(1), "epoch": 1}, "f.pt", ("model",))) == ["c"]
    with pytest.raises(ConfigError, match="no tensors found"):
        find_state_dict({"epoch": 1}, "f.pt", ("model",))
