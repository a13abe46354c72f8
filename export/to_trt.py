#!/usr/bin/env python
"""Build TensorRT engines from the exported ONNX graphs (run it on the GPU that will serve them).

    python export/to_trt.py --onnx weights/onnx --out weights/trt [--fp16] \\
        [--min-batch 1] [--opt-batch 8] [--max-batch 256] [--timing-cache weights/trt/timing.cache]

One optimization profile per dynamic input (batch from --min-batch to --max-batch; ``bg_part`` is
always batch 1). ``--fp16``: TensorRT 10 sets the FP16 builder flag on the float32 graph; TensorRT 11
(no such flag) builds the ``*_fp16.onnx`` graph as a strongly typed network. Each engine is written
with a JSON of TensorRT version, GPU name, compute capability, precision and shapes. Engines only
run on the same GPU model and TensorRT version.
"""
from __future__ import annotations

import argparse
import os
import sys

from fos import cli
from fos.runtime import GRAPHS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", default="weights/onnx", help="folder written by export/to_onnx.py")
    p.add_argument("--out", default="weights/trt")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--min-batch", type=cli.positive_int, default=1)
    p.add_argument("--opt-batch", type=cli.positive_int, default=8)
    p.add_argument("--max-batch", type=cli.positive_int, default=256)
    p.add_argument("--workspace-gib", type=float, default=4.0)
    p.add_argument("--timing-cache", default=None, help="default <out>/timing.cache")
    p.add_argument("--graphs", default=",".join(GRAPHS))
    return p


def run(a) -> int:
    from tqdm import tqdm

    from fos.export.trt import build_engine
    from fos.runtime.trt import require_trt

    trt = require_trt()
    cache = a.timing_cache or os.path.join(a.out, "timing.cache")
    for g in tqdm(a.graphs.split(","), desc="build engines", unit="engine"):
        path = build_engine(a.onnx, g, a.out, a.fp16, a.min_batch, a.opt_batch, a.max_batch, a.workspace_gib, cache)
        print(f"wrote {os.path.abspath(path)} (TensorRT {trt.__version__})")
    return 0


def main(argv=None) -> int:
    return cli.run(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
