"""Photometric changes of a photo or a cutout: casts, relighting and a seeded family of random changes.

A **cast** is a photo's mean colour (RGB, 0..255) outside its query box. Relighting an image from one
cast to another multiplies each channel by ``target / source`` (:func:`cast_gains`), a change of
exposure and white balance that keeps the object's own colours. The harmony protocol of
:mod:`fos.evaluate.harmony` relights the query's own cutout to the casts of other photos; training
(:mod:`fos.train`) draws negatives that differ from the positive only in such a change
(:func:`random_change`). Only the pixels a mask selects change: a cutout's object pixels, or a
background's pixels outside its box.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

GAIN_RANGE = (0.35, 2.8)  # per-channel gains are clipped to this range (a cast of a near-black photo)


def photo_cast(img: Image.Image, box=None) -> np.ndarray:
    """Mean RGB (3,) float64 of ``img``, the pixels inside ``box`` (x1, y1, x2, y2) left out."""
    a = np.asarray(img.convert("RGB"), dtype=np.float64)
    keep = np.ones(a.shape[:2], bool)
    if box is not None:
        x1, y1, x2, y2 = (int(v) for v in box)
        keep[y1:y2, x1:x2] = False
    if not keep.any():
        keep[:] = True
    return a[keep].mean(0)


def cast_gains(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-channel gains (3,) that move the cast ``source`` to ``target``."""
    g = (np.asarray(target, np.float64) + 1.0) / (np.asarray(source, np.float64) + 1.0)
    return np.clip(g, *GAIN_RANGE)


def cast_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest per-channel log-ratio between two casts (0 = the same exposure and white balance)."""
    return float(np.abs(np.log((np.asarray(a) + 1.0) / (np.asarray(b) + 1.0))).max())


def apply(img: Image.Image, fn, mask: np.ndarray) -> Image.Image:
    """``img`` with ``fn`` (float HxWx3 in 0..1 -> same) applied to the pixels where ``mask`` is True."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    out = a.copy()
    out[mask] = np.clip(fn(a[mask][None])[0], 0.0, 1.0)
    return Image.fromarray(np.round(out * 255.0).astype(np.uint8))


def relight(img: Image.Image, gains: np.ndarray, mask: np.ndarray) -> Image.Image:
    """Multiply the masked pixels of ``img`` by per-channel ``gains``."""
    g = np.asarray(gains, np.float32)
    return apply(img, lambda x: x * g, mask)


def outside_box(size: tuple[int, int], box) -> np.ndarray:
    """Mask (H, W) of the pixels outside ``box``."""
    w, h = size
    m = np.ones((h, w), bool)
    x1, y1, x2, y2 = (int(v) for v in box)
    m[y1:y2, x1:x2] = False
    return m


def random_change(rng: np.random.Generator, strength: float = 1.0):
    """A seeded photometric change (float Nx3 in 0..1 -> same), drawn from a family: white-balance gains,
    exposure, gamma, saturation and colour temperature, each applied with probability 1/2 (at least one).
    ``strength`` scales how far each goes from the identity."""
    s = strength
    parts = []
    kinds = [k for k in ("wb", "exposure", "gamma", "saturation", "temperature") if rng.random() < 0.5]
    if not kinds:
        kinds = [("wb", "exposure", "gamma", "saturation", "temperature")[int(rng.integers(5))]]
    for k in kinds:
        if k == "wb":
            g = np.exp(rng.uniform(-0.25, 0.25, 3) * s).astype(np.float32)
            parts.append(lambda x, g=g: x * g)
        elif k == "exposure":
            e = np.float32(np.exp(rng.uniform(-0.5, 0.5) * s))
            parts.append(lambda x, e=e: x * e)
        elif k == "gamma":
            gm = np.float32(np.exp(rng.uniform(-0.35, 0.35) * s))
            parts.append(lambda x, gm=gm: np.clip(x, 0, 1) ** gm)
        elif k == "saturation":
            sat = np.float32(np.exp(rng.uniform(-0.6, 0.4) * s))
            parts.append(lambda x, sat=sat: x.mean(-1, keepdims=True) + (x - x.mean(-1, keepdims=True)) * sat)
        else:  # colour temperature: warm (red up, blue down) or cool
            t = np.float32(rng.uniform(-0.2, 0.2) * s)
            g = np.array([1 + t, 1.0, 1 - t], np.float32)
            parts.append(lambda x, g=g: x * g)

    def fn(x):
        for p in parts:
            x = p(x)
        return x

    return fn
