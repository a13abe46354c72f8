"""Holes of the kinds users make, for training and evaluation, and the crop around a hole.

- box holes: an axis-aligned box, as drawn in the app;
- object-shaped holes: an instance mask of *another* photo (cropped to its box, rescaled, placed at
  random, dilated a little so the hole covers an object's edge as a user's erasure must).

All randomness comes from a ``numpy.random.Generator`` that the caller seeds.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]


def box_hole(h: int, w: int, rng: np.random.Generator, lo: float = 0.2, hi: float = 0.55) -> np.ndarray:
    """A random box with sides ``lo``..``hi`` of the image's sides, fully inside; bool (h, w)."""
    bh = max(2, int(round(h * rng.uniform(lo, hi))))
    bw = max(2, int(round(w * rng.uniform(lo, hi))))
    y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    m = np.zeros((h, w), bool)
    m[y:y + bh, x:x + bw] = True
    return m


def crop_to_content(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    if not len(ys):
        raise ValueError("empty mask")
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def load_masks(paths: list[str], shape: tuple[int, int], min_pixels: int = 64) -> list[np.ndarray]:
    """Instance masks (bool, photo-sized ``shape`` (h, w)) from files; tiny ones are dropped, a mask of
    another size is an error."""
    from fos.errors import DatasetError

    out = []
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("L")) > 127
        if a.shape != tuple(shape):
            raise DatasetError(f"{p}: the mask is {a.shape[1]}x{a.shape[0]}, its photo {shape[1]}x{shape[0]}")
        if a.sum() >= min_pixels:
            out.append(a)
    return out


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    if px <= 0:
        return mask
    import cv2

    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), k) > 0


def object_hole(h: int, w: int, shape: np.ndarray, rng: np.random.Generator, lo: float = 0.2, hi: float = 0.55,
                dilate_px: int = 2) -> np.ndarray:
    """``shape`` rescaled so its longer side is ``lo``..``hi`` of the image's shorter side, flipped at
    random, placed fully inside at random and dilated by ``dilate_px``; bool (h, w)."""
    side = rng.uniform(lo, hi) * min(h, w)
    sh, sw = shape.shape
    f = side / max(sh, sw)
    nh, nw = max(2, min(h, int(round(sh * f)))), max(2, min(w, int(round(sw * f))))
    s = np.asarray(Image.fromarray(shape.astype(np.uint8) * 255).resize((nw, nh), Image.BILINEAR)) > 127
    if rng.random() < 0.5:
        s = s[:, ::-1]
    y, x = int(rng.integers(0, h - nh + 1)), int(rng.integers(0, w - nw + 1))
    m = np.zeros((h, w), bool)
    m[y:y + nh, x:x + nw] = s
    if not m.any():  # a sliver that vanished in the resize: fall back to its box
        m[y:y + nh, x:x + nw] = True
    return dilate(m, dilate_px)


def hole_bbox(mask: np.ndarray) -> Box:
    """(x1, y1, x2, y2), x2/y2 exclusive, of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        raise ValueError("the hole is empty")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def crop_window(bbox: Box, width: int, height: int, context: float = 2.0, min_crop: int = 64) -> Box:
    """The crop the generator sees around a hole: a square ``context`` times the hole's longer side
    (at least ``min_crop``), centred on the hole, shifted to lie inside the photo and clipped to it
    (so a window can be non-square only where the photo is smaller than it). Always contains ``bbox``."""
    x1, y1, x2, y2 = bbox
    side = max(context * max(x2 - x1, y2 - y1), min_crop)
    ww, wh = int(min(round(side), width)), int(min(round(side), height))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    wx = int(min(max(round(cx - ww / 2), 0), width - ww))
    wy = int(min(max(round(cy - wh / 2), 0), height - wh))
    return wx, wy, wx + ww, wy + wh


# --------------------------------------------------------------------------- the holes users make
# A user erases an object: its box (what the app's "erase" fills) or its mask, dilated. Inside such a hole
# the true background behind the object is unknown, so each of these holes comes with ``known``: the
# pixels whose true value is background (everything off the photo's instance masks, which are dilated by
# ``margin`` px so their soft edges count as object). Losses and metrics use only hole & known.
USER_KINDS = ("object-box", "object-mask", "background-box")
RANDOM_KINDS = ("box", "object")
KINDS = RANDOM_KINDS + USER_KINDS


def union(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for m in masks:
        out |= m
    return out


def object_box_hole(obj: np.ndarray, objects: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The box of instance ``obj`` (bool mask) as the hole, what the app's "erase" fills; ``known``: off
    every instance (``objects``, the union) dilated by ``margin``. Returns (hole, known)."""
    x1, y1, x2, y2 = hole_bbox(obj)
    hole = np.zeros_like(obj, dtype=bool)
    hole[y1:y2, x1:x2] = True
    return hole, ~dilate(objects, margin)


def object_mask_hole(obj: np.ndarray, objects: np.ndarray, dilate_px: int = 6,
                     margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Instance ``obj`` dilated by ``dilate_px`` as the hole (an erasure that follows the object's outline);
    only the dilated ring off every instance is known. Returns (hole, known)."""
    return dilate(obj, dilate_px), ~dilate(objects, margin)


def background_box_hole(objects: np.ndarray, rng: np.random.Generator, lo: float = 0.15, hi: float = 0.45,
                        tries: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """A random box placed on background: of ``tries`` random boxes, the first that touches no instance,
    else the one that touches the fewest instance pixels. Returns (hole, known)."""
    h, w = objects.shape
    best, best_overlap = None, None
    for _ in range(tries):
        hole = box_hole(h, w, rng, lo, hi)
        overlap = int((hole & objects).sum())
        if best is None or overlap < best_overlap:
            best, best_overlap = hole, overlap
        if overlap == 0:
            break
    return best, ~dilate(objects, 2)
