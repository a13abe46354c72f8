"""Training data: one item per background with its positive and negatives (:class:`PairDataset`), and a
seeded sampler that a resumed run restarts part-way through (:class:`ResumableSampler`)."""
from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter
from torch.utils.data import Dataset, Sampler

from fos.composite import teacher_input
from fos.config import PreprocessCfg, TrainCfg
from fos.data import DatasetError, TrainRecord
from fos.photometric import apply as apply_change, outside_box, random_change
from fos.preprocess import (
    foreground_colour, foreground_input, foreground_mask, geometry_batch, jitter_box, load_image, norm_to_pixel_box,
    prepare_background,
)


def pair_vector(prep, fg: Image.Image) -> np.ndarray:
    """The pair vector (geometry and colour statistics, :func:`fos.preprocess.geometry_batch`) of one
    cutout in one prepared background, as the scoring path computes it."""
    return geometry_batch(prep.box, [fg.size], prep.ring_colour, [foreground_colour(fg)])[0]


class PairDataset(Dataset):
    """One item per training background: its inputs with 1 positive and ``num_neg`` negatives.

    Positives: the background's own foreground and its ``similars``. Negatives: ``dissimilars`` and
    the other foregrounds of the same class; with ``neg_bg`` > 0 also the positive on ``neg_bg`` other
    backgrounds of the class, so that a cutout cannot score high whatever the background. Randomness
    is seeded by (seed, epoch, index), so a resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, records: list[TrainRecord], cfg: TrainCfg, pcfg: PreprocessCfg, student_inputs: bool):
        self.records, self.cfg, self.pcfg, self.student_inputs = records, cfg, pcfg, student_inputs
        self.by_name = {r.name: r for r in records}
        by_cat: dict[str, list[str]] = {}
        for r in records:
            by_cat.setdefault(r.category, []).append(r.name)
        self.neg_pool, self.bg_pool = [], []
        for r in records:
            excluded = {r.name, *r.similars}
            self.bg_pool.append([n for n in by_cat[r.category] if n not in excluded])
            pool = sorted({*r.dissimilars, *by_cat[r.category]} - excluded)
            self.neg_pool.append([n for n in pool if n in self.by_name])
        self.fg_size = {}
        if cfg.hard_neg > 0:  # sizes of all cutouts (image headers only)
            for r in records:
                with Image.open(r.fg_path) as im:
                    self.fg_size[r.name] = im.size
        self.epoch = 0

    def __len__(self):
        return len(self.records)

    def _augment(self, img: Image.Image, rng: random.Random) -> Image.Image:
        """Colour jitter or Gaussian blur (the paper's R-FOSD positive augmentation); blur alone with
        ``neg_relight``, where a lighting mismatch is what the negatives teach."""
        if rng.random() < 0.5 and not self.cfg.neg_relight:
            for enh in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                img = enh(img).enhance(rng.uniform(0.7, 1.3))
            return img
        return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))

    def __getitem__(self, i: int):
        rng = random.Random((self.cfg.seed * 1_000_003 + self.epoch) * 1_000_003 + i)
        r = self.records[i]
        shared = nrng = None
        if self.cfg.neg_relight:  # one change for the background and its positive, others for the relit negatives
            nrng = np.random.default_rng(rng.getrandbits(63))
            shared = random_change(nrng) if rng.random() < self.cfg.relight_prob else None
        prep = self._background(r, rng, shared)
        pos_name = rng.choice([r.name, *r.similars])
        pool = self.neg_pool[i]
        negs = [pool[j % len(pool)] for j in rng.sample(range(max(len(pool), self.cfg.num_neg)), self.cfg.num_neg)] if pool else []
        if self.cfg.hard_neg > 0 and pool:  # aspect-matched negatives: shape alone cannot tell them apart
            mismatch = geometry_batch(prep.box, [self.fg_size[n] for n in pool])[:, 2]
            close = [pool[j] for j in np.argsort(mismatch, kind="stable")[: 2 * self.cfg.num_neg]]
            negs = [rng.choice(close) if rng.random() < self.cfg.hard_neg else n for n in negs]
        if len(negs) < self.cfg.num_neg:
            raise DatasetError(f"training background {r.name!r} has no negatives (no dissimilars, no other foreground of {r.category!r})")
        fgs, comps, geoms = [], [], []
        for j, name in enumerate([pos_name, *negs]):
            fg = self._rescale(load_image(self.by_name[name].fg_path, what="foreground"), rng)
            if j == 0 and rng.random() < self.cfg.aug_prob:
                fg = self._augment(fg, rng)
            if j == 0 and self.cfg.neg_relight:
                plain, mask = fg, foreground_mask(fg)
                fg = apply_change(fg, shared, mask) if shared is not None else fg
            if j == 0:
                pos_img = fg
            comps.append(teacher_input(prep, fg, self.pcfg))
            geoms.append(torch.from_numpy(pair_vector(prep, fg)))
            if self.student_inputs:
                fgs.append(foreground_input(fg, self.pcfg))
        for _ in range(self.cfg.neg_relight):  # the positive under another change: only its fit tells it apart
            fg = apply_change(plain, random_change(nrng), mask)
            comps.append(teacher_input(prep, fg, self.pcfg))
            geoms.append(torch.from_numpy(pair_vector(prep, fg)))
            if self.student_inputs:
                fgs.append(foreground_input(fg, self.pcfg))
        labels = [1.0] + [0.0] * (len(negs) + self.cfg.neg_relight)
        others = self._other_backgrounds(i, rng) if self.cfg.neg_bg > 0 else []
        if not self.student_inputs:  # teacher: composites of the positive on other backgrounds, negatives
            for oprep in others:
                comps.append(teacher_input(oprep, pos_img, self.pcfg))
                geoms.append(torch.from_numpy(pair_vector(oprep, pos_img)))
                labels.append(0.0)
        item = {"comp": torch.stack(comps), "geom": torch.stack(geoms), "label": torch.tensor(labels)}
        if self.student_inputs:
            item.update(bg=prep.tensor, crop_box=prep.crop_box_net, fg=torch.stack(fgs))
            if others:  # student: the positive cutout on other backgrounds, negatives (see step_losses)
                item.update(nbg=torch.stack([o.tensor for o in others]),
                            ncrop_box=torch.stack([o.crop_box_net for o in others]),
                            ngeom=torch.stack([torch.from_numpy(pair_vector(o, pos_img)) for o in others]))
        return item

    def _rescale(self, img: Image.Image, rng: random.Random) -> Image.Image:
        """``fg_rescale``: the cutout at a random scale in [1/(1+r), 1+r] (aspect kept), so that its pixel
        size no longer tells which box it was cut from."""
        r = self.cfg.fg_rescale
        if r <= 0:
            return img
        f = math.exp(rng.uniform(-math.log1p(r), math.log1p(r)))
        return img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.BILINEAR)

    def _other_backgrounds(self, i: int, rng: random.Random) -> list:
        """``neg_bg`` other backgrounds of record ``i``'s class (not its similars), boxes jittered alike."""
        r, pool = self.records[i], self.bg_pool[i]
        if not pool:
            raise DatasetError(f"training background {r.name!r}: --neg-bg needs another background of class {r.category!r}")
        return [self._background(self.by_name[pool[j % len(pool)]], rng)
                for j in rng.sample(range(max(len(pool), self.cfg.neg_bg)), self.cfg.neg_bg)]

    def _background(self, r: TrainRecord, rng: random.Random, change=None):
        """``r``'s background with its box jittered (``box_jitter``) and, given a photometric ``change``,
        its pixels outside the box changed, prepared for both models."""
        bg = load_image(r.bg_path, what="background")
        w, h = bg.size
        box = jitter_box(norm_to_pixel_box(r.bbox, w, h), w, h, self.cfg.box_jitter, rng)
        if change is not None:
            bg = apply_change(bg, change, outside_box(bg.size, box))
        return prepare_background(bg, box, self.pcfg)


class ResumableSampler(Sampler):
    """A seeded permutation per epoch that can start part-way through. With ``world`` > 1 (several
    processes) each rank takes every ``world``-th index of the same permutation, the tail cut so that
    every rank gets as many; ``start`` counts samples of the whole permutation."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0
        self.rank, self.world = rank, world

    def order(self) -> list[int]:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch)).tolist()

    def _mine(self) -> list[int]:
        rest = self.order()[self.start:]
        rest = rest[: len(rest) // self.world * self.world]
        return rest[self.rank::self.world]

    def __iter__(self):
        return iter(self._mine())

    def __len__(self):
        return len(self._mine())
