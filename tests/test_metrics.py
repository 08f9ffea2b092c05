"""Metrics against hand-computed average precision, AUROC and accuracy on tiny arrays."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from embedcache.metrics import multiclass_metrics, multilabel_metrics

# 4 clips x 3 classes; class 2 has no positive.
TARGETS = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
SCORES = np.array([[0.9, 0.1, 0.22], [0.3, 0.8, 0.15], [0.2, 0.7, 0.35], [0.5, 0.25, 0.05]])


def test_per_class_ap_and_auroc_by_hand():
    result = multilabel_metrics(TARGETS, SCORES)
    # class 0 ranked: 0.9 (+), 0.5 (-), 0.3 (-), 0.2 (+): AP = (1/1 + 2/4) / 2; AUROC: 0.9 beats both negatives,
    # 0.2 beats neither -> 2/4. class 1: the positive ranks first -> AP 1, AUROC 1.
    assert result["per_class_ap"][0] == pytest.approx(0.75)
    assert result["per_class_ap"][1] == pytest.approx(1.0)
    assert math.isnan(result["per_class_ap"][2])
    assert result["map"] == pytest.approx((0.75 + 1.0) / 2)
    assert result["macro_auroc"] == pytest.approx((0.5 + 1.0) / 2)
    assert result["n_classes_scored"] == 2 and result["n_classes_auroc"] == 2


def test_micro_ap_by_hand():
    # All 12 pairs ranked by score, no ties: + + - - - - - - + - - -  (positives at ranks 1, 2, 9)
    result = multilabel_metrics(TARGETS, SCORES)
    assert result["micro_ap"] == pytest.approx((1 / 1 + 2 / 2 + 3 / 9) / 3)


def test_classes_without_positives_do_not_change_map():
    with_empty = multilabel_metrics(TARGETS, SCORES)
    without = multilabel_metrics(TARGETS[:, :2], SCORES[:, :2])
    assert with_empty["map"] == without["map"]
    assert with_empty["macro_auroc"] == without["macro_auroc"]


def test_a_class_that_is_always_positive_counts_in_map_but_not_in_auroc():
    targets = np.array([[1, 1], [1, 0], [1, 1]])
    scores = np.array([[0.2, 0.9], [0.1, 0.4], [0.3, 0.3]])
    result = multilabel_metrics(targets, scores)
    assert result["per_class_ap"] == [pytest.approx(1.0), pytest.approx((1 + 2 / 3) / 2)]
    assert result["n_classes_scored"] == 2 and result["n_classes_auroc"] == 1
    assert result["macro_auroc"] == pytest.approx(0.5)  # class 1: positives 0.9, 0.3 vs negative 0.4


def test_no_positive_anywhere_gives_nan_not_an_error():
    result = multilabel_metrics(np.zeros((3, 2), dtype=int), np.random.default_rng(0).random((3, 2)))
    assert math.isnan(result["map"]) and math.isnan(result["micro_ap"]) and math.isnan(result["macro_auroc"])
    assert result["n_classes_scored"] == 0


def test_results_are_plain_python_and_json_able():
    result = multiclass_metrics(np.array([0, 1, 0, 1]), SCORES)
    for key, value in result.items():
        assert type(value) in (float, int, list), key
    assert json.loads(json.dumps(result))["accuracy"] == result["accuracy"]


def test_multiclass_accuracy_by_hand_with_indices_or_one_hot():
    targets = np.array([0, 1, 2, 1])
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.2, 0.7], [0.4, 0.4, 0.2]])
    by_index = multiclass_metrics(targets, scores)
    # rows 0 and 2 right, row 1 wrong, row 3 ties 0.4/0.4 -> lowest index (0) -> wrong
    assert by_index["accuracy"] == 0.5
    one_hot = np.eye(3, dtype=int)[targets]
    assert multiclass_metrics(one_hot, scores) == by_index
    assert by_index["map"] == multilabel_metrics(one_hot, scores)["map"]
    # class 1 positives are rows 1 and 3; ranked by score 0.4 (+), 0.3 (+), ... -> AP 1
    assert by_index["per_class_ap"][1] == pytest.approx(1.0)


def test_bad_inputs_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="same shape"):
        multilabel_metrics(TARGETS, SCORES[:, :2])
    with pytest.raises(ValueError, match="NaN or inf"):
        multilabel_metrics(TARGETS, np.where(SCORES > 0.8, np.nan, SCORES))
    with pytest.raises(ValueError, match="0/1"):
        multilabel_metrics(TARGETS * 2, SCORES)
    with pytest.raises(ValueError, match="exactly one 1"):
        multiclass_metrics(TARGETS, SCORES)
    with pytest.raises(ValueError, match="0..2"):
        multiclass_metrics(np.array([0, 1, 3, 0]), SCORES)
