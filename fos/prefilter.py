"""A prefilter that ranks as the student head does: one dot product per candidate, in the vector store.

The head's score of a pair is its appearance logit (the convs on the two cached halves) plus its geometry
term ``w . [lb, lf, |lb - lf|, ls, |ls|]`` (``fos.preprocess.geometry_batch``: the box's and the cutout's
log aspects and half the log area ratio). The prefilter writes both as one inner product of a query
vector and a candidate vector, so any vector store (flat, HNSW, IVF, Milvus) searches it unchanged:

* **appearance, distilled**: ``(e_q Wq) . (e_c Wc)`` of the student's two embeddings, with ``Wq`` and
  ``Wc`` trained (``python -m fos.train.prefilter``) so that, over each training query's candidates, the
  softmax of the dot products matches the softmax of the head's appearance logits (a listwise loss);
* **geometry, exact up to a grid**: the linear terms are dot products with a constant; each absolute
  difference is ``|x - y| ~= delta * sum_j (r_j(x) - r_j(y))^2`` over ramps ``r_j`` of width ``delta`` on
  a grid, which expands into ``r(x) . r(y)`` plus one term per side. Terms of the query alone do not
  change its ranking and are left out. The weights ``w`` are the student's own (``head.geom_fc``).

A prefilter is bound to the student it was distilled from (its weights' sha256). A head with a
photometric term keeps that term out of the prefilter (the head still scores it).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from fos.config import Cfg
from fos.errors import WeightsError


@dataclass
class PrefilterCfg(Cfg):
    """The prefilter's shape; stored with its weights."""

    dim: int = 16  # distilled appearance dimensions
    bins: int = 64  # ramps per geometry variable (an absolute difference is off by at most half a ramp)
    aspect_lo: float = -4.0  # the grid of log aspects (box and cutout: up to 55:1); outside it |x - y| saturates
    aspect_hi: float = 4.0
    scale_lo: float = 1.0  # the grid of half log pixel areas (10 x 10 px ... 8,000 x 8,000 px)
    scale_hi: float = 9.0


def ramps(x: np.ndarray, lo: float, hi: float, bins: int) -> tuple[np.ndarray, float]:
    """(N,) values -> (N, bins) ramps of width delta = (hi - lo) / bins centred on the grid, and delta."""
    delta = (hi - lo) / bins
    centres = lo + delta * (np.arange(bins) + 0.5)
    return np.clip((np.asarray(x, np.float64)[:, None] - centres[None]) / delta + 0.5, 0.0, 1.0), delta


def geometry_columns(box, sizes) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The box's log aspect and half log area, and the cutouts' (N,) (``geometry_batch``'s variables)."""
    x1, y1, x2, y2 = box
    bw, bh = max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)
    sz = np.maximum(np.asarray(sizes, np.float64).reshape(-1, 2), 1e-6)
    return math.log(bw / bh), 0.5 * math.log(bw * bh), np.log(sz[:, 0] / sz[:, 1]), 0.5 * np.log(sz[:, 0] * sz[:, 1])


class Prefilter:
    """``query_vector(emb, box)`` and ``candidate_vectors(emb, sizes)``: their inner product ranks a query's
    candidates as the head's appearance (distilled) plus geometry (expanded) terms do."""

    def __init__(self, cfg: PrefilterCfg, wq: np.ndarray, wc: np.ndarray, geom_weights: np.ndarray,
                 student_sha256: str, info: dict | None = None):
        self.cfg = cfg
        self.wq, self.wc = np.asarray(wq, np.float32), np.asarray(wc, np.float32)
        self.w = np.zeros(5, np.float64)
        g = np.asarray(geom_weights, np.float64).ravel()[:5]
        self.w[: len(g)] = g  # a head reading fewer columns has zeros for the rest
        self.student_sha256, self.info = student_sha256, info or {}
        if self.wq.shape != self.wc.shape or self.wq.shape[1] != cfg.dim:
            raise WeightsError(f"prefilter maps of shapes {self.wq.shape} and {self.wc.shape} do not fit dim {cfg.dim}")

    @property
    def dims(self) -> int:
        return self.cfg.dim + 1 + 2 * self.cfg.bins

    def _geometry(self, aspect: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.cfg
        ra, da = ramps(aspect, c.aspect_lo, c.aspect_hi, c.bins)
        rs, ds = ramps(scale, c.scale_lo, c.scale_hi, c.bins)
        return np.concatenate([ra, rs], 1), np.concatenate([np.full(c.bins, da), np.full(c.bins, ds)])

    def query_vector(self, emb: np.ndarray, box) -> np.ndarray:
        lb, sb, _, _ = geometry_columns(box, [(1, 1)])
        r, d = self._geometry(np.array([lb]), np.array([sb]))
        cross = -2.0 * self._bin_weights() * d
        return np.concatenate([np.asarray(emb, np.float32).reshape(1, -1) @ self.wq, [[1.0]], r * cross], 1)[0] \
            .astype(np.float32)

    def _bin_weights(self) -> np.ndarray:
        """Per ramp: the geometry term's weight of its absolute value (aspect bins, then scale bins)."""
        return np.concatenate([np.full(self.cfg.bins, self.w[2]), np.full(self.cfg.bins, self.w[4])])

    def candidate_vectors(self, emb: np.ndarray, sizes) -> np.ndarray:
        """(N, :attr:`dims`) vectors of N cutouts with embeddings ``emb`` (N, E) and pixel ``sizes`` (N, 2)."""
        _, _, lf, sf = geometry_columns((0, 0, 1, 1), sizes)
        r, d = self._geometry(lf, sf)
        scale = self._bin_weights() * d
        # the candidate's own terms: w1 * lf and -w3 * (half log area) from the linear columns, and the
        # r(y)^2 halves of the two expanded absolute values
        own = self.w[1] * lf - self.w[3] * sf + (r * r * scale).sum(1)
        return np.concatenate([np.asarray(emb, np.float32) @ self.wc, own[:, None], r], 1).astype(np.float32)

    def scores(self, q_emb, box, emb, sizes) -> np.ndarray:
        """The prefilter's score of each candidate (its inner product), for tests and reports."""
        return self.candidate_vectors(emb, sizes) @ self.query_vector(q_emb, box)

    def check(self, student_sha256: str, where: str) -> None:
        if self.student_sha256 != student_sha256:
            raise WeightsError(f"the prefilter {where} was distilled from another student (sha256 "
                               f"{self.student_sha256[:12]}..., the loaded one is {student_sha256[:12]}...): retrain "
                               "it with `python -m fos.train.prefilter`, or delete it to search by embedding alone")

    # ---------------------------------------------------------------- files
    def save(self, path: str, **meta) -> None:
        from safetensors.numpy import save

        from fos.checkpoint import atomic_write_bytes, atomic_write_json, sidecar
        from fos.config import to_dict

        atomic_write_bytes(path, save({"wq": self.wq, "wc": self.wc, "geom": self.w.astype(np.float32)}))
        atomic_write_json(sidecar(path), {"model_name": "prefilter", "prefilter_cfg": to_dict(self.cfg),
                                          "student_sha256": self.student_sha256, **meta})

    @classmethod
    def load(cls, path: str) -> "Prefilter":
        from safetensors.numpy import load_file

        from fos.checkpoint import read_config

        if not os.path.isfile(path):
            raise WeightsError(f"prefilter {path} not found; train one with `python -m fos.train.prefilter`")
        info = read_config(path, "prefilter_cfg", PrefilterCfg, "it is written by python -m fos.train.prefilter",
                           "a prefilter config")
        try:
            t = load_file(path)
            return cls(PrefilterCfg.from_dict(info["prefilter_cfg"]), t["wq"], t["wc"], t["geom"],
                       info.get("student_sha256", ""), info)
        except (KeyError, OSError, ValueError) as e:
            raise WeightsError(f"{path} is not a prefilter ({type(e).__name__}: {e})") from None
