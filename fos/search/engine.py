"""Search: :class:`SearchEngine`, the one search API of the CLI (``python -m fos.search``), the app and
the benchmark. A query is a cascade:

1. candidates of the category;
2. more than ``prefilter_k`` candidates: keep the ``prefilter_k`` nearest by embedding (vector store);
3. the student head on the candidates, in batches (foreground halves come cached from the library);
4. optionally the teacher re-scores the top ``rerank`` on the composite a person is shown
   (:data:`fos.composite.SHOWN`), built once and returned with the result.

:meth:`SearchEngine.search_photo` is the whole of it for a person's photo (erase the box, encode,
rank, composites): the app's one call. Scoring itself is :class:`fos.scoring.Scoring`, shared with
the evaluation.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from fos.composite import SHOWN, composite
from fos.config import EngineCfg
from fos.library import Library, LibraryError
from fos.library.store import VectorStore, make_store
from fos.prefilter import Prefilter
from fos.preprocess import InputError, PreparedBackground, foreground_colour, foreground_mask, load_image
from fos.runtime import Backend, get_backend
from fos.scoring import EncodedQuery, Scoring, logit
from fos.weights import SHIPPED

log = logging.getLogger("fos.search")
PREFILTERS = ("auto", "embedding")  # the distilled prefilter when the weights folder has one; the embedding cosine
__all__ = ["PREFILTERS", "EncodedQuery", "EngineCfg", "ExtraItem", "PhotoSearch", "Result", "SearchEngine", "SearchOutput",
           "check_count", "load_engine", "weights_prefilter"]


@dataclass
class Result:
    id: str
    category: str
    score: float  # the ranking score: the teacher's when it reranked this result, else the student's
    path: str  # the cutout file ("" for a user's upload)
    index: int  # position in the library (-1 for a user's upload)
    student_score: float
    teacher_score: float | None = None
    image: object = None  # a user's cutout (PIL), when the item is not in the library
    mask: str | None = None  # the cutout's mask file, when it has one
    appearance: float = 0.0  # the student's logit from the pixels' content (geometry and lighting terms taken out)
    geometry: float = 0.0  # the student's logit from box and cutout shape and size
    lighting: float = 0.0  # the student's photometric term: the cutout's colours against the box's surround
    # appearance + lighting + geometry = logit(student_score)

    def shares(self) -> tuple[float, float, float]:
        """Each term's share of the score, |term| / sum of |terms|: (geometry, lighting, appearance)."""
        terms = np.abs([self.geometry, self.lighting, self.appearance])
        total = float(terms.sum())
        return tuple(float(v) / total for v in terms) if total > 0 else (0.0, 0.0, 0.0)
    composite: object = None  # the composite a person is shown (PIL, full size), when it was made

    @property
    def ranked_by(self) -> str:
        """The model whose score set this result's place: the teacher for the reranked top N."""
        return "student" if self.teacher_score is None else "teacher"


@dataclass
class ExtraItem:
    """A user's own cutout, encoded once and kept for the session."""

    id: str
    image: object  # PIL image
    fg_part: np.ndarray | None
    size: tuple[int, int]
    colour: np.ndarray | None = None  # (6,) colour statistics of its object pixels


@dataclass
class SearchOutput:
    """Results best first: the teacher's reranked top N (by teacher probability), then the rest by
    student probability."""

    results: list[Result]
    timings_ms: dict[str, float] = field(default_factory=dict)
    n_candidates: int = 0
    n_scored: int = 0

    def to_json(self) -> dict:
        return {"results": [{"id": r.id, "category": r.category, "score": r.score, "path": r.path,
                             "student_score": r.student_score, "teacher_score": r.teacher_score,
                             "appearance_logit": r.appearance, "geometry_logit": r.geometry, "lighting_logit": r.lighting}
                            for r in self.results]}


@dataclass
class PhotoSearch(SearchOutput):
    """:meth:`SearchEngine.search_photo`'s answer: the results with their composites, and the background
    they were ranked on (erased first when an eraser was given)."""

    background: PreparedBackground | None = None
    erased_with: str = ""  # the eraser's description, "" when the box was not erased


def check_count(name: str, value, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or an InputError that says what is expected."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be a whole number, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise InputError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


class SearchEngine:
    """The search API. ``backend`` runs the networks (torch, onnxruntime or tensorrt).

    Thread-safe: a query's state lives in the :class:`EncodedQuery` it returns, not in the engine (except
    for the convenience pair :meth:`set_background` / :meth:`search`).
    """

    def __init__(self, library: Library, backend: Backend, cfg: EngineCfg | None = None,
                 store: VectorStore | None = None, prefilter: Prefilter | None = None):
        """``prefilter``: the distilled one (:mod:`fos.prefilter`), or None to prefilter by the student's
        embedding cosine alone."""
        self.lib, self.backend = library, backend
        self.cfg = cfg or EngineCfg()
        library.check_weights(backend.student_sha256)
        if prefilter is not None:
            prefilter.check(backend.student_sha256, "given to the search")
        self.prefilter = prefilter
        self.scoring = Scoring(backend, head_batch=self.cfg.head_batch)
        self.pcfg = backend.preprocess_cfg
        self.store = store or make_store(self.cfg.store, self.cfg.index, self.cfg.milvus_uri)
        if len(library):
            vectors = library.emb.astype(np.float32) if prefilter is None else \
                prefilter.candidate_vectors(library.emb, library.sizes)
            self.store.add(vectors, library.categories)
        self._q: EncodedQuery | None = None

    # ------------------------------------------------------------------ query side
    def encode(self, image, box) -> EncodedQuery:
        """Load the background, validate the box and encode them once."""
        return self.scoring.query(image, box)

    def encode_prepared(self, bg: PreparedBackground) -> EncodedQuery:
        """Encode an already prepared background (its box was validated when it was prepared)."""
        return self.scoring.encode(bg)

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

    def rank(self, q: EncodedQuery, category: str, k: int = 10, prefilter_k: int | None = None,
             rerank: int | None = None, extra: list[ExtraItem] | None = None, composites: bool = False) -> SearchOutput:
        """The cascade for one encoded query. ``extra``: the user's own cutouts, ranked with the library's;
        ``composites``: also make the composite of each result returned (reranked ones have theirs)."""
        if not category:
            raise InputError(f"no category chosen; the library has {self.lib.category_names()}")
        k = check_count("k", k, 1)
        kk = check_count("prefilter_k", self.cfg.prefilter_k if prefilter_k is None else prefilter_k, 0)
        nr = check_count("rerank", self.cfg.rerank if rerank is None else rerank, 0)
        t = {}
        t0 = time.perf_counter()
        cand = self.lib.indices(category) if not extra else np.nonzero(self.lib.categories == category)[0]
        n_cand = len(cand)
        if kk and n_cand > kk:
            qv = q.emb if self.prefilter is None else self.prefilter.query_vector(q.emb, q.bg.box)
            cand, _ = self.store.search(qv, kk, category)
            if len(cand) != kk:
                raise LibraryError(f"the {self.cfg.store} vector store returned {len(cand)} candidates for K={kk}")
        t1 = time.perf_counter()
        t["prefilter"] = (t1 - t0) * 1e3
        scores = self.scoring.student(q, self.lib.fmap[cand], self.lib.sizes[cand], self.lib.colour[cand])
        if extra:
            xs = self.scoring.student(q, np.stack([e.fg_part for e in extra]), [e.size for e in extra],
                                      [e.colour for e in extra])
            scores = np.concatenate([scores, xs])
        n_scored = len(scores)
        # best first, ties in candidate order (library, then the user's); Result objects only for those kept
        results = []
        for j in np.argsort(-scores, kind="stable")[:max(k, nr)]:
            s = float(scores[j])
            if j < len(cand):
                results.append(self._result(int(cand[j]), s))
            else:
                e = extra[j - len(cand)]
                results.append(Result(e.id, category, s, "", -1, s, image=e.image))
        self._split_scores(q, results, extra or [])
        t2 = time.perf_counter()
        t["head"] = (t2 - t1) * 1e3
        if nr:
            top = results[:nr]
            self._composites(q.bg, top)
            ts = self.scoring.teacher_on(q, [r.composite for r in top], [self._size(r) for r in top],
                                         [self._colour(r, extra or []) for r in top])
            for r, s in zip(top, ts):
                r.teacher_score = r.score = float(s)
            results = sorted(top, key=lambda r: -r.score) + results[nr:]
            t["rerank"] = (time.perf_counter() - t2) * 1e3
        if composites:
            t3 = time.perf_counter()
            self._composites(q.bg, results[:k])
            t["composites"] = (time.perf_counter() - t3) * 1e3
        return SearchOutput(results[:k], t, n_cand + len(extra or []), n_scored)

    def search_photo(self, image, box, category: str, k: int = 10, rerank: int | None = None,
                     extra: list[ExtraItem] | None = None, eraser=None) -> PhotoSearch:
        """One search for a person's photo: erase what is in the box first (``eraser``: an
        :class:`fos.inpaint.infer.Inpainter`, or None), encode the background once, rank ``category``'s
        cutouts (and the user's own ``extra``), rerank the top ``rerank`` with the teacher, and make
        the composite of each result shown, once, for both the teacher and the person."""
        t = {}
        if eraser is not None:
            t0 = time.perf_counter()
            image = eraser.erase_box(load_image(image, "RGB", self.pcfg, what="background"), box)  # checks the box
            t["erase"] = (time.perf_counter() - t0) * 1e3
        q = self.encode(image, box)
        out = self.rank(q, category, k, rerank=rerank, extra=extra, composites=True)
        return PhotoSearch(out.results, {**t, **q.timings, **out.timings_ms}, out.n_candidates, out.n_scored,
                           background=q.bg, erased_with=eraser.description if eraser is not None else "")

    def _composites(self, bg: PreparedBackground, results: list[Result]) -> None:
        """Fill ``composite`` of the results that lack one: the composite a person is shown. A cutout
        without object pixels (impossible in a built library) shows the background alone."""
        for r in results:
            if r.composite is None:
                try:
                    r.composite = composite(bg, self.cutout(r), SHOWN, r.mask, self.pcfg)
                except InputError:
                    r.composite = bg.image

    def _colour(self, r: Result, extra: list[ExtraItem]) -> np.ndarray:
        if r.index >= 0:
            return self.lib.colour[r.index]
        return next(e.colour for e in extra if e.image is r.image)

    def _size(self, r: Result) -> tuple[int, int]:
        return tuple(self.lib.sizes[r.index].astype(int)) if r.index >= 0 else r.image.size

    def cutout(self, r: Result):
        """The cutout of a result (RGBA PIL image), from the library or the user's upload."""
        return r.image if r.image is not None else load_image(r.path, "RGBA", self.pcfg, what="foreground")

    def _split_scores(self, q: EncodedQuery, results: list[Result], extra: list[ExtraItem]) -> None:
        """Fill ``appearance`` and ``geometry`` of the results shown (one more head call on those alone)."""
        if not results:
            return
        own = {id(e.image): e for e in extra}  # a user's cutouts by object: two uploads may share a name
        parts = np.stack([self.lib.fmap[r.index] if r.index >= 0 else own[id(r.image)].fg_part for r in results])
        sizes = [self.lib.sizes[r.index] if r.index >= 0 else own[id(r.image)].size for r in results]
        colours = [self.lib.colour[r.index] if r.index >= 0 else own[id(r.image)].colour for r in results]
        app = logit(self.scoring.student(q, parts, sizes, colours, appearance_only=True))
        light = self.scoring.lighting(q, sizes, colours)
        for r, a, li in zip(results, app, light):
            r.lighting, r.appearance = float(li), float(a - li)
            r.geometry = float(logit(np.array([r.student_score]))[0] - a)

    def _result(self, i: int, score: float) -> Result:
        it = self.lib.items[i]
        return Result(it["id"], it["category"], score, self.lib.path(i), i, score, mask=self.lib.mask_path(i))

    def encode_extra(self, images: list, names: list[str]) -> tuple[list[ExtraItem], list[str]]:
        """User cutouts -> cached :class:`ExtraItem` s (computed once); returns (items, problems)."""
        items, problems, imgs = [], [], []
        for img, name in zip(images, names):
            try:
                im = load_image(img, "RGBA", self.pcfg, what=f"foreground {name}")
                if not foreground_mask(im).any():
                    raise InputError(f"foreground {name} has no object pixels (all white or transparent)")
                imgs.append(im)
                items.append(ExtraItem(name, im, None, im.size, foreground_colour(im)))
            except InputError as e:
                problems.append(str(e))
        if imgs:
            fg_part, _ = self.scoring.encode_foregrounds(imgs)
            for it, f in zip(items, fg_part):
                it.fg_part = f
        return items, problems


def weights_prefilter(weights, student_sha256: str) -> Prefilter | None:
    """The weights folder's distilled prefilter when it was made from this student, else None (said in
    the log: the search then prefilters by the embedding cosine)."""
    from fos.weights import WeightsDir

    w = weights if isinstance(weights, WeightsDir) else WeightsDir(weights)
    if not os.path.isfile(w.prefilter):
        log.info("no distilled prefilter at %s: prefiltering by embedding cosine (python -m fos.train.prefilter)",
                 w.prefilter)
        return None
    pf = Prefilter.load(w.prefilter)
    if pf.student_sha256 != student_sha256:
        log.warning("%s was distilled from another student: prefiltering by embedding cosine instead (retrain it "
                    "with python -m fos.train.prefilter)", w.prefilter)
        return None
    log.info("prefilter distilled from the student: %s", w.prefilter)
    return pf


def load_engine(library: str, weights: str = SHIPPED, backend: str = "auto",
                cfg: EngineCfg | None = None, prefilter: str = "auto") -> SearchEngine:
    """Library + the best (or the named) backend for the weights folder ``weights``. The library is
    checked against the weights before any backend is made. ``prefilter``: ``auto`` (the folder's
    distilled prefilter when it fits the student) or ``embedding`` (the embedding cosine)."""
    from fos.weights import WeightsDir

    if prefilter not in PREFILTERS:
        raise InputError(f"unknown prefilter {prefilter!r}; use one of {', '.join(PREFILTERS)}")
    lib = Library(library)
    w = WeightsDir(weights)
    if w.has("student"):
        lib.check_weights(w.student_sha256)
    b = get_backend(backend, w)
    return SearchEngine(lib, b, cfg, prefilter=weights_prefilter(w, b.student_sha256) if prefilter == "auto" else None)
