"""WSOL metrics as in Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right"
(CVPR 2020): pure functions of CAMs (min-max normalized to [0, 1]), boxes and masks.

Boxes are XYXY pixels with x2/y2 exclusive, so a box's area is (x2 - x1) * (y2 - y1).

* BoxAcc(tau, delta): the fraction of samples for which some box of the CAM thresholded at tau (one box
  per 8-connected component: the "all contours" rule of MaxBoxAccV2) overlaps some ground-truth box
  of the class with IoU >= delta. MaxBoxAccV2 = mean over delta in {0.3, 0.5, 0.7} of max over tau.
* PxAP: average precision of the CAM's pixels against the ground-truth masks, over all samples.
* Top-1 localization: the top-1 class is a true label of the photo and the box of its CAM at the
  operating threshold overlaps a box of that class with IoU >= 0.5.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

Box = tuple[int, int, int, int]
CAM_THRESHOLDS = np.round(np.arange(0.0, 1.0, 0.01), 2)
IOU_THRESHOLDS = (0.3, 0.5, 0.7)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def components(binary: np.ndarray) -> tuple[list[Box], np.ndarray, np.ndarray]:
    """8-connected components of a bool map: (boxes, label image, areas)."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    boxes = [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, _ in stats[1:n]]
    return boxes, lab, stats[1:n, 4]


def cam_boxes(cam: np.ndarray, threshold: float) -> list[Box]:
    """One box per 8-connected component of ``cam >= threshold`` (empty list when nothing is on)."""
    return components(cam >= threshold)[0]


def cam_box(cam: np.ndarray, threshold: float) -> Box | None:
    """The single box a user gets: the component of ``cam >= threshold`` holding the most CAM mass."""
    boxes, lab, _ = components(cam >= threshold)
    if not boxes:
        return None
    mass = np.bincount(lab.ravel(), weights=cam.ravel(), minlength=len(boxes) + 1)[1:]
    return boxes[int(np.argmax(mass))]


def best_iou(boxes: Sequence[Box], gt_boxes: Sequence[Box]) -> float:
    return max((box_iou(b, g) for b in boxes for g in gt_boxes), default=0.0)


def box_accuracy_curve(cams: Sequence[np.ndarray], gt_boxes: Sequence[Sequence[Box]],
                       thresholds: Sequence[float] = CAM_THRESHOLDS,
                       iou_thresholds: Sequence[float] = IOU_THRESHOLDS) -> np.ndarray:
    """BoxAcc (len(thresholds), len(iou_thresholds)) with the all-components rule."""
    hits = np.zeros((len(thresholds), len(iou_thresholds)))
    for cam, gts in zip(cams, gt_boxes, strict=True):
        for i, t in enumerate(thresholds):
            iou = best_iou(cam_boxes(cam, t), gts)
            hits[i] += [iou >= d for d in iou_thresholds]
    return hits / max(len(cams), 1)


def max_box_acc_v2(curve: np.ndarray) -> tuple[float, list[float]]:
    """(MaxBoxAccV2, per-IoU-threshold max over the CAM threshold) from :func:`box_accuracy_curve`."""
    per = curve.max(0).tolist()
    return float(np.mean(per)), per


def pxap(cams: Sequence[np.ndarray], gt_masks: Sequence[np.ndarray], bins: int = 1000) -> float:
    """Pixel average precision: AP = sum_i (R_i - R_{i-1}) P_i over CAM thresholds from high to low,
    with pixels binned into ``bins`` equal CAM intervals (values in one bin share a threshold)."""
    pos = np.zeros(bins, np.int64)
    neg = np.zeros(bins, np.int64)
    for cam, gt in zip(cams, gt_masks, strict=True):
        if cam.shape != gt.shape:
            raise ValueError(f"CAM {cam.shape} and mask {gt.shape} differ in shape")
        idx = np.clip((cam * bins).astype(np.int64), 0, bins - 1)
        pos += np.bincount(idx[gt], minlength=bins)
        neg += np.bincount(idx[~gt], minlength=bins)
    if pos.sum() == 0:
        raise ValueError("PxAP needs at least one ground-truth pixel")
    tp = np.cumsum(pos[::-1])  # thresholds from the highest bin down
    fp = np.cumsum(neg[::-1])
    keep = (tp + fp) > 0
    precision = np.where(keep, tp / np.maximum(tp + fp, 1), 0.0)
    recall = tp / pos.sum()
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def top1_loc(pred_class: Sequence[str], labels: Sequence[Sequence[str]], pred_boxes: Sequence[Box | None],
             gt_boxes: Sequence[dict[str, Sequence[Box]]], iou: float = 0.5) -> float:
    """Fraction of photos whose top-1 class is a true label and whose box for it has IoU >= ``iou``."""
    ok = 0
    for c, labs, box, gts in zip(pred_class, labels, pred_boxes, gt_boxes, strict=True):
        ok += c in labs and box is not None and best_iou([box], gts.get(c, [])) >= iou
    return ok / max(len(pred_class), 1)


def mask_iou(pred: np.ndarray, gt: np.ndarray, box: Box | None = None) -> float:
    """IoU of two bool masks, inside ``box`` when given; 1.0 when both are empty there."""
    if box is not None:
        x1, y1, x2, y2 = box
        pred, gt = pred[y1:y2, x1:x2], gt[y1:y2, x1:x2]
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 1.0
