"""`extract --augment mixup`: pre-generated augmented copies of the training rows (BirdSet's few-shot protocol)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from click.testing import CliRunner

from embedcache import audio
from embedcache.encoders.melpatch import MelPatch
from embedcache.rows import Mixup, add_mixup, mix, plan_clips
from embedcache.store import TokenStore
from embedcache_cli.main import main

RATE = 16000


def test_mix_sets_each_added_rows_snr():
    rng = np.random.default_rng(0)
    wave, other = rng.standard_normal(16000).astype(np.float32), 3 * rng.standard_normal(8000).astype(np.float32)
    mixed = mix(wave, [other], [10.0])
    added = mixed.astype(np.float64) - wave
    assert np.allclose(added[8000:], 0.0)  # the shorter row is zero-padded
    snr = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean(added**2))
    assert snr == pytest.approx(10.0, abs=1e-3)


def test_copies_are_deterministic_and_only_mix_train_rows():
    plan = plan_clips(np.array([100, 120, 90, 110, 100]), None, None)
    train = np.array([0, 1, 3])
    grown = add_mixup(plan, train, Mixup(copies=3, p=0.9, seed=7))
    assert grown.n_rows == 5 + 3 * 3 and grown.n_base == 5 and list(grown.copy_of) == [0, 1, 3] * 3
    for row, recipe in zip(grown.copy_of, grown.mixes, strict=True):
        assert all(source in (0, 1, 3) and source != row and 2.0 <= snr <= 30.0 for source, snr in recipe)
        assert len(recipe) <= 2  # at most the other train rows
    assert add_mixup(plan, train, Mixup(copies=3, p=0.9, seed=7)).mixes == grown.mixes
    assert add_mixup(plan, train, Mixup(copies=3, p=0.9, seed=8)).mixes != grown.mixes
    never = add_mixup(plan, train, Mixup(copies=2, p=0.0))
    assert all(recipe == () for recipe in never.mixes)
    assert grown.row_ids(["a", "b", "c", "d", "e"])[5:8] == ["a~mix1", "b~mix1", "d~mix1"]


def test_extract_writes_mixed_copies_of_train_rows_with_label_unions(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    rows = ["clip_id,path,labels,split"]
    names = [("a", "x", "train"), ("b", "y", "train"), ("c", "z", "train"), ("v", "x", "valid"), ("t", "y", "test")]
    for i, (name, label, split) in enumerate(names):
        t = np.arange(RATE) / RATE
        soundfile.write(folder / f"{name}.wav", (0.3 * np.sin(2 * np.pi * (200 + 300 * i) * t)).astype(np.float32),
                        RATE, subtype="FLOAT")
        rows.append(f"{name},{name}.wav,{label},{split}")
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "s.zarr"
    result = CliRunner().invoke(main, ["extract", "--encoder", "melpatch", "--manifest", str(folder / "m.csv"),
                                       "--out", str(out), "--workers", "0", "--dtype", "float32", "--augment",
                                       "mixup", "--copies", "2", "--p", "1.0"])
    assert result.exit_code == 0, result.output
    assert "11 rows (of which 6 mixup copies of 'train' rows)" in result.output
    store = TokenStore.open(out)
    ids = store.clip_ids.tolist()
    assert ids[:5] == ["a", "b", "c", "v", "t"] and ids[5:] == [f"{n}~mix{k}" for k in (1, 2) for n in "abc"]
    splits = [store.spec.split_names[code] for code in store.split_codes]
    assert splits[5:] == ["train"] * 6 and splits[3:5] == ["valid", "test"]  # copies never touch valid or test
    assert store.recording_ids.tolist()[5:] == ["a", "b", "c"] * 2
    policy = store.provenance["clip_policy"]["augment"]
    assert policy == {"kind": "mixup", "copies": 2, "p": 1.0, "min_snr_db": 2.0, "max_snr_db": 30.0,
                      "max_mixed": 3, "seed": 0, "split": "train"}
    # Every copy is mixed (p = 1): its labels are the union, and its tokens are those of the mixed waveform.
    plan = add_mixup(plan_clips(np.full(5, RATE), None, None), np.array([0, 1, 2]), Mixup(copies=2, p=1.0))
    waves = [audio.load_segment(folder / f"{name}.wav", RATE, 0, RATE) for name, _, _ in names]
    columns = {name: store.label_names.index(name) for name in "xyz"}
    for i, (row, recipe) in enumerate(zip(plan.copy_of, plan.mixes, strict=True)):
        expected = {names[row][1]} | {names[source][1] for source, _ in recipe}
        got = {name for name, column in columns.items() if store.labels[5 + i, column]}
        assert got == expected and len(recipe) >= 1
        mixed = mix(waves[row], [waves[s] for s, _ in recipe], [snr for _, snr in recipe])
        tokens = MelPatch()(torch.from_numpy(mixed)[None], [0]).layers[0][0]
        torch.testing.assert_close(store.read_tokens(0, 5 + i, 6 + i)[0], tokens, atol=1e-4, rtol=1e-4)
