"""``python -m fos.train.prefilter [--weights weights] [--data ROOT ...] [--save weights/prefilter.safetensors]``:
distil the student head's ranking into the prefilter (:mod:`fos.prefilter`).

The student is frozen and runs as search runs it (the weights folder's backend, :class:`fos.scoring.Scoring`).
For every training background of ``--data`` (train splits only) its category's training cutouts are the
candidates; the head's appearance logits over them (its score without the geometry term) are the target.
Two linear maps of the student's embeddings are trained so that, per background, the softmax of
``(e_q Wq) . (e_c Wc)`` over the candidates matches the softmax of those logits (KL divergence, Adam,
seeded). The geometry term needs no training: the prefilter expands the head's own weights exactly.

The report (JSON beside the weights) says, on the test split of the first ``--data`` root, how often
the head's top 1 and top 5 stay in the prefilter's top K, against the student's plain embedding
cosine, the search's prefilter until now.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fos import cli
from fos.config import Cfg
from fos.data import DatasetError, load_sfosd_test, load_train_roots
from fos.evaluate import query_box
from fos.prefilter import Prefilter, PrefilterCfg
from fos.preprocess import foreground_colour, load_image, norm_to_pixel_box
from fos.registry import load_checkpoint
from fos.runtime import get_backend
from fos.scoring import Scoring, logit
from fos.weights import WeightsDir

log = logging.getLogger("fos.train.prefilter")


@dataclass
class PrefilterTrainCfg(Cfg):
    """Hyper-parameters of ``python -m fos.train.prefilter`` (fixed before any test number was seen)."""

    weights: str = "weights"
    data: list[str] = field(default_factory=lambda: ["../shared/data/msrc-fos"])
    backend: str = "auto"
    max_candidates: int = 256  # training cutouts per category (a seeded sample of larger ones)
    steps: int = 400
    lr: float = 0.01
    temperature: float = 1.0  # of the target softmax over the head's appearance logits
    seed: int = 0
    threads: int = 0


@dataclass
class Group:
    """One category of the training split: its queries' and candidates' embeddings, and the targets."""

    q_emb: np.ndarray  # (Q, E)
    c_emb: np.ndarray  # (C, E)
    target: np.ndarray  # (Q, C) the head's appearance logits


def encode_groups(scoring: Scoring, records, max_candidates: int, seed: int, progress: bool = True) -> list[Group]:
    """Per category of ``records``: every background (exact box) against up to ``max_candidates`` cutouts."""
    rng = np.random.default_rng(seed)
    by_cat: dict[str, list] = {}
    for r in records:
        by_cat.setdefault(r.category, []).append(r)
    groups = []
    bar = tqdm(total=len(records), desc="prefilter: encode and score", unit="background", disable=not progress)
    for cat in sorted(by_cat):
        recs = by_cat[cat]
        if len(recs) < 2:
            bar.update(len(recs))
            continue
        cands = [recs[i] for i in sorted(rng.choice(len(recs), min(len(recs), max_candidates), replace=False))]
        imgs = [load_image(r.fg_path, "RGBA", scoring.pcfg, what="foreground") for r in cands]
        fg_part, c_emb = scoring.encode_foregrounds(imgs)
        sizes, colours = [im.size for im in imgs], np.stack([foreground_colour(im) for im in imgs])
        q_emb, target = [], []
        for r in recs:
            img = load_image(r.bg_path, what="background")
            q = scoring.query(img, norm_to_pixel_box(r.bbox, *img.size))
            q_emb.append(q.emb)
            target.append(logit(scoring.student(q, fg_part, sizes, colours, appearance_only=True)))
            bar.update(1)
        groups.append(Group(np.stack(q_emb).astype(np.float32), c_emb.astype(np.float32),
                            np.stack(target).astype(np.float32)))
    bar.close()
    return groups


def fit_maps(groups: list[Group], cfg: PrefilterCfg, tcfg: PrefilterTrainCfg, progress: bool = True):
    """Wq, Wc (E, dim) trained by the listwise loss over every group; returns them and the loss history."""
    torch.manual_seed(tcfg.seed)
    e = groups[0].q_emb.shape[1]
    wq = torch.nn.Parameter(torch.randn(e, cfg.dim) * 0.01)
    wc = torch.nn.Parameter(torch.randn(e, cfg.dim) * 0.01)
    opt = torch.optim.Adam([wq, wc], lr=tcfg.lr)
    data = [(torch.from_numpy(g.q_emb), torch.from_numpy(g.c_emb),
             F.softmax(torch.from_numpy(g.target) / tcfg.temperature, 1)) for g in groups]
    n = sum(len(g.q_emb) for g in groups)
    history = []
    for step in tqdm(range(tcfg.steps), desc="prefilter: fit", unit="step", disable=not progress):
        opt.zero_grad()
        loss = sum(F.kl_div(F.log_softmax((q @ wq) @ (c @ wc).T, 1), t, reduction="sum") for q, c, t in data) / n
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == tcfg.steps - 1:
            history.append({"step": step + 1, "kl": round(float(loss.detach()), 6)})
    return wq.detach().numpy(), wc.detach().numpy(), history


def agreement(scoring: Scoring, pf: Prefilter | None, root: str, ks=(5, 10, 20), box_jitter: float = 0.5) -> dict:
    """On the S-FOSD test split of ``root`` (loose boxes, seed 0): the share of queries whose head top 1
    and top 5 are all inside the prefilter's top K (``pf``; None: the plain embedding cosine)."""
    ts = load_sfosd_test(root)
    hits = {k: [0, 0] for k in ks}
    n = 0
    for cs in ts.categories.values():
        imgs = [load_image(p, "RGBA", scoring.pcfg, what="foreground") for p in cs.fg_paths]
        fg_part, c_emb = scoring.encode_foregrounds(imgs)
        sizes, colours = [im.size for im in imgs], np.stack([foreground_colour(im) for im in imgs])
        for qd in cs.queries:
            img = load_image(qd.bg_path, what="background")
            q = scoring.query(img, query_box(qd, *img.size, box_jitter, 0))
            head = np.argsort(-scoring.student(q, fg_part, sizes, colours), kind="stable")
            pre = pf.scores(q.emb, q.bg.box, c_emb, sizes) if pf is not None else \
                c_emb.astype(np.float32) @ q.emb.astype(np.float32)
            order = np.argsort(-pre, kind="stable")
            for k in ks:
                top = set(order[:k])
                hits[k][0] += head[0] in top
                hits[k][1] += set(head[:5]) <= top
            n += 1
    return {"queries": n, **{f"K={k}": {"head_top1_kept": h1 / n, "head_top5_kept": h5 / n}
                             for k, (h1, h5) in hits.items()}}


def fit(tcfg: PrefilterTrainCfg, save: str, cfg: PrefilterCfg | None = None, command: str = "",
        progress: bool = True) -> dict:
    cfg = cfg or PrefilterCfg()
    t0 = time.time()
    w = WeightsDir(tcfg.weights)
    backend = get_backend(tcfg.backend, w)
    student = load_checkpoint(w.student, model_name="student")
    geom = student.head.geom_fc.weight.detach().numpy().ravel() if student.head.geom_fc is not None else np.zeros(5)
    scoring = Scoring(backend)
    records = load_train_roots(tcfg.data)
    groups = encode_groups(scoring, records, tcfg.max_candidates, tcfg.seed, progress)
    if not groups:
        raise DatasetError(f"no category of {tcfg.data} has two training backgrounds: nothing to distil")
    wq, wc, history = fit_maps(groups, cfg, tcfg, progress)
    pf = Prefilter(cfg, wq, wc, geom, backend.student_sha256)
    report = {"test_agreement": {"prefilter": agreement(scoring, pf, tcfg.data[0]),
                                 "embedding_cosine": agreement(scoring, None, tcfg.data[0])}}
    pf.save(save, train_cfg=asdict(tcfg), history=history, train_backgrounds=sum(len(g.q_emb) for g in groups),
            categories=len(groups), train_seconds=round(time.time() - t0, 1), command=command, **report)
    log.info("wrote %s and its JSON (%.1f min)", save, (time.time() - t0) / 60)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fos.train.prefilter", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_args(p, PrefilterTrainCfg(), ("data", "threads", "backend"))
    p.add_argument("--data", action="append", default=None,
                   help=f"FOSD root whose train split is distilled; repeat for several (default {PrefilterTrainCfg().data[0]}); "
                        "the first one's test split is the report's")
    cli.add_backend(p)
    p.add_argument("--save", default=None, help="the prefilter's safetensors (default <weights>/prefilter.safetensors)")
    cli.add_threads(p)
    return p


def main(argv=None) -> int:
    def run(a) -> int:
        names = [f for f in asdict(PrefilterTrainCfg()) if f not in ("data",)]
        tcfg = PrefilterTrainCfg(data=a.data or PrefilterTrainCfg().data, **{f: getattr(a, f) for f in names})
        save = a.save or WeightsDir(tcfg.weights).prefilter
        report = fit(tcfg, save, command="python -m fos.train.prefilter " + " ".join(argv if argv is not None else sys.argv[1:]))
        print(f"wrote {save}")
        print("share of test queries whose head top 1 / top 5 stay in the prefilter's top K (loose boxes, seed 0):")
        for name, r in report["test_agreement"].items():
            print(f"  {name:17s} " + "  ".join(f"{k}: {v['head_top1_kept']:.3f} / {v['head_top5_kept']:.3f}"
                                                for k, v in r.items() if k.startswith("K=")))
        return 0

    return cli.run(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
