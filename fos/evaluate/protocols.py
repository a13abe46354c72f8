"""Evaluation: ``python -m fos.evaluate --data DIR --model NAME [--weights DIR | --checkpoint FILE] [--json OUT]``.

S-FOSD (test set 1): Recall@1/5/10/20 per category, then averaged over categories (the paper's
protocol). R-FOSD (test set 2): mAP, mAP-20, Precision@1/5/10/20 after FOSD's aspect-ratio filter.

``--box-jitter F`` evaluates with *loose* query boxes: each box is enlarged by a seeded random
5%..F of its width and height (never shrunk, so the stored gray region stays covered). With exact
boxes, a foreground cropped to its own box has exactly the box's aspect ratio, which gives the
answer away; loose boxes are closer to what a person draws.
"""
from __future__ import annotations

import logging
import os
import random

import numpy as np
from tqdm import tqdm

from fos.checkpoint import WeightsError
from fos.composite import COMPOSITES
from fos.data import TestSet
from fos.evaluate.baselines import BASELINES, Candidates, Scorer
from fos.evaluate.metrics import average_over_categories, rfosd_metrics, sfosd_metrics
from fos.preprocess import (
    InputError, foreground_colour, jitter_box, load_image, norm_to_pixel_box, prepare_background,
)
from fos.registry import check_name, load_checkpoint, load_official_student
from fos.runtime import Backend, TorchBackend, get_backend
from fos.scoring import Scoring
from fos.weights import SHIPPED

log = logging.getLogger("fos.evaluate")


class TeacherScorer(Scorer):
    """One composite forward per (background, foreground) pair, through :class:`fos.scoring.Scoring`."""

    name = "teacher"

    def __init__(self, backend: Backend, appearance_only: bool = False, rule: str = "stretch"):
        self.scoring, self.pcfg = Scoring(backend), backend.preprocess_cfg
        self.backend, self.appearance_only, self.rule = backend, appearance_only, rule

    def score(self, bg, cands):
        return self.scoring.teacher(bg, cands.images, self.rule, self.appearance_only)


class StudentScorer(Scorer):
    """The search's path: foreground halves encoded once per category and kept in float16, as a library
    keeps them; per query one background encode and the head (:class:`fos.scoring.Scoring`)."""

    name = "student"

    def __init__(self, backend: Backend, appearance_only: bool = False):
        self.scoring, self.pcfg = Scoring(backend), backend.preprocess_cfg
        self.backend, self.appearance_only = backend, appearance_only

    def prepare(self, cands):
        cands.cache["fg_part"], _ = self.scoring.encode_foregrounds(cands.images)
        cands.cache["colour"] = np.stack([foreground_colour(im) for im in cands.images])

    def score(self, bg, cands):
        q = self.scoring.encode(bg)
        return self.scoring.student(q, cands.cache["fg_part"], [im.size for im in cands.images], cands.cache["colour"],
                                    self.appearance_only)


class RerankScorer(Scorer):
    """The search's cascade: the student ranks, the teacher re-scores its top ``n`` (by the teacher's
    probability, placed above the rest, as :class:`fos.search.SearchEngine` orders them)."""

    def __init__(self, student: "StudentScorer", teacher: "TeacherScorer", n: int):
        self.student, self.teacher, self.n = student, teacher, n
        self.pcfg, self.backend = student.pcfg, student.backend
        self.name = f"student+teacher rerank top {n}" + (f":{teacher.rule}" if teacher.rule != "stretch" else "")

    def prepare(self, cands):
        self.student.prepare(cands)

    def score(self, bg, cands):
        s = np.asarray(self.student.score(bg, cands), dtype=np.float64)
        top = np.argsort(-s, kind="stable")[: self.n]
        t = np.asarray(self.teacher.scoring.teacher(bg, [cands.images[i] for i in top], self.teacher.rule), np.float64)
        out = s.copy()
        out[top] = 2.0 + t  # probabilities: every reranked one above every other
        return out


TRAINED = ("teacher", "student")  # the model names a weights folder holds


def make_scorer(name: str, weights: str = SHIPPED, checkpoint: str | None = None, seed: int = 0,
                backend: str = "auto", appearance_only: bool = False, composite: str = "stretch",
                rerank: int = 0) -> Scorer:
    """A baseline by name, or a trained model.

    Trained models come from the weights folder ``weights`` through ``backend`` (the same default,
    ``auto``, as the search and the app), or from one ``checkpoint`` file (torch backend; an official
    DiscoFOS ``.pth`` for ``student_vgg19``). ``appearance_only`` switches a trained model's geometry
    term off (an ablation); ``composite`` is the teacher's compositing rule; ``rerank`` N > 0 (a student
    from a weights folder) has the folder's teacher re-score the student's top N, as the search does.
    """
    if rerank:
        if name != "student" or checkpoint or appearance_only:
            raise InputError("--rerank N takes --model student from a weights folder (its teacher re-scores the top N)")
        b = get_backend(backend, weights)
        return RerankScorer(StudentScorer(b), TeacherScorer(b, rule=composite), rerank)
    if name in BASELINES:
        if appearance_only:
            raise InputError(f"--appearance-only applies to trained models (teacher, student), not to the {name!r} baseline")
        if checkpoint:
            raise InputError(f"--checkpoint applies to trained models, not to the {name!r} baseline")
        return BASELINES[name](seed) if name == "random" else BASELINES[name]()
    if composite not in COMPOSITES:
        raise InputError(f"unknown --composite {composite!r}; use one of {', '.join(COMPOSITES)}")
    try:
        check_name(name)
    except ValueError:
        raise InputError(f"unknown model {name!r}; use a trained model ({', '.join(TRAINED)}, or a registered name "
                         f"with --checkpoint) or a baseline ({', '.join(BASELINES)})") from None
    if checkpoint:
        if backend not in ("auto", "torch"):
            raise InputError(f"--backend {backend} runs the exported graphs of a weights folder; "
                             "use --weights DIR instead of --checkpoint")
        if not os.path.isfile(checkpoint):
            raise WeightsError(f"checkpoint {checkpoint} not found")
        if name == "student_vgg19" and not checkpoint.endswith(".safetensors"):
            model = load_official_student(checkpoint)
        else:
            model = load_checkpoint(checkpoint, model_name=name)
        got = getattr(model, "model_name", model.cfg.kind)
        if got != name:
            raise WeightsError(f"{checkpoint} holds a {got!r} model, not {name!r}; pass --model {got}")
        b = TorchBackend(student=model) if model.cfg.kind == "student" else TorchBackend(teacher=model)
        kind = model.cfg.kind
    else:
        if name not in TRAINED:
            raise InputError(f"--model {name} needs --checkpoint FILE (a weights folder holds only "
                             f"{' and '.join(TRAINED)})")
        b = get_backend(backend, weights)
        kind = name
    scorer = TeacherScorer(b, appearance_only, composite) if kind == "teacher" else StudentScorer(b, appearance_only)
    scorer.name = name + (":appearance-only" if appearance_only else "") + \
        (f":{composite}" if kind == "teacher" and composite != "stretch" else "")
    return scorer


def query_box(query, width: int, height: int, box_jitter: float, seed: int):
    box = norm_to_pixel_box(query.bbox, width, height)
    if box_jitter > 0:
        box = jitter_box(box, width, height, box_jitter, random.Random(f"{seed}:{query.name}"))
    return box


def score_testset(ts: TestSet, scorer: Scorer, box_jitter: float = 0.0, seed: int = 0,
                  categories: list[str] | None = None, progress: bool = True):
    """Scores (n_query, n_fg) and aspect differences for every category."""
    out = {}
    cats = categories or list(ts.categories)
    unknown = [c for c in cats if c not in ts.categories]
    if unknown:
        raise InputError(f"unknown categories {unknown}; the test set has {sorted(ts.categories)}")
    bar = tqdm(total=sum(len(ts.categories[c].queries) for c in cats), desc=f"eval {scorer.name}",
               unit="query", disable=not progress, dynamic_ncols=True)
    for cat in cats:
        cs = ts.categories[cat]
        cands = Candidates(cs.fg_names, [load_image(p, what="foreground") for p in cs.fg_paths], {})
        scorer.prepare(cands)
        scores, ratio = [], []
        for q in cs.queries:
            bg_img = load_image(q.bg_path, what="background")
            box = query_box(q, *bg_img.size, box_jitter, seed)
            bg = prepare_background(bg_img, box, scorer.pcfg)
            scores.append(np.asarray(scorer.score(bg, cands), dtype=np.float64))
            bw, bh = box[2] - box[0], box[3] - box[1]  # FOSD's R-FOSD filter: a difference of plain ratios
            ratio.append([abs(bw / bh - im.width / im.height) for im in cands.images])
            bar.update(1)
        out[cat] = (np.stack(scores), np.array(ratio))
    bar.close()
    return out


def evaluate(ts: TestSet, scorer: Scorer, box_jitter: float = 0.0, seed: int = 0, threshold: float = 1.2,
             categories: list[str] | None = None, progress: bool = True) -> dict:
    """Metrics of ``scorer`` on ``ts``; the dict is what ``--json`` writes."""
    scored = score_testset(ts, scorer, box_jitter, seed, categories, progress)
    per_cat = {}
    for cat, (scores, ratio) in scored.items():
        labels = ts.categories[cat].labels
        m = sfosd_metrics(labels, scores) if ts.kind == "sfosd" else rfosd_metrics(labels, scores, ratio, threshold)
        per_cat[cat] = {**m, "n_queries": len(labels)}
    overall = average_over_categories({c: {k: v for k, v in m.items() if k != "n_queries"} for c, m in per_cat.items()})
    return {"model": scorer.name, "n_queries": sum(m["n_queries"] for m in per_cat.values()), **overall,
            "per_category": per_cat}


# --------------------------------------------------------------------------- the matched protocol
MATCHED_TOL = 1.1  # candidates: aspect ratio within this factor of the true cutout's (1.25 left `aspect` 0.075 above chance)


def resample_to_area(img, area: float):
    """``img`` resized to ``area`` pixels keeping its aspect, by the one path every candidate takes
    (bilinear to twice the target per side, then a box filter down to it), so that no candidate's
    resampling history differs in kind from another's (the true cutout is resampled too)."""
    from PIL import Image

    ar = img.width / img.height
    w, h = max(1, round((area * ar) ** 0.5)), max(1, round((area / ar) ** 0.5))
    return img.resize((2 * w, 2 * h), Image.BILINEAR).resize((w, h), Image.BOX)


def matched_candidates(cs, query_name: str, images: list, tol: float = MATCHED_TOL, max_candidates: int = 0):
    """The matched protocol's candidates of one query: the true cutout plus the same-class cutouts whose
    aspect ratio is within ``tol`` times the true one's, each resampled to the true cutout's pixel area;
    with ``max_candidates`` > 0 only that many, the closest in aspect (ties by file order), the true one
    among them (a one-class source such as ccp-person otherwise offers each query about 85)."""
    t = cs.fg_names.index(query_name)
    true = images[t]
    lt = np.log(true.width / true.height)
    dist = [abs(np.log(im.width / im.height) - lt) for im in images]
    keep = [j for j in range(len(images)) if dist[j] <= np.log(tol) + 1e-12]
    if max_candidates > 0 and len(keep) > max_candidates:
        keep = sorted(sorted([j for j in keep if j != t], key=lambda j: dist[j])[: max_candidates - 1] + [t])
    area = true.width * true.height
    return Candidates([cs.fg_names[j] for j in keep], [resample_to_area(images[j], area) for j in keep], {})


def tied_recall(above: np.ndarray, tied: np.ndarray, k: int) -> np.ndarray:
    """Chance that the true candidate lands in the top ``k`` when ties are broken at random: ``above``
    candidates score higher, ``tied`` others score the same (a scorer that cannot tell them apart
    gets chance, not the luck of the candidates' order)."""
    above, tied = np.asarray(above, dtype=np.float64), np.asarray(tied, dtype=np.float64)
    return np.clip(k - above, 0, tied + 1) / (tied + 1)


def evaluate_matched(ts: TestSet, scorer: Scorer, box_jitter: float = 0.5, seed: int = 0, tol: float = MATCHED_TOL,
                     categories: list[str] | None = None, progress: bool = True, max_candidates: int = 0) -> dict:
    """The leak-free protocol: each query against its true cutout and the same-class cutouts of about its
    aspect (``tol``), all resampled to the true cutout's pixel area, with loose boxes. Neither the
    aspect ratio, the pixel size nor the resampling history gives the answer away. Queries left with a
    single candidate are skipped (counted in ``n_skipped``). Recall@1/@3 per category, then averaged
    over categories, with the chance level of each (the mean of 1/n and of min(3, n)/n)."""
    if ts.kind != "sfosd":
        raise InputError("the matched protocol needs an S-FOSD test set (one true cutout per background)")
    cats = categories or list(ts.categories)
    unknown = [c for c in cats if c not in ts.categories]
    if unknown:
        raise InputError(f"unknown categories {unknown}; the test set has {sorted(ts.categories)}")
    per_cat, skipped = {}, 0
    bar = tqdm(total=sum(len(ts.categories[c].queries) for c in cats), desc=f"matched {scorer.name}", unit="query",
               disable=not progress, dynamic_ncols=True)
    for cat in cats:
        cs = ts.categories[cat]
        images = [load_image(p, what="foreground") for p in cs.fg_paths]
        rows = []
        for q in cs.queries:
            bar.update(1)
            cands = matched_candidates(cs, q.name, images, tol, max_candidates)
            n = len(cands.names)
            if n < 2:
                skipped += 1
                continue
            scorer.prepare(cands)
            bg_img = load_image(q.bg_path, what="background")
            bg = prepare_background(bg_img, query_box(q, *bg_img.size, box_jitter, seed), scorer.pcfg)
            scores = np.asarray(scorer.score(bg, cands), dtype=np.float64)
            mine = scores[cands.names.index(q.name)]
            rows.append((int((scores > mine).sum()), int((scores == mine).sum()) - 1, n))
        if rows:
            r = np.array(rows)
            per_cat[cat] = {"recall@1": float(np.mean(tied_recall(r[:, 0], r[:, 1], 1))),
                            "recall@3": float(np.mean(tied_recall(r[:, 0], r[:, 1], 3))),
                            "chance@1": float(np.mean(1 / r[:, 2])), "chance@3": float(np.mean(np.minimum(3, r[:, 2]) / r[:, 2])),
                            "mean_candidates": float(np.mean(r[:, 2])), "n_queries": len(rows)}
    bar.close()
    if not per_cat:
        raise InputError(f"no query has a second candidate within aspect x{tol}; raise --aspect-tol")
    overall = average_over_categories({c: {k: v for k, v in m.items() if k != "n_queries"} for c, m in per_cat.items()})
    cap = f", at most {max_candidates} candidates" if max_candidates > 0 else ""
    return {"model": scorer.name, "protocol": f"matched (aspect x{tol}{cap}, box jitter {box_jitter})",
            "n_queries": sum(m["n_queries"] for m in per_cat.values()), "n_skipped": skipped, **overall,
            "per_category": per_cat}


def average_runs(runs: list[dict]) -> dict:
    """Mean of several :func:`evaluate` results (same test set, other box seeds), same keys."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    fixed = ("model", "protocol", "n_queries", "n_skipped", "per_category")
    out = {k: first[k] for k in fixed[:-1] if k in first}
    for k in first:
        if k not in fixed:
            out[k] = float(np.mean([r[k] for r in runs]))
    out["seed_std"] = {k: float(np.std([r[k] for r in runs])) for k in first if k not in fixed}  # over box seeds
    out["per_category"] = {c: {k: (v if k == "n_queries" else float(np.mean([r["per_category"][c][k] for r in runs])))
                               for k, v in m.items()} for c, m in first["per_category"].items()}
    return out


def format_table(result: dict) -> str:
    keys = [k for k in result if k not in ("model", "protocol", "n_queries", "n_skipped", "per_category", "seed_std")]
    rows = [["category", "n", *keys]]
    for c, m in result["per_category"].items():
        rows.append([c, str(m["n_queries"]), *[f"{m[k]:.3f}" for k in keys]])
    rows.append(["MEAN (per category)", str(result["n_queries"]), *[f"{result[k]:.3f}" for k in keys]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows)
