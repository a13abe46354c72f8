"""``python -m fos.evaluate``: see :mod:`fos.evaluate`."""
from __future__ import annotations

import argparse
import sys
import time

from fos.weights import SHIPPED
from fos import cli
from fos.data import load_test
from fos.evaluate import (
    MATCHED_TOL, TRAINED, __doc__ as DOC, average_runs, evaluate, evaluate_matched, format_table, make_scorer,
)
from fos.evaluate.baselines import BASELINES
from fos.evaluate.harmony import N_CASTS, evaluate_harmony
from fos.composite import COMPOSITES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fos.evaluate", description=DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset root (the folder with test/)")
    p.add_argument("--model", required=True,
                   help=f"a trained model ({', '.join(TRAINED)}; student_vgg19 with --checkpoint) or a baseline: "
                        f"{', '.join(BASELINES)}")
    p.add_argument("--weights", default=SHIPPED, help="weights folder (teacher.safetensors, student.safetensors)")
    p.add_argument("--checkpoint", help="one checkpoint file instead of the weights folder (torch backend)")
    cli.add_backend(p, "run trained models through this backend (auto: as the search and the app)")
    p.add_argument("--composite", default="stretch", choices=COMPOSITES,
                   help="teacher: stretch (DiscoFOS's composite, what it was trained on) or fit (what the app shows)")
    p.add_argument("--set", default="auto", choices=["auto", "sfosd", "rfosd"], help="which test set")
    p.add_argument("--protocol", default="standard", choices=["standard", "matched", "harmony"],
                   help="matched: candidates of about the true cutout's aspect, all resampled to its pixel area "
                        "(leak-free; loose boxes, --box-jitter 0.5 unless given); harmony: the query's own cutout "
                        "under several photos' colour casts, the background moved to one of them (loose boxes)")
    p.add_argument("--casts", type=cli.positive_int, default=N_CASTS, help="harmony: candidates (colour casts) per query")
    p.add_argument("--max-candidates", type=cli.nonneg_int, default=0,
                   help="matched: at most N candidates per query, the closest in aspect (0 = all within --aspect-tol)")
    p.add_argument("--aspect-tol", type=float, default=MATCHED_TOL, help="matched: aspect-ratio factor of the candidates")
    p.add_argument("--box-jitter", type=cli.fraction, default=0.0,
                   help="loose-box protocol: enlarge boxes by up to this fraction")
    p.add_argument("--seed", type=int, default=0, help="seed of the loose boxes (and of the random baseline)")
    p.add_argument("--seeds", type=cli.int_list, default=None,
                   help="comma list of box seeds: metrics averaged over them (loose boxes)")
    p.add_argument("--threshold", type=float, default=1.2, help="R-FOSD aspect-ratio filter threshold")
    p.add_argument("--categories", help="comma-separated subset of categories")
    p.add_argument("--appearance-only", action="store_true",
                   help="ablation: switch the geometry (aspect and size) term of a trained model off")
    p.add_argument("--rerank", type=cli.nonneg_int, default=0,
                   help="--model student: the weights folder's teacher re-scores the student's top N (the search's cascade)")
    p.add_argument("--json", help="write the metrics here (atomically)")
    cli.add_threads(p)
    return p


def run(a) -> int:
    ts = load_test(a.data, a.set)
    scorer = make_scorer(a.model, a.weights, a.checkpoint, a.seed, a.backend, a.appearance_only, a.composite, a.rerank)
    t0 = time.time()
    cats = a.categories.split(",") if a.categories else None
    seeds = a.seeds or [a.seed]
    if a.protocol == "matched":
        jitter = a.box_jitter if a.box_jitter > 0 else 0.5
        runs = [evaluate_matched(ts, scorer, jitter, sd, a.aspect_tol, cats, max_candidates=a.max_candidates) for sd in seeds]
    elif a.protocol == "harmony":
        jitter = a.box_jitter if a.box_jitter > 0 else 0.5
        runs = [evaluate_harmony(ts, scorer, jitter, sd, a.casts, cats) for sd in seeds]
    else:
        runs = [evaluate(ts, scorer, a.box_jitter, sd, a.threshold, cats) for sd in seeds]
    res = average_runs(runs)
    where = getattr(getattr(scorer, "backend", None), "description", "no network")
    print(f"{a.model} on {a.data} ({res.get('protocol', ts.kind)}, box jitter {a.box_jitter}, {where}), "
          f"{time.time() - t0:.1f}s")
    print(format_table(res))
    if "chance@1" in res:
        print(f"recall@1 {res['recall@1']:.3f} against chance {res['chance@1']:.3f}; recall@3 {res['recall@3']:.3f} "
              f"against chance {res['chance@3']:.3f} ({res['n_queries']} queries, {res['n_skipped']} skipped: "
              + ("too few distinct casts" if a.protocol == "harmony" else "a single candidate") + ")")
    if len(seeds) > 1:
        print(f"over box seeds {seeds}: " + ", ".join(f"{k} {res[k]:.3f} ± {v:.3f}" for k, v in res["seed_std"].items()))
    if a.json:
        cli.write_json(a.json, res)
    return 0


def main(argv=None) -> int:
    return cli.run(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
