#!/usr/bin/env python
"""Export teacher and student (background encoder, foreground encoder, head) to ONNX.

    python export/to_onnx.py [--weights weights/] [--out weights/onnx] [--fp16] [--data DATASET_ROOT]

Each graph has a dynamic batch dimension and passes ``onnx.checker``. ``--fp16`` adds float16 variants
(``*_fp16.onnx``, needed for TensorRT 11). A ``manifest.json`` records inputs, outputs, shapes, opset
and the sha256 of the source weights. The export then checks itself: max |onnxruntime - torch| on
real images, printed and stored in the manifest. Files are written to temporary names and renamed,
so a failed export leaves earlier files intact.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fos.checkpoint import WeightsError, atomic_write_json  # noqa: E402
from fos.runtime import have  # noqa: E402

TOLERANCE = {"float32": 1e-3, "float16": 5e-2}  # max abs difference allowed on real images


def run_export(weights: str = "weights", out: str = "weights/onnx", fp16: bool = False,
               data: str | None = "../shared/data/msrc-fos", check: bool = True) -> dict:
    from fos.export import export_onnx, parity, real_inputs

    manifest = export_onnx(weights, out, fp16_too=fp16)
    print(f"wrote {len(manifest['graphs'])} graphs and manifest.json to {os.path.abspath(out)}")
    if check:
        if not have("onnxruntime"):
            print("onnxruntime is not installed: parity check skipped (`pip install onnxruntime`)")
            return manifest
        inputs = real_inputs(data if data and os.path.isdir(data) else None)
        manifest["parity"] = {}
        ok = True
        for precision in ("float32", "float16") if fp16 else ("float32",):
            diffs = parity(weights, out, precision, inputs)
            manifest["parity"][precision] = {"images": len(inputs["background"]), "max_abs_diff": diffs,
                                             "tolerance": TOLERANCE[precision]}
            print(f"parity {precision} on {len(inputs['background'])} real images (max |onnxruntime - torch|):")
            for k, v in diffs.items():
                flag = "" if v <= TOLERANCE[precision] else f"  > tolerance {TOLERANCE[precision]}"
                ok &= v <= TOLERANCE[precision]
                print(f"  {k:24s} {v:.2e}{flag}")
        atomic_write_json(os.path.join(out, "manifest.json"), manifest)
        if not ok:
            raise SystemExit("parity check failed: exported graphs differ from torch beyond tolerance")
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="weights", help="folder with teacher.safetensors and student.safetensors")
    p.add_argument("--out", default="weights/onnx")
    p.add_argument("--fp16", action="store_true", help="also export float16 graphs")
    p.add_argument("--data", default="../shared/data/msrc-fos", help="dataset root with real test images for the parity check")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not have("onnx"):
        print("error: onnx is not installed: `pip install onnx onnxruntime`", file=sys.stderr)
        return 2
    try:
        m = run_export(a.weights, a.out, a.fp16, a.data, not a.no_check)
    except (WeightsError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v["file"] for k, v in m["graphs"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
