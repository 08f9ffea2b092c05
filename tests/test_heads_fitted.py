"""knn and logreg, the heads fitted from whole splits with no optimiser: they agree with a hand-written weighted
vote and with scikit-learn on the same pooled features, survive snapshot/restore and saved weights, take one
configuration of a probe grid, and run end to end through the CLI with the other new heads."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import StandardScaler
from test_train import make_store

from embedcache import heads
from embedcache.errors import ConfigError
from embedcache.loader import SplitData
from embedcache.probe import _bank_specs, resolve_config
from embedcache.train import HeadBank, HeadSpec, TrainConfig
from embedcache_cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = TrainConfig(epochs=2, batch_size=8, device="cpu")


def pooled_mean(data: SplitData) -> np.ndarray:
    """The mean over real tokens of every clip [N, D] (float32 as the heads pool it), in split order."""
    rows = np.zeros((data.n_clips, data.store.embed_dim), dtype=np.float32)
    for raw in data.batches(5):
        rows[raw.positions] = heads.TokenBatch(raw.tokens.float(), raw.mask).mean.numpy()
    return rows


def knn_by_hand(train: np.ndarray, labels: np.ndarray, query: np.ndarray, k: int, temperature: float) -> np.ndarray:
    """DINO's weighted vote: cosine similarity, the k most similar, weights exp(s / T); per class sum w y / sum w."""
    train = train.astype(np.float64) / np.linalg.norm(train.astype(np.float64), axis=1, keepdims=True)
    query = query.astype(np.float64) / np.linalg.norm(query.astype(np.float64), axis=1, keepdims=True)
    similarity = query @ train.T
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(similarity, nearest, axis=1) / temperature)
    return np.einsum("nk,nkc->nc", weights, labels[nearest].astype(np.float64)) / weights.sum(axis=1, keepdims=True)


@pytest.fixture
def splits(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=96, valid_tokens=np.where(np.arange(96) % 4 == 0, 9, 16))
    return tuple(SplitData(store, split) for split in ("train", "valid", "test"))


def multiclass_splits(tmp_path):
    labels = np.eye(3, dtype=np.uint8)[np.arange(96) % 3]
    store = make_store(tmp_path / "mc.zarr", n=96, labels=labels)
    return tuple(SplitData(store, split) for split in ("train", "valid", "test"))


# ---- knn --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multiclass", [False, True])
def test_knn_scores_equal_the_weighted_vote_by_hand(tmp_path, splits, multiclass):
    train, valid, test = multiclass_splits(tmp_path) if multiclass else splits
    bank = HeadBank([HeadSpec("knn"), HeadSpec("knn", options={"k": 7, "temperature": 0.5})], FAST).fit(train, valid)
    default, other = bank.predict(test)
    assert (bank.heads_[0].k, bank.heads_[0].temperature) == (20, 0.07)  # DINO's defaults
    for scores, k, temperature in ((default, 20, 0.07), (other, 7, 0.5)):
        expected = knn_by_hand(pooled_mean(train), train.labels, pooled_mean(test), k, temperature)
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    if multiclass:
        np.testing.assert_allclose(default.sum(axis=1), 1.0, atol=1e-6)
    assert bank.heads_[0].neighbours_.shape == (train.n_clips, 8)
    assert bank.heads_[0].num_parameters() == 0
    assert bank.curves_ == []  # nothing trained by the loop


def test_knn_caps_k_at_the_training_set_and_refuses_to_predict_unfitted(splits):
    train, _, test = splits
    bank = HeadBank([HeadSpec("knn", options={"k": 1000, "temperature": 1.0})], FAST).fit(train)
    expected = knn_by_hand(pooled_mean(train), train.labels, pooled_mean(test), train.n_clips, 1.0)
    np.testing.assert_allclose(bank.predict(test)[0], expected, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="knn head: not fitted"):
        heads.create("knn", 3, 8)(heads.TokenBatch(torch.ones(1, 2, 8)))
    with pytest.raises(ConfigError, match="knn head: k=0"):
        heads.create("knn", 3, 8, k=0)


# ---- logreg -------------------------------------------------------------------------------------------------------


def test_logreg_chooses_c_on_validation_and_equals_scikit_learn(splits):
    train, valid, test = splits
    bank = HeadBank([HeadSpec("logreg")], FAST).fit(train, valid)
    head = bank.heads_[0]
    scaler = StandardScaler().fit(pooled_mean(train).astype(np.float64))
    x_train, x_valid, x_test = (scaler.transform(pooled_mean(d).astype(np.float64)) for d in (train, valid, test))

    # scikit-learn's warm-started path: each class's model refitted at each C, from the smallest up.
    models = [LogisticRegression(max_iter=1000, warm_start=True) for _ in range(3)]
    grid = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0]
    valid_map, test_probs = [], []
    for c in grid:
        for j, model in enumerate(models):
            model.set_params(C=c).fit(x_train, train.labels[:, j])
        probs = np.stack([model.predict_proba(x_valid)[:, 1] for model in models], axis=1)
        valid_map.append(np.mean([average_precision_score(valid.labels[:, j], probs[:, j]) for j in range(3)]))
        test_probs.append(np.stack([model.predict_proba(x_test)[:, 1] for model in models], axis=1))
    chosen = int(np.argmax(valid_map))
    assert float(head.C_) == pytest.approx(grid[chosen])
    expected = test_probs[chosen]
    np.testing.assert_allclose(bank.predict(test)[0], expected, rtol=0, atol=1e-6)
    assert bank.valid_metrics_[0]["map"] == pytest.approx(max(valid_map), abs=1e-6)
    assert head.num_parameters() == 8 * 3 + 3


def test_multiclass_logreg_is_multinomial_and_equals_scikit_learn(tmp_path):
    train, valid, test = multiclass_splits(tmp_path)
    bank = HeadBank([HeadSpec("logreg", options={"C": 0.5})], FAST).fit(train, valid)
    scaler = StandardScaler().fit(pooled_mean(train).astype(np.float64))
    model = LogisticRegression(C=0.5, max_iter=1000).fit(scaler.transform(pooled_mean(train)),
                                                        train.labels.argmax(axis=1))
    expected = model.predict_proba(scaler.transform(pooled_mean(test)))
    np.testing.assert_allclose(bank.predict(test)[0], expected, rtol=0, atol=1e-6)
    assert float(bank.heads_[0].C_) == 0.5


def test_logreg_without_validation_uses_c_1_and_gives_constant_classes_constant_scores(tmp_path):
    labels = (np.random.default_rng(0).random((48, 3)) < 0.5).astype(np.uint8)
    labels[:, 2] = 1  # every clip has it
    store = make_store(tmp_path / "s.zarr", n=48, labels=labels)
    train, test = SplitData(store, "train"), SplitData(store, "test")
    bank = HeadBank([HeadSpec("logreg")], FAST).fit(train)
    assert float(bank.heads_[0].C_) == 1.0
    scores = bank.predict(test)[0]
    assert np.all(scores[:, 2] == 1.0) and np.isfinite(scores).all()
    with pytest.raises(ConfigError, match="logreg head: not fitted"):
        heads.create("logreg", 3, 8)(heads.TokenBatch(torch.ones(1, 2, 8)))
    with pytest.raises(ConfigError, match="c_max=0.1 must be >= c_min=1.0"):
        heads.create("logreg", 3, 8, c_min=1.0, c_max=0.1)


# ---- state, grid and the CLI ----------------------------------------------------------------------------------------


def test_fitted_state_survives_snapshot_restore_and_a_rebuild_from_config(splits):
    train, valid, test = splits
    specs = [HeadSpec("knn", options={"k": 5}), HeadSpec("logreg", options={"c_steps": 3}), HeadSpec("linear")]
    bank = HeadBank(specs, FAST).fit(train, valid)
    restored = HeadBank.restore(*bank.snapshot())
    for before, after in zip(bank.predict(test), restored.predict(test), strict=True):
        assert np.array_equal(before, after)
    for head in bank.heads_[:2]:  # as results.py saves and predict.py loads a head
        rebuilt = heads.create(**head.config)
        rebuilt.load_state_dict({key: value.clone() for key, value in head.state_dict().items()})
        batch = heads.TokenBatch(torch.randn(3, 16, 8, generator=torch.Generator().manual_seed(0)))
        assert torch.equal(rebuilt(batch), head(batch))


def test_a_probe_grid_gives_fitted_heads_one_configuration():
    config = resolve_config({"heads": ["knn", "logreg", "linear"], "grid": {"lr": [1e-3, 1e-2], "weight_decay":
                                                                          [0.0, 1e-4]}})
    specs, names = _bank_specs(config, seed=0)
    assert names == ["knn", "logreg"] + ["linear"] * 4
    assert not heads.uses_optimiser("knn") and not heads.uses_optimiser("logreg") and heads.uses_optimiser("ep")


def test_probe_runs_the_new_heads_end_to_end_and_predict_reproduces_them(tmp_path):
    make_store(tmp_path / "s.zarr", dim=16)
    runner = CliRunner()
    result = runner.invoke(main, ["probe", str(tmp_path / "s.zarr"), "--head", "ep,simpool,abmilp,knn,logreg",
                                  "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--no-progress",
                                  "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    reported = {h["head"]: h for h in json.loads((tmp_path / "run" / "metrics.json").read_text())["heads"]}
    for kind in ("ep", "simpool", "abmilp", "knn", "logreg"):
        expected = heads.create(kind, 3, 16).num_parameters()
        assert reported[kind]["num_parameters"] == expected
        assert any(line.split()[:2] == [kind, kind] and f"{expected:,}" in line.split()
                   for line in result.output.splitlines()), result.output
    sweep = list(csv.DictReader(open(tmp_path / "run" / "sweep.csv")))
    assert [row["head"] for row in sweep].count("knn") == 1 and [row["head"] for row in sweep].count("ep") == 3
    again = runner.invoke(main, ["predict", str(tmp_path / "run"), str(tmp_path / "s.zarr"), "--split", "test",
                                 "--out", str(tmp_path / "again.csv")])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "run" / "predictions.csv").read_text()


def test_logreg_that_stops_at_max_iter_says_so_in_one_warning_line(tmp_path):
    make_store(tmp_path / "s.zarr", dim=16)
    result = CliRunner().invoke(
        main, ["probe", str(tmp_path / "s.zarr"), "--head", "logreg", "--head-option", "logreg.max_iter=1",
               "--epochs", "1", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output + result.stderr
    lines = [line for line in result.stderr.splitlines() if "logreg" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: logreg head: lbfgs stopped at max_iter=1 before "
                                                   "converging in "), result.stderr
    assert "logreg.max_iter=N" in lines[0] and "ConvergenceWarning" not in result.stderr


def test_logreg_path_starts_each_c_from_the_previous_solution(splits):
    from embedcache.heads.logreg import LogisticPath

    train = splits[0]
    features = StandardScaler().fit_transform(pooled_mean(train).astype(np.float64))
    path = LogisticPath(train.labels, True, max_iter=1000)
    path.fit(features, 1.0)
    first = [int(model.n_iter_[0]) for model in path.models]
    path.fit(features, 1.0)  # the same C again: it starts at the optimum and stops at once
    assert all(int(model.n_iter_[0]) < start for model, start in zip(path.models, first))
    assert path.unconverged == []
