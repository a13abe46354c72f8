"""Referring segmentation metrics: pure functions of maps and masks (bool, photo size).

* **PointM**: the response map's peak falls inside the referred object's mask (the first maximum in
  row-major order when there are several);
* **mIoU**: the mean over phrases of the IoU of the predicted mask with the referred object's mask;
  **overall IoU**: total intersection over total union, over all phrases;
* **instance accuracy**: on photos with two or more instances of the phrase's category, the share of
  phrases whose mask overlaps the referred instance by more pixels than it overlaps any other instance
  of that category (a tie, such as no overlap at all, is a miss).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def point_hit(response: np.ndarray, gt: np.ndarray) -> bool:
    if response.shape != gt.shape:
        raise ValueError(f"response {response.shape} and mask {gt.shape} differ in shape")
    y, x = np.unravel_index(int(np.argmax(response)), response.shape)
    return bool(gt[y, x])


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    if pred.shape != gt.shape:
        raise ValueError(f"mask {pred.shape} and mask {gt.shape} differ in shape")
    return int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum())


def instance_hit(pred: np.ndarray, instances: Sequence[np.ndarray], referred: int) -> bool:
    """``pred`` overlaps ``instances[referred]`` by more pixels than any other of ``instances``."""
    overlaps = [int(np.logical_and(pred, m).sum()) for m in instances]
    own = overlaps[referred]
    return own > 0 and all(own > o for k, o in enumerate(overlaps) if k != referred)


@dataclass
class Record:
    """One scored phrase."""

    point: float  # 1 / 0 (or an expectation, for the random-instance baseline)
    inter: float
    union: float
    instance: float | None  # None unless the photo has two or more instances of the category
    lr: bool = False  # the phrase has a left or right location word


def summarize(records: Sequence[Record]) -> dict:
    """PointM, mIoU, overall IoU and instance accuracy (None when no record has two instances)."""
    if not records:
        return {"phrases": 0, "PointM": None, "mIoU": None, "oIoU": None, "instance_acc": None, "multi": 0}
    multi = [r.instance for r in records if r.instance is not None]
    return {"phrases": len(records),
            "PointM": float(np.mean([r.point for r in records])),
            "mIoU": float(np.mean([r.inter / r.union if r.union else 0.0 for r in records])),
            "oIoU": float(sum(r.inter for r in records) / max(sum(r.union for r in records), 1e-9)),
            "instance_acc": float(np.mean(multi)) if multi else None, "multi": len(multi)}


def record(pred: np.ndarray, response: np.ndarray, instances: Sequence[np.ndarray], referred: int,
           same_category: Sequence[int], lr: bool = False) -> Record:
    """The :class:`Record` of one prediction: ``instances`` are the photo's instance masks, ``referred``
    the phrase's, ``same_category`` the positions of the instances of its category (``referred`` among them)."""
    gt = instances[referred]
    i, u = intersection_union(pred, gt)
    inst = None
    if len(same_category) >= 2:
        inst = float(instance_hit(pred, [instances[k] for k in same_category], list(same_category).index(referred)))
    return Record(float(point_hit(response, gt)), i, u, inst, lr)
