"""``python -m fos.search --library LIB --background IMG --box x1,y1,x2,y2 --category NAME``: see :mod:`fos.search`."""
from __future__ import annotations

import argparse
import sys

from fos.weights import SHIPPED
from fos import cli
from fos.config import INDEXES, STORES, EngineCfg
from fos.search import PREFILTERS, __doc__ as DOC, load_engine


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fos.search", description=DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", required=True)
    p.add_argument("--background", required=True)
    p.add_argument("--box", required=True, type=cli.box, help="x1,y1,x2,y2 in pixels of the background (x2, y2 exclusive)")
    p.add_argument("--category", required=True)
    p.add_argument("--k", type=cli.positive_int, default=10, help="how many results")
    p.add_argument("--weights", default=SHIPPED, help="folder with student.safetensors and teacher.safetensors")
    cli.add_backend(p)
    p.add_argument("--prefilter-k", type=cli.nonneg_int, default=EngineCfg.prefilter_k, help="0 scores every candidate")
    p.add_argument("--index", default=EngineCfg.index, choices=INDEXES, help="flat: exact; hnsw, ivf: approximate")
    p.add_argument("--store", default=EngineCfg.store, choices=STORES)
    p.add_argument("--milvus-uri", default=None)
    p.add_argument("--rerank", type=cli.nonneg_int, default=0, help="teacher re-scores the top N")
    p.add_argument("--prefilter", default="auto", choices=PREFILTERS,
                   help="auto: the weights folder's distilled prefilter (python -m fos.train.prefilter) when it "
                        "fits the student; embedding: the student's embedding cosine")
    p.add_argument("--json", help="write {\"results\": [...]} here")
    cli.add_threads(p)
    return p


def run(a) -> int:
    cfg = EngineCfg(a.prefilter_k, a.index, a.store, a.milvus_uri, rerank=a.rerank)
    eng = load_engine(a.library, a.weights, a.backend, cfg, a.prefilter)
    out = eng.query(a.background, a.box, a.category, a.k)
    print("rank  score   appearance  lighting  geometry  id   (logits: score = sigmoid(appearance + lighting + geometry))")
    for rank, r in enumerate(out.results, 1):
        print(f"{rank:4d}  {r.score:.4f}  {r.appearance:+10.3f}  {r.lighting:+8.3f}  {r.geometry:+8.3f}  {r.id}")
    print(f"backend: {eng.backend.description}")
    print("timings (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in out.timings_ms.items()))
    if a.json:
        cli.write_json(a.json, out.to_json())
    return 0


def main(argv=None) -> int:
    return cli.run(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
