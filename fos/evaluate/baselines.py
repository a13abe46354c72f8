"""Scorers with no training, used as baselines: ``random``, ``aspect``, ``color``, ``imagenet`` (and the
``geometry`` control: aspect and size).

Every scorer (trained models too, see :mod:`fos.evaluate`) maps a prepared query background and the
:class:`Candidates` of its category to one score per candidate; higher is better.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fos.config import PreprocessCfg, TrainCfg
from fos.composite import context_crop
from fos.preprocess import (
    PreparedBackground, foreground_input, foreground_mask, geometry_batch, ring_pixels, to_tensor,
)


@dataclass
class Candidates:
    """The candidate foregrounds of one category, loaded once."""

    names: list[str]
    images: list[Image.Image]  # RGB, object on white
    cache: dict  # scorer-specific per-candidate features


class Scorer:
    name = "scorer"
    pcfg = PreprocessCfg()  # how the evaluation prepares query backgrounds for this scorer

    def prepare(self, cands: Candidates) -> None:
        """Compute per-candidate features once per category (stored in ``cands.cache``)."""

    def score(self, bg: PreparedBackground, cands: Candidates) -> np.ndarray:
        raise NotImplementedError


class RandomScorer(Scorer):
    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def score(self, bg, cands):
        key = zlib.crc32(f"{self.seed}:{bg.box}:{','.join(cands.names)}".encode())
        return np.random.default_rng(key).random(len(cands.names))


class AspectScorer(Scorer):
    """Closeness of the box's and the foreground's aspect ratios: -|log(box ar) - log(fg ar)|."""

    name = "aspect"

    def score(self, bg, cands):
        return -geometry_batch(bg.box, [im.size for im in cands.images])[:, 2].astype(np.float64)


class GeometryScorer(Scorer):
    """Aspect and size together: -(aspect mismatch + w * |log sqrt(box area / foreground area)|).

    The fixed ranking the trained models start from: w = ``TrainCfg.scale_prior / geom_prior``
    (2 / 4, the best mix on msrc-fos train, ``scripts/geometry_mix.py``). Not one of the paper's
    baselines: the control that says how much a trained model adds over box and cutout sizes alone.
    """

    name = "geometry"

    def __init__(self):
        d = TrainCfg()
        self.w = d.scale_prior / d.geom_prior

    def score(self, bg, cands):
        g = geometry_batch(bg.box, [im.size for im in cands.images])
        return -(g[:, 2] + self.w * g[:, 4]).astype(np.float64)


def _color_stats(pixels: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 RGB -> [mean, std] per channel in 0..1, (6,)."""
    p = pixels.astype(np.float64) / 255.0
    if len(p) == 0:
        return np.full(6, 0.5)
    return np.concatenate([p.mean(0), p.std(0)])


class ColorScorer(Scorer):
    """Colour statistics of the area around the box (the crop ring, box excluded) vs the object's pixels."""

    name = "color"

    def prepare(self, cands):
        stats = []
        for im in cands.images:
            m = foreground_mask(im)
            stats.append(_color_stats(np.asarray(im)[m] if m.any() else np.asarray(im).reshape(-1, 3)))
        cands.cache["color"] = np.stack(stats)

    def score(self, bg, cands):
        region = ring_pixels(bg.filled, bg.box, bg.crop_box)
        s = _color_stats(region)
        return -np.linalg.norm(cands.cache["color"] - s, axis=1)


class ImageNetScorer(Scorer):
    """Cosine of ImageNet MobileNetV2 embeddings of the crop around the box and of the foreground."""

    name = "imagenet"

    def __init__(self, pcfg: PreprocessCfg | None = None):
        from fos.models.backbones import Backbone

        self.pcfg = pcfg or PreprocessCfg()
        self.net = Backbone("mobilenet_v2", pretrained=True).eval()

    @torch.no_grad()
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x).mean((2, 3)), dim=-1)

    def prepare(self, cands):
        x = torch.stack([foreground_input(im, self.pcfg) for im in cands.images])
        cands.cache["imagenet"] = torch.cat([self._embed(c) for c in x.split(32)])

    def score(self, bg, cands):
        q = self._embed(to_tensor(context_crop(bg, self.pcfg), self.pcfg)[None])
        return (cands.cache["imagenet"] @ q[0]).numpy()


BASELINES = {"random": RandomScorer, "aspect": AspectScorer, "color": ColorScorer, "imagenet": ImageNetScorer,
             "geometry": GeometryScorer}
