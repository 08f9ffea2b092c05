"""The head bank: equal to separate runs, deterministic, blind to padding, same results in memory and streamed."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from helpers import event_tokens

from embedcache.errors import ConfigError, StoreError
from embedcache.loader import IN_MEMORY, STREAMING, SplitData, open_splits, shuffle_windows
from embedcache.store import write_store
from embedcache.train import HeadBank, HeadSpec, TrainConfig, split_metrics, warmup_cosine

LABELS = ["dog", "bell", "siren"]


def make_store(path, n=72, grid=(4, 4), dim=8, chunk_clips=8, dtype="float16", seed=0, valid_tokens=None,
               labels=None, splits=None, prefix=False, interleave=False):
    """Random tokens whose mean carries a weak label signal; splits train/valid/test 50/25/25 (or interleaved)."""
    rng = np.random.default_rng(seed)
    num_tokens = grid[0] * grid[1]
    if labels is None:
        labels = (rng.random((n, len(LABELS))) < 0.4).astype(np.uint8)
        labels[np.arange(n), np.arange(n) % len(LABELS)] = 1  # every class in every split
    signature = rng.standard_normal((labels.shape[1], dim)).astype(np.float32)
    tokens = rng.standard_normal((n, num_tokens, dim)).astype(np.float32) + (labels @ signature)[:, None, :] * 0.5
    if splits is None:
        if interleave:
            splits = [("train", "valid", "train", "test")[i % 4] for i in range(n)]
        else:
            splits = ["train"] * (n // 2) + ["valid"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
    prefix_tokens = {0: rng.standard_normal((n, 1, dim)).astype(np.float32)} if prefix else None
    return write_store(
        path, {0: tokens}, labels, LABELS[: labels.shape[1]] if labels.shape[1] <= 3 else
        [f"c{i}" for i in range(labels.shape[1])], [f"clip{i:03d}" for i in range(n)], splits, grid,
        prefix=prefix_tokens, valid_tokens=valid_tokens, dtype=dtype, chunk_clips=chunk_clips,
    )


pytestmark = pytest.mark.usefixtures("one_thread")


MIXED_BANK = [
    HeadSpec("linear", lr=1e-2, weight_decay=1e-4, seed=0),
    HeadSpec("mlp", lr=3e-3, weight_decay=0.0, seed=1, options={"hidden": 16, "dropout": 0.3}),
    HeadSpec("attentive", lr=1e-3, weight_decay=1e-3, seed=2, options={"num_heads": 2}),
    HeadSpec("proto", lr=1e-2, weight_decay=0.0, seed=3, options={"prototypes_per_class": 2}),
    HeadSpec("protobin", lr=1e-2, weight_decay=1e-4, seed=4, options={"prototypes_per_class": 3}),
    # A second dropout head: both draw dropout masks, so a shared global RNG would couple them.
    HeadSpec("mlp", lr=1e-3, weight_decay=1e-4, seed=5, options={"hidden": 8, "dropout": 0.5}),
]
# The heads of issue 13: three trained by the bank's AdamW, two fitted from whole splits with no optimiser.
NEW_HEADS = [
    HeadSpec("ep", lr=1e-2, weight_decay=1e-4, seed=6, options={"num_queries": 4}),
    HeadSpec("simpool", lr=3e-3, weight_decay=1e-3, seed=7),
    HeadSpec("simpool", lr=1e-2, weight_decay=0.0, seed=8, options={"projections": False, "gamma": 1.25}),
    HeadSpec("abmilp", lr=1e-2, weight_decay=1e-4, seed=9, options={"hidden": 8}),
    HeadSpec("knn", options={"k": 5}),
    HeadSpec("logreg", options={"c_steps": 3}),
]
FAST = TrainConfig(epochs=3, batch_size=8, warmup_epochs=0.5, device="cpu")


def state(head: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in head.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- order and schedule (pure functions) --------------------------------------------------------------------
def test_shuffle_windows_is_a_permutation_grouped_by_chunk_windows():
    chunk_of = np.repeat(np.arange(6), [3, 3, 2, 3, 3, 1])  # [15] chunk id per split position
    windows = shuffle_windows(chunk_of, seed=7, epoch=0, window_chunks=2)
    assert [len(ids) for ids, _ in windows] == [2, 2, 2]
    order = np.concatenate([positions for _, positions in windows])
    assert sorted(order.tolist()) == list(range(15))
    for ids, positions in windows:
        assert set(chunk_of[positions]) == set(ids.tolist())  # a window only serves its own chunks
    # Pure in (seed, epoch): the same arguments give the same order, another epoch a different one.
    again = np.concatenate([p for _, p in shuffle_windows(chunk_of, 7, 0, 2)])
    other = np.concatenate([p for _, p in shuffle_windows(chunk_of, 7, 1, 2)])
    assert np.array_equal(order, again) and not np.array_equal(order, other)
    full = shuffle_windows(chunk_of, 7, 0, None)
    assert len(full) == 1 and sorted(full[0][1].tolist()) == list(range(15))


def test_warmup_cosine_schedule_values():
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5)  # halfway through the cosine part
    assert warmup_cosine(20, 4, 20) == pytest.approx(0.0)
    assert warmup_cosine(0, 0, 10) == pytest.approx(1.0)


# -- the bank -----------------------------------------------------------------------------------------------
def test_bank_of_mixed_heads_equals_each_head_trained_alone(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    train, valid = SplitData(store, "train"), SplitData(store, "valid")
    specs = MIXED_BANK + NEW_HEADS
    bank = HeadBank(specs, FAST).fit(train, valid)
    trained = [k for k, head in enumerate(bank.heads_) if head.uses_optimiser]  # knn and logreg are fitted
    assert len(trained) == len(specs) - 2
    for k, spec in enumerate(specs):
        alone = HeadBank([spec], FAST).fit(train, valid)
        assert_same_state(state(alone.heads_[0]), state(bank.heads_[k]))
        if k in trained:
            assert alone.curves_[-1]["train_loss"] == bank.curves_[len(trained) * 2 + trained.index(k)]["train_loss"]
        else:
            assert alone.curves_ == []
        assert alone.valid_metrics_[0]["map"] == bank.valid_metrics_[k]["map"]
    # And the bank really trained: the losses fell and the curves have one row per trained head and epoch.
    assert len(bank.curves_) == len(trained) * FAST.epochs
    first, last = bank.curves_[0]["train_loss"], bank.curves_[-len(trained)]["train_loss"]
    assert last < first


def test_training_is_deterministic_and_the_data_seed_matters(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    train = SplitData(store, "train")
    specs = [HeadSpec("protobin", lr=1e-2, seed=3, options={"prototypes_per_class": 2})]
    one = HeadBank(specs, FAST).fit(train)
    two = HeadBank(specs, FAST).fit(train)
    assert_same_state(state(one.heads_[0]), state(two.heads_[0]))
    reseeded = HeadBank(specs, TrainConfig(**{**FAST.to_dict(), "data_seed": 1})).fit(train)
    assert not torch.equal(one.heads_[0].fc.weight, reseeded.heads_[0].fc.weight)


def test_padding_tokens_cannot_change_any_result(tmp_path):
    n, grid = 48, (4, 4)
    valid_tokens = np.where(np.arange(n) % 3 == 0, 8, 16).astype(np.int32)  # a third of the clips half padded
    clean = make_store(tmp_path / "clean.zarr", n=n, valid_tokens=valid_tokens)
    # The same real tokens with huge garbage in every padding position.
    tokens = clean.read_tokens(0, 0, n).float().numpy()
    pad = np.arange(16)[None, :] >= valid_tokens[:, None]
    tokens[pad] = 1e4 * np.random.default_rng(5).standard_normal((int(pad.sum()), tokens.shape[-1]))
    noisy = write_store(tmp_path / "noisy.zarr", {0: tokens}, clean.labels, clean.label_names, clean.clip_ids,
                        [clean.split_names[c] for c in clean.split_codes], grid, valid_tokens=valid_tokens,
                        dtype="float16", chunk_clips=8)
    results = []
    for store in (clean, noisy):
        bank = HeadBank(MIXED_BANK, FAST).fit(SplitData(store, "train"), SplitData(store, "valid"))
        results.append((bank, bank.predict(SplitData(store, "test"))))
    (a, a_scores), (b, b_scores) = results
    for k in range(len(MIXED_BANK)):
        assert_same_state(state(a.heads_[k]), state(b.heads_[k]))
        assert np.array_equal(a_scores[k], b_scores[k])


@pytest.mark.parametrize("interleave", [False, True])
def test_streaming_equals_in_memory_for_the_same_shuffle_window(tmp_path, interleave):
    store = make_store(tmp_path / "s.zarr", n=80, chunk_clips=6, interleave=interleave)
    memory = SplitData(store, "train", in_memory=True, window_chunks=2)
    stream = SplitData(store, "train", in_memory=False, window_chunks=2, prefetch_windows=1)
    assert (memory.path, stream.path) == (IN_MEMORY, STREAMING)
    # Same batches: every position once per epoch, the same order on both paths, the same bytes.
    served = list(zip(memory.batches(8, seed=3, epoch=1), stream.batches(8, seed=3, epoch=1), strict=True))
    assert sorted(np.concatenate([m.positions for m, _ in served]).tolist()) == list(range(memory.n_clips))
    for m, s in served:
        assert np.array_equal(m.positions, s.positions)
        assert torch.equal(m.tokens, s.tokens) and torch.equal(m.mask, s.mask) and torch.equal(m.targets, s.targets)
    # Same training and the same predictions.
    a = HeadBank(MIXED_BANK[:3], FAST).fit(memory)
    b = HeadBank(MIXED_BANK[:3], FAST).fit(stream)
    test_memory, test_stream = SplitData(store, "test"), SplitData(store, "test", in_memory=False, window_chunks=3)
    for k in range(3):
        assert_same_state(state(a.heads_[k]), state(b.heads_[k]))
    for x, y in zip(a.predict(test_memory), b.predict(test_stream), strict=True):
        assert np.array_equal(x, y)


def test_streaming_with_one_window_over_all_chunks_equals_the_default_in_memory_shuffle(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=64, chunk_clips=8)
    memory = SplitData(store, "train")  # full shuffle
    stream = SplitData(store, "train", in_memory=False, window_chunks=100)  # one window: all 4 train chunks
    a = HeadBank(MIXED_BANK[4:5], FAST).fit(memory)
    b = HeadBank(MIXED_BANK[4:5], FAST).fit(stream)
    assert_same_state(state(a.heads_[0]), state(b.heads_[0]))


def test_streaming_read_failure_reaches_the_trainer(tmp_path, monkeypatch):
    store = make_store(tmp_path / "s.zarr")
    stream = SplitData(store, "train", in_memory=False, window_chunks=1)

    def broken(chunk_ids):
        raise StoreError(f"chunk {chunk_ids[0]} failed its checksum")

    monkeypatch.setattr(stream, "_read_window", broken)
    with pytest.raises(StoreError, match="checksum"):
        HeadBank(MIXED_BANK[:1], FAST).fit(stream)


def test_open_splits_loads_what_fits_the_budget_and_streams_the_rest(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=72, dtype="bfloat16")
    per_clip = 16 * 8 * 2  # T * D * bytes of bfloat16
    config = TrainConfig(memory_budget_bytes=per_clip * 36 + per_clip * 10, device="cpu")
    train, valid, test = open_splits([(store, "train"), (store, "valid"), (store, "test")], None, config)
    assert (train.path, valid.path, test.path) == (IN_MEMORY, STREAMING, STREAMING)
    assert train.nbytes == per_clip * 36
    assert train._memory.tokens.dtype == torch.bfloat16  # kept narrow in memory, upcast per batch
    forced = open_splits([(store, "train")], None, TrainConfig(data_path="streaming", device="cpu"))[0]
    assert forced.path == STREAMING


def test_refusals_name_the_field(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="no split 'dev'"):
        SplitData(store, "dev")
    with pytest.raises(ConfigError, match="unknown option"):
        TrainConfig.from_dict({"epochs": 3, "lr": 0.1})
    with pytest.raises(ConfigError, match="data_path"):
        TrainConfig.from_dict({"data_path": "disk"})
    with pytest.raises(ConfigError, match="unknown head kind|choose one of"):
        HeadBank([HeadSpec("transformer")], FAST).fit(SplitData(store, "train"))


def test_prefix_store_and_multiclass_cross_entropy(tmp_path):
    n = 60
    labels = np.eye(3, dtype=np.uint8)[np.arange(n) % 3]
    store = make_store(tmp_path / "s.zarr", n=n, labels=labels, prefix=True)
    assert not store.is_multilabel
    specs = [HeadSpec("linear", lr=3e-2, options={"pooling": "cls"}), HeadSpec("protobin", lr=1e-2)]
    bank = HeadBank(specs, FAST).fit(SplitData(store, "train"), SplitData(store, "valid"))
    assert bank.loss_kind_ == "ce" and not bank.multilabel_
    scores = bank.predict(SplitData(store, "test"))
    assert scores[0].shape == (15, 3)
    np.testing.assert_allclose(scores[1].sum(axis=1), 1.0, rtol=1e-5)  # softmax rows
    assert "accuracy" in bank.valid_metrics_[0]
    assert 0.0 <= split_metrics(SplitData(store, "test").labels, scores[1], False)["accuracy"] <= 1.0


# -- learning on localized events ----------------------------------------------------------------------------
def make_event_store(path, n=120, grid=(8, 4), dim=16, classes=4, seed=0):
    """helpers.event_tokens in a store: half train, a quarter valid, a quarter test."""
    tokens, labels = event_tokens(n, grid, dim, classes, seed)
    splits = ["train"] * (n // 2) + ["valid"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
    return write_store(path, {0: tokens}, labels, [f"event{c}" for c in range(classes)],
                       [f"clip{i:03d}" for i in range(n)], splits, grid, chunk_clips=20)


def test_protobin_and_attentive_beat_mean_pooled_linear_on_localized_events(tmp_path):
    store = make_event_store(tmp_path / "events.zarr")
    specs = [
        HeadSpec("linear", lr=1e-1, weight_decay=1e-4, seed=0, options={"pooling": "mean"}),
        HeadSpec("attentive", lr=1e-1, weight_decay=1e-4, seed=0, options={"num_heads": 2}),
        HeadSpec("protobin", lr=3e-2, weight_decay=1e-4, seed=0, options={"prototypes_per_class": 4}),
    ]
    config = TrainConfig(epochs=10, batch_size=16, warmup_epochs=1.0, device="cpu")
    bank = HeadBank(specs, config).fit(SplitData(store, "train"))
    test = SplitData(store, "test")
    linear, attentive, protobin = (split_metrics(test.labels, s, True)["map"] for s in bank.predict(test))
    # Measured with these seeds (data seed 0): linear 0.60, attentive 0.91, protobin 0.97 test mAP; with data
    # seed 1: 0.63, 0.94, 0.92. Linear at lr 1e-2 does worse (0.55), so 1e-1 is its fair best here.
    assert protobin > linear + 0.2
    assert attentive > linear + 0.2


@pytest.mark.parametrize("lr,weight_decay,message", [
    (-1e-3, 1e-4, "head linear: lr: -0.001 is not a positive finite learning rate"),
    (float("nan"), 1e-4, "head linear: lr: nan is not a positive finite learning rate"),
    (1e-3, -1.0, "head linear: weight_decay: -1.0 is not a finite weight decay >= 0"),
    (1e-3, float("nan"), "head linear: weight_decay: nan is not a finite weight decay >= 0"),
])
def test_a_bank_refuses_lr_and_weight_decay_the_optimiser_cannot_use(tmp_path, lr, weight_decay, message):
    store = make_store(tmp_path / "s.zarr")
    with pytest.raises(ConfigError, match=re.escape(message)):
        HeadBank([HeadSpec("linear", lr=lr, weight_decay=weight_decay)], FAST).fit(SplitData(store, "train"))


@pytest.mark.parametrize("values,message", [
    ({"epochs": "ten"}, "train.epochs: 'ten' is not a whole number"),
    ({"epochs": 2.5}, "train.epochs: 2.5 is not a whole number"),
    ({"warmup_epochs": float("nan")}, "train.warmup_epochs: nan is not a finite number"),
    ({"amp": "yes"}, "train.amp: 'yes' is not true or false"),
    ({"shuffle_window_chunks": "8"}, "train.shuffle_window_chunks: '8' is not a whole number or null"),
    ({"loss_options": [1]}, "train.loss_options: [1] is not a mapping"),
])
def test_train_settings_of_the_wrong_type_are_refused_naming_the_key(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig.from_dict(values)
    with pytest.raises(ConfigError, match="train: expected a mapping"):
        TrainConfig.from_dict([("epochs", 3)])


def test_a_diverging_head_is_marked_and_the_others_train_on(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    train, valid = SplitData(store, "train"), SplitData(store, "valid")
    # lr x weight decay = 1e4: the decoupled decay multiplies the weights by -9999 a step, to inf, then NaN.
    specs = [HeadSpec("linear", lr=1e-2), HeadSpec("linear", lr=1e6, weight_decay=1e-2), HeadSpec("protobin", lr=1e-2)]
    epochs = []
    bank = HeadBank(specs, FAST).fit(train, valid, on_epoch=lambda epoch, _: epochs.append(epoch))
    assert bank.diverged_ == {1} and epochs == [1, 2, 3]
    assert bank.valid_metrics_[1]["diverged"] is True and np.isnan(bank.valid_metrics_[1]["map"])
    for k in (0, 2):  # the healthy heads end exactly as if trained without the diverging one
        alone = HeadBank([specs[k]], FAST).fit(train, valid)
        assert_same_state(state(alone.heads_[0]), state(bank.heads_[k]))
        assert bank.valid_metrics_[k]["map"] == alone.valid_metrics_[0]["map"] > 0
    assert max(row["epoch"] for row in bank.curves_ if row["lr"] == 1e6) == bank.valid_metrics_[1]["diverged_epoch"]
