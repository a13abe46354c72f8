#!/usr/bin/env python
"""Build TensorRT engines from the exported ONNX graphs (run it on the GPU that will serve them).

    python export/to_trt.py --onnx weights/onnx --out weights/trt [--fp16] \
        [--min-batch 1] [--opt-batch 8] [--max-batch 256] [--timing-cache weights/trt/timing.cache]

One optimization profile per dynamic input (batch from --min-batch to --max-batch; ``bg_part`` is
always batch 1). ``--fp16``: TensorRT 10 sets the FP16 builder flag on the float32 graph; TensorRT 11
(no such flag) builds the ``*_fp16.onnx`` graph as a strongly typed network. Each engine is written
with a JSON of TensorRT version, GPU name, compute capability, precision and shapes. Engines only
run on the same GPU model and TensorRT version.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fos.runtime import BackendError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", default="weights/onnx", help="folder written by export/to_onnx.py")
    p.add_argument("--out", default="weights/trt")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument("--opt-batch", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--workspace-gib", type=float, default=4.0)
    p.add_argument("--timing-cache", default=None, help="default <out>/timing.cache")
    p.add_argument("--graphs", default="teacher,student_bg,student_fg,student_head")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        from fos.trt import build_engine, require_trt

        trt = require_trt()
        cache = a.timing_cache or os.path.join(a.out, "timing.cache")
        from tqdm import tqdm

        for g in tqdm(a.graphs.split(","), desc="build engines", unit="engine"):
            path = build_engine(a.onnx, g, a.out, a.fp16, a.min_batch, a.opt_batch, a.max_batch, a.workspace_gib, cache)
            print(f"wrote {os.path.abspath(path)} (TensorRT {trt.__version__})")
    except BackendError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
