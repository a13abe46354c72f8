"""Evaluation: ``python -m fos.evaluate --data DIR --model NAME [--weights PATH] [--json OUT]``.

S-FOSD (test set 1): Recall@1/5/10/20 per category, then averaged over categories (the paper's
protocol). R-FOSD (test set 2): mAP, mAP-20, Precision@1/5/10/20 after FOSD's aspect-ratio filter.

``--box-jitter F`` evaluates with *loose* query boxes: each box is enlarged by a seeded random
5%..F of its width and height (never shrunk, so the stored gray region stays covered). With exact
boxes, a foreground cropped to its own box has exactly the box's aspect ratio, which gives the
answer away; loose boxes are closer to what a person draws.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from fos.baselines import BASELINES, Candidates, Scorer
from fos.checkpoint import WeightsError, atomic_write_json, load_checkpoint, load_official_student
from fos.runtime import Backend, BackendError, TorchBackend, get_backend
from fos.data import DatasetError, TestSet, load_test
from fos.metrics import average_over_categories, rfosd_metrics, sfosd_metrics
from fos.preprocess import (
    InputError, foreground_input, geometry_batch, jitter_box, load_image,
    norm_to_pixel_box, prepare_background, teacher_input,
)

log = logging.getLogger("fos.evaluate")


def _geometry(bg, cands, appearance_only: bool) -> np.ndarray:
    """Geometry inputs of every candidate; zeros switch the (bias-free) geometry term off."""
    g = geometry_batch(bg.box, [im.size for im in cands.images])
    return np.zeros_like(g) if appearance_only else g


class TeacherScorer(Scorer):
    """One composite forward per (background, foreground) pair."""

    name = "teacher"

    def __init__(self, backend: Backend, appearance_only: bool = False):
        self.backend, self.pcfg, self.appearance_only = backend, backend.preprocess_cfg, appearance_only

    def score(self, bg, cands):
        x = torch.stack([teacher_input(bg, im, self.pcfg) for im in cands.images]).numpy()
        g = _geometry(bg, cands, self.appearance_only)
        return np.concatenate([self.backend.teacher(x[s:s + 64], g[s:s + 64]) for s in range(0, len(x), 64)])


class StudentScorer(Scorer):
    """Foreground features once per category; per query one background encode and the head."""

    name = "student"

    def __init__(self, backend: Backend, appearance_only: bool = False):
        self.backend, self.pcfg, self.appearance_only = backend, backend.preprocess_cfg, appearance_only

    def prepare(self, cands):
        x = torch.stack([foreground_input(im, self.pcfg) for im in cands.images]).numpy()
        cands.cache["fg_part"] = np.concatenate([self.backend.encode_foreground(x[s:s + 32])[0]
                                                 for s in range(0, len(x), 32)])

    def score(self, bg, cands):
        bg_part, _ = self.backend.encode_background(bg.tensor[None].numpy(), bg.crop_box_net[None].numpy())
        g = _geometry(bg, cands, self.appearance_only)
        return self.backend.head(bg_part, cands.cache["fg_part"], g)


def make_scorer(name: str, weights: str | None = None, seed: int = 0, backend: str = "torch",
                appearance_only: bool = False) -> Scorer:
    """A baseline by name, or a trained model.

    ``weights``: a checkpoint file (torch backend) or a weights folder; default ``weights/``. With
    ``backend`` onnxruntime / tensorrt the exported graphs of that folder are used (exported first if
    needed). ``appearance_only`` switches a trained model's geometry term off (an ablation).
    """
    if name in BASELINES:
        if appearance_only:
            raise InputError(f"--appearance-only applies to trained models (teacher, student), not to the {name!r} baseline")
        return BASELINES[name](seed) if name == "random" else BASELINES[name]()
    kind = "teacher" if name.startswith("teacher") else "student"
    if weights and os.path.isfile(weights):
        if backend != "torch":
            raise WeightsError(f"--backend {backend} runs the exported graphs of a weights folder; pass --weights DIR")
        from fos.registry import list_models

        if name == "student_vgg19" and not weights.endswith(".safetensors"):
            model = load_official_student(weights)
        else:
            model = load_checkpoint(weights, model_name=name if name in list_models() else None)
        kind = model.cfg.kind
        b = TorchBackend(student=model) if kind == "student" else TorchBackend(teacher=model)
    else:
        folder = weights or "weights"
        if not os.path.isdir(folder):
            raise WeightsError(f"weights {folder} not found (pass a checkpoint file or a folder with "
                               "teacher.safetensors and student.safetensors)")
        b = get_backend(backend, folder)
    scorer = (TeacherScorer if kind == "teacher" else StudentScorer)(b, appearance_only)
    scorer.name = name + (":appearance-only" if appearance_only else "")
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
            bg = prepare_background(bg_img, box)
            scores.append(np.asarray(scorer.score(bg, cands), dtype=np.float64))
            bw, bh = box[2] - box[0], box[3] - box[1]
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


def average_runs(runs: list[dict]) -> dict:
    """Mean of several :func:`evaluate` results (same test set, other box seeds), same keys."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    out = {"model": first["model"], "n_queries": first["n_queries"]}
    for k in first:
        if k not in ("model", "n_queries", "per_category"):
            out[k] = float(np.mean([r[k] for r in runs]))
    out["per_category"] = {c: {k: (v if k == "n_queries" else float(np.mean([r["per_category"][c][k] for r in runs])))
                               for k, v in m.items()} for c, m in first["per_category"].items()}
    return out


def format_table(result: dict) -> str:
    keys = [k for k in result if k not in ("model", "n_queries", "per_category")]
    rows = [["category", "n", *keys]]
    for c, m in result["per_category"].items():
        rows.append([c, str(m["n_queries"]), *[f"{m[k]:.3f}" for k in keys]])
    rows.append(["MEAN (per category)", str(result["n_queries"]), *[f"{result[k]:.3f}" for k in keys]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fos.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset root (the folder with test/)")
    p.add_argument("--model", required=True, help=f"teacher, student, student_vgg19 or a baseline: {', '.join(BASELINES)}")
    p.add_argument("--weights", help="checkpoint file, or weights folder (default weights/)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "tensorrt"],
                   help="run trained models through this backend (onnxruntime exports the graphs first if needed)")
    p.add_argument("--set", default="auto", choices=["auto", "sfosd", "rfosd"], help="which test set")
    p.add_argument("--box-jitter", type=float, default=0.0, help="loose-box protocol: enlarge boxes by up to this fraction")
    p.add_argument("--seed", type=int, default=0, help="seed of the loose boxes (and of the random baseline)")
    p.add_argument("--seeds", default=None, help="comma list of box seeds: metrics averaged over them (loose boxes)")
    p.add_argument("--threshold", type=float, default=1.2, help="R-FOSD aspect-ratio filter threshold")
    p.add_argument("--categories", help="comma-separated subset of categories")
    p.add_argument("--appearance-only", action="store_true",
                   help="ablation: switch the geometry (aspect-ratio) term of a trained model off")
    p.add_argument("--json", help="write the metrics here (atomically)")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        ts = load_test(a.data, a.set)
        scorer = make_scorer(a.model, a.weights, a.seed, a.backend, a.appearance_only)
        t0 = time.time()
        cats = a.categories.split(",") if a.categories else None
        seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else [a.seed]
        runs = [evaluate(ts, scorer, a.box_jitter, sd, a.threshold, cats) for sd in seeds]
        res = average_runs(runs)
    except (DatasetError, WeightsError, InputError, BackendError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    where = getattr(getattr(scorer, "backend", None), "description", "no network")
    print(f"{a.model} on {a.data} ({ts.kind}, box jitter {a.box_jitter}, {where}), {time.time() - t0:.1f}s")
    print(format_table(res))
    if len(seeds) > 1:
        keys = [k for k in res if k not in ("model", "n_queries", "per_category")]
        print(f"over box seeds {seeds}: " + ", ".join(
            f"{k} {res[k]:.3f} ± {np.std([r[k] for r in runs]):.3f}" for k in keys))
    if a.json:
        atomic_write_json(a.json, res)
        print(f"wrote {os.path.abspath(a.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
