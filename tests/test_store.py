"""The token store: round trips, plain-Zarr readability, refusals."""

import json

import numpy as np
import pytest
import torch
import zarr

from embedcache.errors import StoreError
from embedcache.store import TokenStore, layout, write_store
from embedcache.store.writer import StoreSpec, create_store, mark_complete_if_done, write_chunk


def _arrays(n=10, t=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, t, d, generator=g)
    prefix = torch.randn(n, 1, d, generator=g)
    labels = (torch.rand(n, 3, generator=g) > 0.5).numpy().astype(np.uint8)
    return tokens, prefix, labels


@pytest.mark.parametrize("dtype,tolerance", [("float32", 0.0), ("float16", 2e-3), ("bfloat16", 1.6e-2)])
def test_round_trip_every_dtype(tmp_path, dtype, tolerance):
    tokens, prefix, labels = _arrays()
    store = write_store(
        tmp_path / "s.zarr", {2: tokens, 5: tokens * 2}, labels, ["a", "b", "c"], [f"c{i}" for i in range(10)],
        ["train"] * 6 + ["valid"] * 2 + ["test"] * 2, grid=(3, 2), prefix={2: prefix, 5: prefix}, dtype=dtype,
        chunk_clips=4, valid_tokens=np.array([6] * 9 + [4]),
    )
    assert store.layers == [2, 5] and store.grid == (3, 2) and store.dtype == dtype
    assert store.spec.n_chunks == 3
    back = store.read_tokens(5, 0, 10)
    assert back.dtype == layout.torch_dtype(dtype)
    assert torch.allclose(back.float(), tokens * 2, atol=tolerance * 4, rtol=tolerance)
    assert torch.allclose(store.read_prefix(2, 3, 7).float(), prefix[3:7], atol=tolerance, rtol=tolerance)
    assert store.read_tokens(None, 0, 1).shape == (1, 6, 8)  # None = last stored layer
    np.testing.assert_array_equal(store.labels, labels)
    np.testing.assert_array_equal(store.split_indices("valid"), [6, 7])
    assert list(store.clip_ids[:2]) == ["c0", "c1"]
    mask = store.token_mask(8, 10)
    assert mask[0].all() and mask[1].tolist() == [True] * 4 + [False] * 2


def test_bfloat16_bits_are_exact(tmp_path):
    tokens = torch.randn(3, 2, 4).to(torch.bfloat16)
    store = write_store(tmp_path / "s.zarr", {0: tokens}, np.eye(3, dtype=np.uint8), ["x", "y", "z"],
                        ["a", "b", "c"], ["train"] * 3, grid=(2, 1), dtype="bfloat16")
    assert torch.equal(store.read_tokens(0, 0, 3), tokens)


def test_plain_zarr_reads_the_store_without_embedcache(tmp_path):
    tokens, _, labels = _arrays()
    write_store(tmp_path / "s.zarr", {0: tokens}, labels, ["a", "b", "c"], [f"c{i}" for i in range(10)],
                ["train"] * 10, grid=(3, 2), dtype="float16")
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    attrs = group.attrs["embedcache"]
    assert attrs["format_version"] == layout.FORMAT_VERSION and attrs["status"] == "complete"
    assert attrs["layout"]["grid"] == [3, 2] and attrs["layout"]["label_names"] == ["a", "b", "c"]
    np.testing.assert_allclose(group["tokens/layer_0"][:].astype(np.float32), tokens.numpy(), atol=2e-3, rtol=2e-3)
    assert group["clip_ids"][3] == "c3"


def test_nothing_is_pickled_and_every_chunk_has_a_checksum(tmp_path):
    tokens, prefix, labels = _arrays()
    write_store(tmp_path / "s.zarr", {0: tokens}, labels, ["a", "b", "c"], [f"c{i}" for i in range(10)],
                ["train"] * 10, grid=(3, 2), prefix={0: prefix})
    for meta in (tmp_path / "s.zarr").rglob("zarr.json"):
        doc = json.loads(meta.read_text())
        if doc["node_type"] != "array":
            continue
        names = [codec["name"] for codec in doc["codecs"]]
        assert not {"pickle", "vlen-bytes"} & set(names)
        assert doc["data_type"] != "object"
        assert names[-1] == "crc32c", meta


def test_incomplete_store_is_refused(tmp_path):
    spec = StoreSpec(n_clips=4, num_tokens=2, num_prefix=0, embed_dim=3, grid=(2, 1), layers=[0], dtype="float16",
                     chunk_clips=2, label_names=["a"], split_names=["train"])
    group = create_store(tmp_path / "s.zarr", spec, ["w", "x", "y", "z"], np.ones((4, 1), np.uint8),
                         np.zeros(4, np.uint8), np.full(4, 16000), {}, "fp")
    write_chunk(group, spec, 0, {0: np.ones((2, 2, 3), np.float16)}, {}, np.array([2, 2]))
    assert not mark_complete_if_done(group)
    with pytest.raises(StoreError, match=r"still being written.*1 of 2 chunks missing"):
        TokenStore.open(tmp_path / "s.zarr")
    assert TokenStore.open(tmp_path / "s.zarr", allow_incomplete=True).status == "writing"
    write_chunk(group, spec, 1, {0: np.ones((2, 2, 3), np.float16)}, {}, np.array([2, 1]))
    assert mark_complete_if_done(group)
    assert TokenStore.open(tmp_path / "s.zarr").valid_tokens.tolist() == [2, 2, 2, 1]


def test_missing_store_and_wrong_layer_errors(tmp_path):
    with pytest.raises(StoreError, match="no token store there"):
        TokenStore.open(tmp_path / "nothing.zarr")
    tokens, _, labels = _arrays()
    store = write_store(tmp_path / "s.zarr", {3: tokens}, labels, ["a", "b", "c"], [f"c{i}" for i in range(10)],
                        ["train"] * 10, grid=(3, 2))
    with pytest.raises(StoreError, match=r"layer 1 was not extracted; stored layers are \[3\]"):
        store.read_tokens(1, 0, 1)
    with pytest.raises(StoreError, match="no split 'test'"):
        store.split_indices("test")


def test_chunk_size_targets_a_few_megabytes():
    # ViT-B on 10 s: 512 tokens x 768 dims x 2 bytes = 786 kB per clip -> 5 clips per ~4 MB chunk
    assert layout.choose_chunk_clips(512, 768, "float16", 20000) == 5
    assert layout.choose_chunk_clips(512, 768, "float16", 3) == 3


def _edit_attrs(root, change) -> None:
    meta = root / "zarr.json"
    doc = json.loads(meta.read_text())
    change(doc["attributes"]["embedcache"])
    meta.write_text(json.dumps(doc))


def test_info_bounds_what_it_prints_of_huge_attributes_and_says_what_was_cut(tmp_path):
    from click.testing import CliRunner

    from embedcache_cli.main import main

    tokens, _, labels = _arrays()
    write_store(tmp_path / "s.zarr", {0: tokens}, labels, ["a", "b", "c"], [f"c{i}" for i in range(10)],
                ["train"] * 10, grid=(3, 2))
    huge = "x" * 20_000_000  # a 20 MB attribute
    _edit_attrs(tmp_path / "s.zarr", lambda a: (a["provenance"].update(frontend={"note": huge}, created=huge),
                                                a.update(skipped=[{"clip_id": f"bad{i}", "reason": huge[:100]}
                                                                  for i in range(50_000)])))
    text = CliRunner().invoke(main, ["info", str(tmp_path / "s.zarr")])
    assert text.exit_code == 0, text.output[:500]
    assert len(text.output) < 20_000
    assert "skipped 50000" in text.output and "... and 49980 more skipped (embedcache info --json)" in text.output
    assert "cut: provenance.frontend.note: 20,000,000 characters, the first 200 shown" in text.output
    assert "provenance.created: 20,000,000 characters" in text.output
    as_json = CliRunner().invoke(main, ["info", str(tmp_path / "s.zarr"), "--json"])
    assert as_json.exit_code == 0 and len(as_json.output) < 200_000
    summary = json.loads(as_json.output)
    assert summary["skipped_count"] == 50_000 and len(summary["skipped"]) == 100
    assert "skipped: 50,000 rows, the first 100 shown" in summary["cut"]


def test_info_says_a_store_is_being_written_instead_of_damaged(tmp_path):
    from click.testing import CliRunner

    from embedcache_cli.main import main

    spec = StoreSpec(n_clips=6, num_tokens=2, num_prefix=0, embed_dim=3, grid=(2, 1), layers=[0], dtype="float16",
                     chunk_clips=2, label_names=["a"], split_names=["train"])
    group = create_store(tmp_path / "s.zarr", spec, list("uvwxyz"), np.ones((6, 1), np.uint8), np.zeros(6, np.uint8),
                         np.full(6, 16000), {}, "fp")
    write_chunk(group, spec, 0, {0: np.ones((2, 2, 3), np.float16)}, {}, np.array([2, 2]))
    result = CliRunner().invoke(main, ["info", str(tmp_path / "s.zarr")])
    assert result.exit_code == 0, result.output
    assert "[writing: 2 of 3 chunks pending" in result.output and "damaged" not in result.output
    assert "clips       6  (train 6)" in result.output and "valid tokens per clip pending" in result.output
    summary = json.loads(CliRunner().invoke(main, ["info", str(tmp_path / "s.zarr"), "--json"]).output)
    assert summary["status"] == "writing" and summary["pending_chunks"] == 2
    # Mid-append: the layout has grown, the arrays not yet.
    _edit_attrs(tmp_path / "s.zarr", lambda a: (a["layout"].update(n_clips=8), a.update(
        growing={"mode": "clips", "base_layout": {**a["layout"], "n_clips": 6}})))
    result = CliRunner().invoke(main, ["info", str(tmp_path / "s.zarr")])
    assert result.exit_code == 0, result.output
    assert "[writing: an append is resizing its arrays" in result.output and "damaged" not in result.output
