#!/usr/bin/env python
"""Export the teacher, the student (background encoder, foreground encoder, head) and, when
``<weights>/inpaint.safetensors`` exists, the SPL inpainting generator (``inpaint.onnx``) and, when
``<weights>/refer.safetensors`` exists, the referring segmenter (``refer.onnx``) to ONNX.

    python export/to_onnx.py [--weights weights/] [--out weights/onnx] [--fp16] [--data DATASET_ROOT]

Each graph has a dynamic batch dimension and passes ``onnx.checker``. ``--fp16`` adds float16 variants
(``*_fp16.onnx``, needed for TensorRT 11). ``--int8`` adds ONNX Runtime int8 graphs (``*_int8.onnx``,
static quantization calibrated on ``--calibration`` training images of ``--data``) and ships each one
only where the msrc-fos ranking check keeps Recall@1 within 0.005 of float32 (``fos.evaluate.parity``). A ``manifest.json`` records inputs, outputs, shapes, opset
and the sha256 of the source weights. The export then checks itself: max |onnxruntime - torch| on
real images, printed and stored in the manifest. Files are written to temporary names and renamed,
so a failed export leaves earlier files intact.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from fos import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="weights", help="folder with teacher.safetensors and student.safetensors")
    p.add_argument("--out", default=None, help="output folder (default <weights>/onnx)")
    p.add_argument("--fp16", action="store_true", help="also export float16 graphs")
    p.add_argument("--data", default="../shared/data/msrc-fos", help="dataset root with real test images for the parity check")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    p.add_argument("--int8", action="store_true", help="also quantize to int8 graphs, each shipped only if it ranks "
                                                        "as float32 does (Recall@1 within 0.005 on --data's test split)")
    p.add_argument("--calibration", type=cli.positive_int, default=64,
                   help="--int8: training images of --data that calibrate the activation ranges")
    cli.add_threads(p)
    return p


def run(a) -> int:
    from fos.errors import InputError
    from fos.runtime import have

    if a.int8 and not os.path.isdir(os.path.join(a.data or "", "train")):
        raise InputError(f"--int8 calibrates on real training images: pass --data with a FOSD dataset root that "
                         f"has train/ (e.g. ../shared/data/msrc-fos), got --data {a.data!r}")

    if not have("onnx"):
        raise RuntimeError("onnx is not installed: `pip install onnx onnxscript onnxruntime`")
    from fos.export.onnx import export_and_check
    from fos.weights import WeightsDir

    w = WeightsDir(a.weights)
    out = a.out or w.onnx
    m = export_and_check(w, out, a.fp16, a.data, not a.no_check)
    print(f"wrote {len(m['graphs'])} graphs and manifest.json to {os.path.abspath(out)}")
    for precision, p in m.get("parity", {}).items():
        print(f"parity {precision} on {p['images']} real images (max |onnxruntime - torch|, tolerance {p['tolerance']}):")
        for k, v in p["max_abs_diff"].items():
            print(f"  {k:24s} {v:.2e}")
    print(json.dumps({k: v["file"] for k, v in m["graphs"].items()}, indent=1))
    if a.int8:
        int8(w, out, a.data, a.calibration)
    from fos.export.inpaint import export_inpainter
    from fos.export.refer import export_referrer

    for file, graph, what, unit, export in (("inpaint", "inpaint", "inpainting", "crops", export_inpainter),
                                            ("refer", "refer", "referring", "queries", export_referrer)):
        src = os.path.join(a.weights, f"{file}.safetensors")
        if not os.path.isfile(src):
            continue
        path = os.path.join(out, f"{graph}.onnx")
        par = export(src, path, a.data, not a.no_check).get("parity")
        print(f"wrote the {what} graph {path}" + (f" (parity {par['max_abs_diff']:.2e} on {par[unit]} real "
                                                  f"{unit}, tolerance {par['tolerance']})" if par else ""))
    return 0


def int8(w, out: str, data: str, calibration: int) -> None:
    """Quantize, run the ranking check on ``data``'s test split, and record which int8 graphs ship."""
    from fos.data import load_test
    from fos.evaluate.parity import int8_gate
    from fos.export.quantize import calibration_feeds, mark_shipped, quantize_graphs
    from fos.runtime import OrtBackend

    feeds = calibration_feeds(data, calibration, OrtBackend(w, out, "float32"))
    quantize_graphs(out, feeds)
    gate = int8_gate(w, out, load_test(data, "sfosd"))
    mark_shipped(out, gate)
    print(f"int8 ranking check on {data} (loose boxes, 5 seeds; ships if Recall@1 stays within 0.005 of float32):")
    print(f"  {'graph':14s} {'R@1 float32':>11s} {'R@1 int8':>9s} {'top-5 kept':>10s}  shipped")
    for g, r in gate.items():
        print(f"  {g:14s} {r['recall@1_float32']:11.3f} {r['recall@1_int8']:9.3f} {r['top5_overlap']:10.3f}  "
              f"{'yes' if r['shipped'] else 'no'}" + ("" if "together" not in r else
                                                       f" (with the others: R@1 {r['together']['recall@1_int8']:.3f})"))


def main(argv=None) -> int:
    return cli.run(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
