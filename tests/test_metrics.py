import numpy as np
import pytest

from fos.evaluate import metrics as M


def test_rank_labels_descending_and_stable():
    labels = np.array([[0, 1, 0, 0], [1, 0, 0, 1]])
    scores = np.array([[0.1, 0.5, 0.9, 0.2], [0.3, 0.3, 0.8, 0.1]])
    ranked = M.rank_labels(labels, scores)
    # row 0 order: idx 2 (0.9), 1 (0.5), 3 (0.2), 0 (0.1); row 1: 2, 0, 1 (tie keeps order), 3
    assert ranked.tolist() == [[0, 1, 0, 0], [0, 1, 0, 1]]


def test_recall_at_k_hand_computed():
    ranked = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    assert M.recall_at_k(ranked, 1) == pytest.approx(1 / 3)
    assert M.recall_at_k(ranked, 2) == pytest.approx(2 / 3)
    assert M.recall_at_k(ranked, 4) == pytest.approx(1.0)
    assert M.recall_at_k(ranked, 20) == pytest.approx(1.0)  # k beyond the list


def test_average_precision_hand_computed():
    # positives at ranks 1 and 3: (1/1 + 2/3) / 2
    assert M.average_precision(np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert M.average_precision(np.array([0, 0, 0])) == 0.0
    ranked = np.array([[1, 0, 1, 0], [0, 1, 0, 0]])
    assert M.mean_average_precision(ranked) == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)
    # mAP-2 truncates to the first two items: row0 -> 1.0, row1 -> 0.5
    assert M.mean_average_precision(ranked, 2) == pytest.approx(0.75)


def test_precision_and_valid_variants():
    ranked = np.array([[1, 0, 1, 1], [0, 1, 0, 0]])
    assert M.precision_at_k(ranked, 2) == pytest.approx(2 / 4)
    # valid: row 0 has 3 valid candidates, row 1 only 1
    assert M.precision_at_k_valid(ranked, np.array([3, 1]), 2) == pytest.approx((1 + 0) / (2 + 1))
    assert M.mean_average_precision(ranked, -1, valid=np.array([3, 1])) == pytest.approx(((1 + 2 / 3) / 2 + 0) / 2)


def test_rfosd_aspect_filter_moves_invalid_to_the_bottom():
    labels = np.array([[1, 0, 1]])
    scores = np.array([[0.9, 0.8, 0.1]])
    ratio = np.array([[2.0, 0.1, 0.1]])  # the best-scored positive fails the filter
    m = M.rfosd_metrics(labels, scores, ratio, threshold=1.2, ks=(1, 2))
    # valid ranking: [neg(0.8), pos(0.1)], 2 valid -> AP = 1/2, P@1 = 0, P@2 = 1/2
    assert m["mAP"] == pytest.approx(0.5)
    assert m["precision@1"] == 0.0
    assert m["precision@2"] == pytest.approx(0.5)


def test_sfosd_metrics_and_category_average():
    labels = np.eye(3)
    scores = np.array([[0.9, 0.1, 0.0], [0.9, 0.5, 0.1], [0.3, 0.2, 0.1]])
    m = M.sfosd_metrics(labels, scores, ks=(1, 2))
    assert m == {"recall@1": pytest.approx(1 / 3), "recall@2": pytest.approx(2 / 3)}
    avg = M.average_over_categories({"a": {"r": 1.0}, "b": {"r": 0.0}, "c": {"r": 0.5}})
    assert avg["r"] == pytest.approx(0.5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same 2-D shape"):
        M.rank_labels(np.zeros((2, 3)), np.zeros((3, 2)))
