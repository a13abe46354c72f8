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


def load_shapes(paths: list[str], min_pixels: int = 64) -> list[np.ndarray]:
    """Object shapes (bool, cropped to their content) from instance mask files; tiny ones are dropped."""
    out = []
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("L")) > 127
        if a.sum() >= min_pixels:
            out.append(crop_to_content(a))
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
