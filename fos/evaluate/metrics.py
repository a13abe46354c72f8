"""Retrieval metrics as pure numpy functions (fractions in 0..1), following FOSD's
``utils/evaluation_metrics.py`` and ``evaluate/base.py``.

Rows are queries (backgrounds), columns candidates (foregrounds). Ties keep column order.
"""
from __future__ import annotations

import numpy as np


def rank_labels(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Labels (Q, N) reordered per row by descending score (stable)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(f"labels and scores must be the same 2-D shape, got {labels.shape} and {scores.shape}")
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(labels, order, axis=1)


def recall_at_k(ranked: np.ndarray, k: int) -> float:
    """Positives found in the top k over all positives (FOSD's ``recall_at_k``)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    total = ranked.sum()
    return float((ranked[:, :k] != 0).sum() / total) if total else 0.0


def precision_at_k(ranked: np.ndarray, k: int) -> float:
    """Mean fraction of positives among the top k."""
    if k < 1:
        raise ValueError("k must be >= 1")
    return float((ranked[:, :k] != 0).mean())


def average_precision(row: np.ndarray) -> float:
    """Mean of precision@(i+1) over the positive positions i of one ranked row (0 when none)."""
    r = np.asarray(row) != 0
    if not r.any():
        return 0.0
    hits = np.cumsum(r)
    pos = np.nonzero(r)[0]
    return float(np.mean(hits[pos] / (pos + 1)))


def mean_average_precision(ranked: np.ndarray, k: int = -1, valid: np.ndarray | None = None) -> float:
    """mAP over rows, each truncated to its first ``k`` (all when k <= 0) and ``valid[i]`` items."""
    if k > 0:
        ranked = ranked[:, :k]
    aps = []
    for i, row in enumerate(ranked):
        n = len(row) if valid is None else int(valid[i])
        aps.append(average_precision(row[:n]))
    return float(np.mean(aps))


def precision_at_k_valid(ranked: np.ndarray, valid: np.ndarray, k: int) -> float:
    """Precision over the first min(valid_i, k) items of each row (FOSD's ``precision_at_k_onlyValid``)."""
    hits = total = 0
    for i, row in enumerate(ranked):
        n = min(int(valid[i]), k)
        hits += float(np.sum(row[:n] != 0))
        total += n
    return hits / total if total else 0.0


def sfosd_metrics(labels: np.ndarray, scores: np.ndarray, ks=(1, 5, 10, 20)) -> dict[str, float]:
    ranked = rank_labels(labels, scores)
    return {f"recall@{k}": recall_at_k(ranked, k) for k in ks}


def aspect_filter(scores: np.ndarray, ratio_diff: np.ndarray, threshold: float = 1.2):
    """FOSD's R-FOSD filter: candidates whose |box aspect - fg aspect| >= threshold drop to the bottom.

    Returns the filtered scores and the number of valid candidates per row.
    """
    keep = np.asarray(ratio_diff) < threshold
    filtered = np.where(keep, np.asarray(scores, dtype=np.float64), -np.inf)
    return filtered, keep.sum(1)


def rfosd_metrics(labels: np.ndarray, scores: np.ndarray, ratio_diff: np.ndarray, threshold: float = 1.2,
                  ks=(1, 5, 10, 20)) -> dict[str, float]:
    """mAP, mAP-20 and Precision@k over the aspect-filtered ranking (FOSD's test set 2 protocol)."""
    filtered, valid = aspect_filter(scores, ratio_diff, threshold)
    ranked = rank_labels(labels, filtered)
    out = {"mAP": mean_average_precision(ranked, -1, valid), "mAP-20": mean_average_precision(ranked, 20, valid)}
    out.update({f"precision@{k}": precision_at_k_valid(ranked, valid, k) for k in ks})
    return out


def average_over_categories(per_category: dict[str, dict[str, float]]) -> dict[str, float]:
    """The paper's protocol: metrics computed per category, then averaged with equal weight."""
    keys = next(iter(per_category.values())).keys()
    return {k: float(np.mean([m[k] for m in per_category.values()])) for k in keys}
