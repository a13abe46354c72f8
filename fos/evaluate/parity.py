"""Does a faster graph rank as the float32 one does? The ranking check behind int8 graphs.

:func:`ranking_agreement` scores the S-FOSD test queries (loose boxes, several box seeds, as the README's
results) with two scorers and reports each one's Recall@1 and how much of the float32 top 5 the other
keeps. :func:`int8_gate` runs it for each int8 graph of an export (one at a time, then the passing
student graphs together) and says which may ship: an int8 graph ships only where Recall@1 stays within
(above or below)
:data:`fos.export.quantize.RECALL_TOLERANCE` of float32. The rule is fixed here, before any number is
seen, and the calibration never reads the test split.
"""
from __future__ import annotations

import numpy as np

from fos.data import TestSet
from fos.evaluate.protocols import StudentScorer, TeacherScorer, score_testset
from fos.evaluate.metrics import average_over_categories, sfosd_metrics
from fos.export.quantize import INT8_GRAPHS, RECALL_TOLERANCE
from fos.runtime import OrtBackend, read_manifest

SEEDS = (0, 1, 2, 3, 4)


def _recall_and_top(ts: TestSet, scored: dict) -> tuple[float, dict]:
    per_cat = {cat: sfosd_metrics(ts.categories[cat].labels, s) for cat, (s, _) in scored.items()}
    return average_over_categories(per_cat)["recall@1"], {cat: s for cat, (s, _) in scored.items()}


def ranking_agreement(ts: TestSet, reference, other, box_jitter: float = 0.5, seeds=SEEDS,
                      categories: list[str] | None = None) -> dict:
    """Recall@1 of ``reference`` and ``other`` (scorers) and the mean share of the reference's top 5
    that ``other`` also ranks in its top 5, over ``seeds`` of loose boxes."""
    r_ref, r_oth, overlap = [], [], []
    for seed in seeds:
        a, sa = _recall_and_top(ts, score_testset(ts, reference, box_jitter, seed, categories, progress=False))
        b, sb = _recall_and_top(ts, score_testset(ts, other, box_jitter, seed, categories, progress=False))
        r_ref.append(a)
        r_oth.append(b)
        for cat in sa:
            k = min(5, sa[cat].shape[1])
            for x, y in zip(sa[cat], sb[cat]):
                overlap.append(len(set(np.argsort(-x, kind="stable")[:k]) & set(np.argsort(-y, kind="stable")[:k])) / k)
    return {"recall@1_float32": float(np.mean(r_ref)), "recall@1_int8": float(np.mean(r_oth)),
            "recall@1_drop": float(np.mean(r_ref) - np.mean(r_oth)), "top5_overlap": float(np.mean(overlap)),
            "seeds": list(seeds), "box_jitter": box_jitter}


def int8_gate(weights, onnx_dir: str, ts: TestSet, seeds=SEEDS, categories: list[str] | None = None,
              graphs=INT8_GRAPHS) -> dict[str, dict]:
    """Per int8 graph of ``onnx_dir``: its :func:`ranking_agreement` with float32 and whether it ships.
    Student graphs are checked one at a time, then the passing ones together (all of them ship only if
    the combination passes too); the teacher is checked on its own ranking."""
    fp32 = OrtBackend(weights, onnx_dir, "float32")
    exported = read_manifest(onnx_dir)["graphs"]
    out: dict[str, dict] = {}

    def check(int8: set[str], scorer_cls) -> dict:
        res = ranking_agreement(ts, scorer_cls(fp32), scorer_cls(OrtBackend(weights, onnx_dir, "int8", int8_graphs=int8)),
                                seeds=seeds, categories=categories)
        return {**res, "shipped": abs(res["recall@1_drop"]) <= RECALL_TOLERANCE}  # lower or higher: it ranks otherwise

    student = [g for g in graphs if g != "teacher" and f"{g}:int8" in exported]
    for g in student:
        out[g] = check({g}, StudentScorer)
    passing = {g for g in student if out[g]["shipped"]}
    if len(passing) > 1:
        together = check(passing, StudentScorer)
        for g in passing:
            out[g]["together"] = {k: v for k, v in together.items() if k != "shipped"}
            out[g]["shipped"] = together["shipped"]
    if "teacher" in graphs and "teacher:int8" in exported:
        out["teacher"] = check({"teacher"}, TeacherScorer)
    return out
