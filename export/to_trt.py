#!/usr/bin/env python
"""Build TensorRT engines from the exported ONNX graphs (run it on the GPU that will serve them).

    python export/to_trt.py --onnx weights/onnx --out weights/trt [--fp16] \\
        [--min-batch 1] [--opt-batch 8] [--max-batch 256] [--timing-cache weights/trt/timing.cache] \\
        [--graphs teacher,student_bg,student_fg,student_head,inpaint,refer]

The teacher's and the student's four graphs: one optimization profile per dynamic input (batch from
--min-batch to --max-batch; ``bg_part`` is always batch 1). ``--fp16``: TensorRT 10 sets the FP16
builder flag on the float32 graph; TensorRT 11 (no such flag) builds the ``*_fp16.onnx`` graph as a
strongly typed network. The side graphs, the inpainter's (``inpaint``) and the referrer's (``refer``),
are built in float32 with the profile their export recorded, when ``--onnx`` holds them (they are in
the default list only then). Each engine is written with a JSON of TensorRT version, GPU name,
compute capability, precision, shapes and the sha256 of its ONNX graph. Engines only run on the same
GPU model and TensorRT version, and only while that graph is the exported one.
"""
from __future__ import annotations

import argparse
import os
import sys

from fos import cli
from fos.runtime import GRAPHS

SIDE_GRAPHS = ("inpaint", "refer")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", default="weights/onnx", help="folder written by export/to_onnx.py")
    p.add_argument("--out", default="weights/trt")
    p.add_argument("--fp16", action="store_true", help="float16 engines of the teacher and the student")
    p.add_argument("--min-batch", type=cli.positive_int, default=1)
    p.add_argument("--opt-batch", type=cli.positive_int, default=8)
    p.add_argument("--max-batch", type=cli.positive_int, default=256)
    p.add_argument("--workspace-gib", type=float, default=4.0)
    p.add_argument("--timing-cache", default=None, help="default <out>/timing.cache")
    p.add_argument("--graphs", default=None, help=f"comma-separated, of {', '.join([*GRAPHS, *SIDE_GRAPHS])} "
                                                  "(default: the four, and each side graph --onnx holds)")
    return p


def graphs_to_build(a) -> list[str]:
    """The graphs named (or the default list), checked before anything is built."""
    from fos.errors import InputError

    if a.graphs is None:
        return [*GRAPHS, *(g for g in SIDE_GRAPHS if os.path.isfile(os.path.join(a.onnx, f"{g}.onnx")))]
    names = [g.strip() for g in a.graphs.split(",") if g.strip()]
    bad = [g for g in names if g not in (*GRAPHS, *SIDE_GRAPHS)]
    if bad or not names:
        raise InputError(f"--graphs: unknown graph {', '.join(bad) or '(none given)'}; use "
                         f"{', '.join([*GRAPHS, *SIDE_GRAPHS])}")
    return names


def run(a) -> int:
    from tqdm import tqdm

    from fos.export.trt import build_engine, build_side_engine
    from fos.runtime.trt import require_trt

    names = graphs_to_build(a)
    if not (a.min_batch <= a.opt_batch <= a.max_batch):
        raise ValueError(f"need --min-batch <= --opt-batch <= --max-batch, got {a.min_batch}, {a.opt_batch}, "
                         f"{a.max_batch}")
    trt = require_trt()
    cache = a.timing_cache or os.path.join(a.out, "timing.cache")
    for g in tqdm(names, desc="build engines", unit="engine"):
        if g in SIDE_GRAPHS:
            path = build_side_engine(os.path.join(a.onnx, f"{g}.onnx"), a.out, a.workspace_gib, cache)
        else:
            path = build_engine(a.onnx, g, a.out, a.fp16, a.min_batch, a.opt_batch, a.max_batch, a.workspace_gib,
                                cache)
        print(f"wrote {os.path.abspath(path)} (TensorRT {trt.__version__})")
    return 0


def main(argv=None) -> int:
    return cli.run(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
