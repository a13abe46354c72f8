"""Search: ``python -m fos.search --library LIB --background IMG --box x1,y1,x2,y2 --category NAME``.

:class:`SearchEngine` is the one search API (CLI, app and benchmark). A query is a cascade:

1. candidates of the category;
2. more than ``prefilter_k`` candidates: keep the ``prefilter_k`` nearest by embedding (vector store);
3. the student head on the candidates, in batches (foreground halves come cached from the library);
4. optionally the teacher re-scores the top ``rerank`` (off by default).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from fos.checkpoint import WeightsError, atomic_write_json
from fos.library import Library, LibraryError
from fos.preprocess import (
    InputError, PreparedBackground, geometry_batch, load_image, prepare_background, teacher_input,
)
from fos.runtime import Backend, BackendError, get_backend
from fos.store import VectorStore, make_store


@dataclass
class EngineCfg:
    prefilter_k: int = 200  # embedding prefilter keeps this many per query; 0 = score every candidate
    index: str = "flat"  # local store index: flat (exact), hnsw or ivf (approximate)
    store: str = "local"  # local or milvus
    milvus_uri: str | None = None  # e.g. fos_milvus.db (Milvus Lite) or http://host:19530
    head_batch: int = 512  # candidates per head batch
    rerank: int = 0  # teacher re-scores the top N (0 = off)


@dataclass
class Result:
    id: str
    category: str
    score: float
    path: str
    index: int  # position in the library
    student_score: float
    teacher_score: float | None = None
    image: object = None  # a user's cutout (PIL), when the item is not in the library


@dataclass
class Query:
    """An encoded background: what every ranking of it reuses."""

    bg: PreparedBackground
    bg_part: np.ndarray  # (1, D, a, a)
    emb: np.ndarray  # (E,)
    timings: dict[str, float]


@dataclass
class ExtraItem:
    """A user's own cutout, encoded once and kept for the session."""

    id: str
    image: object  # PIL image
    fg_part: np.ndarray | None
    size: tuple[int, int]


@dataclass
class SearchOutput:
    results: list[Result]
    timings_ms: dict[str, float] = field(default_factory=dict)
    n_candidates: int = 0
    n_scored: int = 0

    def to_json(self) -> dict:
        return {"results": [{"id": r.id, "category": r.category, "score": r.score, "path": r.path}
                            for r in self.results]}


class SearchEngine:
    """The search API. ``backend`` runs the networks (torch, onnxruntime or tensorrt)."""

    def __init__(self, library: Library, backend: Backend, cfg: EngineCfg | None = None,
                 store: VectorStore | None = None):
        self.lib, self.backend = library, backend
        self.cfg = cfg or EngineCfg()
        if backend.student_sha256:
            library.check_weights(backend.student_sha256)
        self.pcfg = backend.preprocess_cfg
        self.store = store or make_store(self.cfg.store, self.cfg.index, self.cfg.milvus_uri)
        if len(library):
            self.store.add(library.emb.astype(np.float32), library.categories)
        self.sizes = np.array([[it["width"], it["height"]] for it in library.items], dtype=np.float64).reshape(-1, 2)
        self._q: Query | None = None

    # ------------------------------------------------------------------ query side
    def encode(self, image, box) -> Query:
        """Encode a background and box once (thread-safe: the engine keeps no per-query state)."""
        t0 = time.perf_counter()
        bg = prepare_background(image, box, self.pcfg)
        t1 = time.perf_counter()
        bg_part, emb = self.backend.encode_background(bg.tensor[None].numpy(), bg.crop_box_net[None].numpy())
        t2 = time.perf_counter()
        return Query(bg, bg_part, emb[0], {"preprocess": (t1 - t0) * 1e3, "background_encode": (t2 - t1) * 1e3})

    def set_background(self, image, box) -> dict[str, float]:
        """Encode the background once; later :meth:`search` calls reuse it (any category, k)."""
        self._q = self.encode(image, box)
        return dict(self._q.timings)

    def search(self, category: str, k: int = 10, prefilter_k: int | None = None, rerank: int | None = None) -> SearchOutput:
        if self._q is None:
            raise RuntimeError("call set_background(image, box) before search()")
        return self.rank(self._q, category, k, prefilter_k, rerank)

    def query(self, image, box, category: str, k: int = 10, **kw) -> SearchOutput:
        q = self.encode(image, box)
        out = self.rank(q, category, k, **kw)
        out.timings_ms = {**q.timings, **out.timings_ms}
        return out

    @staticmethod
    def geometry(q: Query, sizes: np.ndarray) -> np.ndarray:
        """(N, GEOMETRY_DIM) geometry features of foregrounds of ``sizes`` (N, 2) against the query box."""
        return geometry_batch(q.bg.box, sizes)

    def head_scores(self, q: Query, fg_part: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Student scores of cached foreground halves ``fg_part`` (N, D, a, a), in batches."""
        out = []
        for s in range(0, len(fg_part), self.cfg.head_batch):
            part = slice(s, s + self.cfg.head_batch)
            out.append(self.backend.head(q.bg_part, fg_part[part].astype(np.float32), self.geometry(q, sizes[part])))
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def rank(self, q: Query, category: str, k: int = 10, prefilter_k: int | None = None, rerank: int | None = None,
             extra: list[ExtraItem] | None = None) -> SearchOutput:
        """The cascade for one encoded query. ``extra``: the user's own cutouts, ranked with the library's."""
        if not category:
            raise InputError(f"no category chosen; the library has {self.lib.category_names()}")
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        kk = self.cfg.prefilter_k if prefilter_k is None else prefilter_k
        nr = self.cfg.rerank if rerank is None else rerank
        t = {}
        t0 = time.perf_counter()
        cand = self.lib.indices(category) if not extra else np.nonzero(self.lib.categories == category)[0]
        n_cand = len(cand)
        if kk and n_cand > kk:
            cand, _ = self.store.search(q.emb, kk, category)
        t1 = time.perf_counter()
        t["prefilter"] = (t1 - t0) * 1e3
        scores = self.head_scores(q, self.lib.fmap[cand], self.sizes[cand])
        results = [self._result(int(i), float(s)) for i, s in zip(cand, scores)]
        if extra:
            xs = self.head_scores(q, np.stack([e.fg_part for e in extra]), np.array([e.size for e in extra], float))
            results += [Result(e.id, category, float(s), "", -1, float(s), image=e.image) for e, s in zip(extra, xs)]
        results.sort(key=lambda r: -r.score)
        t2 = time.perf_counter()
        t["head"] = (t2 - t1) * 1e3
        if nr:
            top = results[:nr]
            ts = self._teacher_scores(q, top)
            for r, s in zip(top, ts):
                r.teacher_score = r.score = float(s)
            results = sorted(top, key=lambda r: -r.score) + results[nr:]
        t["rerank"] = (time.perf_counter() - t2) * 1e3
        return SearchOutput(results[:k], t, n_cand + len(extra or []), len(results))

    def _teacher_scores(self, q: Query, results: list[Result]) -> np.ndarray:
        imgs = [r.image.convert("RGB") if r.image is not None else
                load_image(r.path, "RGB", self.pcfg, what="foreground") for r in results]
        x = torch.stack([teacher_input(q.bg, im, self.pcfg) for im in imgs]).numpy()
        sizes = np.array([im.size for im in imgs], dtype=np.float64)
        return self.backend.teacher(x, self.geometry(q, sizes))

    def _result(self, i: int, score: float) -> Result:
        it = self.lib.items[i]
        return Result(it["id"], it["category"], score, it["path"], i, score)

    def encode_extra(self, images: list, names: list[str]) -> tuple[list[ExtraItem], list[str]]:
        """User cutouts -> cached :class:`ExtraItem` s (computed once); returns (items, problems)."""
        from fos.preprocess import foreground_input, foreground_mask

        items, problems, tensors = [], [], []
        for img, name in zip(images, names):
            try:
                im = load_image(img, "RGBA", self.pcfg, what=f"foreground {name}")
                if not foreground_mask(im).any():
                    raise InputError(f"foreground {name} has no object pixels (all white or transparent)")
                tensors.append(foreground_input(im, self.pcfg))
                items.append(ExtraItem(name, im, None, im.size))
            except InputError as e:
                problems.append(str(e))
        if tensors:
            fg_part, _ = self.backend.encode_foreground(torch.stack(tensors).numpy())
            for it, f in zip(items, fg_part):
                it.fg_part = f
        return items, problems


def load_engine(library: str, weights: str = "weights", backend: str = "auto",
                cfg: EngineCfg | None = None) -> SearchEngine:
    """Library + the best (or the named) backend for the weights folder ``weights``."""
    return SearchEngine(Library(library), get_backend(backend, weights), cfg)


def parse_box(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--box must be x1,y1,x2,y2 in pixels, got {text!r}") from None
    if len(vals) != 4:
        raise InputError(f"--box must be x1,y1,x2,y2 in pixels, got {text!r}")
    return vals


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fos.search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", required=True)
    p.add_argument("--background", required=True)
    p.add_argument("--box", required=True, help="x1,y1,x2,y2 in pixels of the background")
    p.add_argument("--category", required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--weights", default="weights", help="folder with student.safetensors and teacher.safetensors")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "tensorrt"])
    p.add_argument("--prefilter-k", type=int, default=EngineCfg.prefilter_k, help="0 scores every candidate")
    p.add_argument("--index", default="flat", choices=["flat", "hnsw", "ivf"])
    p.add_argument("--store", default="local", choices=["local", "milvus"])
    p.add_argument("--milvus-uri", default=None)
    p.add_argument("--rerank", type=int, default=0, help="teacher re-scores the top N")
    p.add_argument("--json", help="write {\"results\": [...]} here")
    a = p.parse_args(argv)
    try:
        cfg = EngineCfg(a.prefilter_k, a.index, a.store, a.milvus_uri, rerank=a.rerank)
        eng = load_engine(a.library, a.weights, a.backend, cfg)
        out = eng.query(a.background, parse_box(a.box), a.category, a.k)
    except (InputError, LibraryError, WeightsError, BackendError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for rank, r in enumerate(out.results, 1):
        print(f"{rank:3d}  {r.score:.4f}  {r.id}  ({r.path})")
    print(f"backend: {eng.backend.description}")
    print("timings (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in out.timings_ms.items()))
    if a.json:
        atomic_write_json(a.json, out.to_json())
        print(f"wrote {os.path.abspath(a.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
