"""The one scoring path. Search, evaluation, the benchmark and the app all score through :class:`Scoring`,
so a number in the README is what a user gets.

* a query: background + box -> :class:`EncodedQuery` (prepared once: one background encode);
* the student: cached foreground halves (float16, as a library stores them) + the query -> scores;
* the teacher: a composite per candidate (``stretch``, as trained, or ``fit``, as shown) -> scores.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from fos.composite import teacher_input, teacher_tensor
from fos.preprocess import (
    SHAPE_DIM, InputError, PreparedBackground, foreground_colour, foreground_input, geometry_batch, prepare_background,
)
from fos.runtime import Backend


def logit(p: np.ndarray) -> np.ndarray:
    """Inverse of the sigmoid, in float64 (scores are probabilities)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


@dataclass
class EncodedQuery:
    """An encoded background: what every ranking of it reuses."""

    bg: PreparedBackground
    bg_part: np.ndarray  # (1, D, a, a)
    emb: np.ndarray  # (E,)
    timings: dict[str, float]


def as_float32(a: np.ndarray) -> np.ndarray:
    """``a`` as float32; a library's float16 maps are converted by torch (vectorized: about 3.5x
    numpy's ``astype`` on 2 cores, bit-identical), the step that dominated the head on 200 candidates."""
    if a.dtype == np.float16:
        return torch.from_numpy(np.ascontiguousarray(a)).float().numpy()
    return np.asarray(a, np.float32)


class Scoring:
    """Scores candidates for a query with a backend's student head or teacher, in batches."""

    def __init__(self, backend: Backend, head_batch: int = 512, image_batch: int = 32):
        self.backend, self.pcfg = backend, backend.preprocess_cfg
        self.head_batch, self.image_batch = head_batch, image_batch

    # ------------------------------------------------------------------ query side
    def prepare(self, image, box) -> PreparedBackground:
        """Load the background and validate the box (the only place a query box is validated)."""
        return prepare_background(image, box, self.pcfg)

    def encode(self, bg: PreparedBackground, timings: dict[str, float] | None = None) -> EncodedQuery:
        t0 = time.perf_counter()
        bg_part, emb = self.backend.student_bg(bg.tensor[None].numpy(), bg.crop_box_net[None].numpy())
        return EncodedQuery(bg, bg_part, emb[0], {**(timings or {}), "background_encode": (time.perf_counter() - t0) * 1e3})

    def query(self, image, box) -> EncodedQuery:
        t0 = time.perf_counter()
        bg = self.prepare(image, box)
        return self.encode(bg, {"preprocess": (time.perf_counter() - t0) * 1e3})

    # ------------------------------------------------------------------ candidate side
    def encode_foregrounds(self, images: list) -> tuple[np.ndarray, np.ndarray]:
        """Cutouts -> (fg_part (N,D,a,a), emb (N,E)), both float16: what a library stores."""
        parts, embs = [], []
        for s in range(0, len(images), self.image_batch):
            x = torch.stack([foreground_input(im, self.pcfg) for im in images[s:s + self.image_batch]]).numpy()
            p, e = self.backend.student_fg(x)
            parts.append(p.astype(np.float16))
            embs.append(e.astype(np.float16))
        return np.concatenate(parts), np.concatenate(embs)

    @staticmethod
    def geometry(q: EncodedQuery | PreparedBackground, sizes, colours=None, appearance_only: bool = False) -> np.ndarray:
        """The pair vector (N, 17) of foregrounds of pixel ``sizes`` (N, 2) and colour statistics
        ``colours`` (N, 6) against the query; ``appearance_only`` zeroes the geometry columns, which
        switches the (bias-free) geometry term off (the ablation); the colour columns are appearance
        (what the pixels say) and stay."""
        bg = q.bg if isinstance(q, EncodedQuery) else q
        g = geometry_batch(bg.box, sizes, bg.ring_colour, colours)
        if appearance_only:
            g[:, :SHAPE_DIM] = 0.0
        return g

    def student(self, q: EncodedQuery, fg_part: np.ndarray, sizes, colours, appearance_only: bool = False) -> np.ndarray:
        """Student scores (N,) of cached foreground halves ``fg_part`` (N, D, a, a) of pixel ``sizes``
        and colour statistics ``colours`` (N, 6) (:func:`fos.preprocess.foreground_colour`)."""
        sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
        colours = np.asarray(colours, dtype=np.float32).reshape(len(sizes), -1)
        if not np.isfinite(colours).all():
            raise InputError("a candidate has no colour statistics (a cutout without object pixels, or a library "
                             "built before they were stored): rebuild the library")
        out = []
        for s in range(0, len(fg_part), self.head_batch):
            part = slice(s, s + self.head_batch)
            out.append(self.backend.student_head(q.bg_part, as_float32(fg_part[part]),
                                                 self.geometry(q, sizes[part], colours[part], appearance_only)))
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def teacher(self, q: EncodedQuery | PreparedBackground, images: list, rule: str = "stretch",
                appearance_only: bool = False, masks: list | None = None) -> np.ndarray:
        """Teacher scores (N,) of cutouts ``images`` (PIL) composited into the query's box by ``rule``."""
        bg = q.bg if isinstance(q, EncodedQuery) else q
        masks = masks or [None] * len(images)
        colours = np.stack([foreground_colour(im, m) for im, m in zip(images, masks)]) if images else np.zeros((0, 6))
        return self._teacher(bg, lambda i: teacher_input(bg, images[i], self.pcfg, rule, masks[i]),
                             [im.size for im in images], colours, appearance_only)

    def teacher_on(self, q: EncodedQuery | PreparedBackground, composites: list, sizes, colours) -> np.ndarray:
        """Teacher scores (N,) of full-size composites already made (the ones a person is shown) of
        cutouts of pixel ``sizes`` and colour statistics ``colours`` (N, 6): the same pixels scored as
        shown, not composited again."""
        bg = q.bg if isinstance(q, EncodedQuery) else q
        return self._teacher(bg, lambda i: teacher_tensor(bg, composites[i], self.pcfg), list(sizes), colours)

    def _teacher(self, bg: PreparedBackground, make_input, sizes: list, colours, appearance_only: bool = False) -> np.ndarray:
        """The teacher on inputs ``make_input(i)`` for i < len(sizes), made a batch at a time; the pair
        vector carries the colour statistics (a teacher with a photometric term reads them)."""
        out = []
        colours = np.asarray(colours, np.float32).reshape(len(sizes), -1)
        for s in range(0, len(sizes), self.image_batch):
            x = torch.stack([make_input(i) for i in range(s, min(s + self.image_batch, len(sizes)))]).numpy()
            b = slice(s, s + self.image_batch)
            out.append(self.backend.teacher(x, self.geometry(bg, sizes[b], colours[b], appearance_only)))
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def lighting(self, q: EncodedQuery, sizes, colours) -> np.ndarray:
        """The student's photometric (lighting) term alone (N,): see :meth:`fos.runtime.Backend.lighting`."""
        return self.backend.lighting(self.geometry(q, sizes, colours))
