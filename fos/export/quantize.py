"""int8 graphs: ONNX Runtime static quantization of the exported float32 graphs, calibrated on real images.

``python export/to_onnx.py --int8`` runs it after the float32 export. Each graph of :data:`INT8_GRAPHS`
is quantized (QDQ format, int8 weights per output channel, uint8 activations) with activation ranges
calibrated on real training backgrounds and cutouts of ``--data`` (never its test split), made by the
one preprocessing path (:mod:`fos.preprocess`); the head's calibration inputs are the float32
encoders' outputs on those images. The int8 files are written next to the float32 ones as
``<graph>_int8.onnx`` and listed in the manifest as ``<graph>:int8`` with ``shipped: false``; only a
ranking check (:func:`fos.evaluate.parity.int8_gate`, run by the command) marks the ones whose
Recall@1 stays within :data:`RECALL_TOLERANCE` of float32 as shipped. ``OrtBackend(precision="int8")``
runs the shipped int8 graphs and float32 for the rest.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from fos.checkpoint import atomic_write_json, file_sha256
from fos.errors import InputError
from fos.runtime.base import GRAPHS, read_manifest

log = logging.getLogger("fos.export")
INT8_GRAPHS = ("student_bg", "student_fg", "student_head", "teacher")
RECALL_TOLERANCE = 0.005  # an int8 graph ships only where Recall@1 stays this close to float32's


def calibration_feeds(data: str | None, n: int, backend) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per graph, ``n`` real inputs (batches of up to 8) from the training split of the FOSD root ``data``:
    backgrounds with their boxes, their own cutouts, and the composites of the two. ``backend`` (the
    float32 graphs) supplies the head's inputs."""
    from fos.composite import teacher_input
    from fos.data import load_train
    from fos.preprocess import (
        foreground_colour, foreground_input, geometry_batch, load_image, norm_to_pixel_box, prepare_background,
    )

    if not data or not os.path.isdir(data):
        raise InputError(f"int8 calibration needs real training images: pass --data with a FOSD dataset root "
                         f"(e.g. ../shared/data/msrc-fos), got {data!r}")
    if n < 1:
        raise InputError(f"--calibration must be at least 1 image, got {n}")
    records = load_train(data)
    step = max(1, len(records) // n)
    records = records[::step][:n]
    pcfg = backend.preprocess_cfg
    feeds: dict[str, list[dict]] = {g: [] for g in GRAPHS}
    for s in range(0, len(records), 8):
        chunk = records[s:s + 8]
        bgs, fgs = [], []
        for r in chunk:
            img = load_image(r.bg_path, what="background")
            bgs.append(prepare_background(img, norm_to_pixel_box(r.bbox, *img.size), pcfg))
            fgs.append(load_image(r.fg_path, what="foreground"))
        background = np.stack([b.tensor.numpy() for b in bgs])
        crop_box = np.stack([b.crop_box_net.numpy() for b in bgs])
        foreground = np.stack([foreground_input(f, pcfg).numpy() for f in fgs])
        geom = np.concatenate([geometry_batch(b.box, [f.size], b.ring_colour, [foreground_colour(f)])
                               for b, f in zip(bgs, fgs)])
        feeds["student_bg"].append({"background": background, "crop_box": crop_box})
        feeds["student_fg"].append({"foreground": foreground})
        feeds["teacher"].append({"composite": np.stack([teacher_input(b, f, pcfg).numpy() for b, f in zip(bgs, fgs)]),
                                 "geom": geom})
        bg_part, _ = backend.student_bg(background, crop_box)
        fg_part, _ = backend.student_fg(foreground)
        for i in range(len(chunk)):  # the head's bg_part has batch 1: one query against the chunk's cutouts
            feeds["student_head"].append({"bg_part": bg_part[i:i + 1], "fg_part": fg_part, "geom": geom})
    return feeds


class _Feeds:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over a list of feeds."""

    def __init__(self, feeds: list[dict]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def quantize_graphs(onnx_dir: str, feeds: dict[str, list[dict]], graphs=INT8_GRAPHS, progress: bool = True) -> dict:
    """Quantize the float32 graphs of ``onnx_dir`` into ``<graph>_int8.onnx`` and list them in its manifest
    (``shipped: false`` until :func:`mark_shipped`); returns the manifest."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from tqdm import tqdm

    reader_cls = type("Feeds", (_Feeds, CalibrationDataReader), {})
    m = read_manifest(onnx_dir)
    for name in tqdm([g for g in graphs if f"{g}:float32" in m["graphs"]], desc="quantize int8", unit="graph",
                     disable=not progress):
        src = os.path.join(onnx_dir, m["graphs"][f"{name}:float32"]["file"])
        fname = f"{name}_int8.onnx"
        dst = os.path.join(onnx_dir, fname)
        with tempfile.TemporaryDirectory(dir=onnx_dir) as tmp:
            pre = os.path.join(tmp, "pre.onnx")
            quant_pre_process(src, pre, skip_symbolic_shape=True)
            out = os.path.join(tmp, fname)
            quantize_static(pre, out, reader_cls(feeds[name]), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            os.replace(out, dst)  # the float32 graph and earlier int8 files stay until this rename
        entry = dict(m["graphs"][f"{name}:float32"])
        entry.update(file=fname, precision="int8", sha256=file_sha256(dst), shipped=False,
                     calibration={"batches": len(feeds[name])})
        m["graphs"][f"{name}:int8"] = entry
        atomic_write_json(os.path.join(onnx_dir, "manifest.json"), m)
    log.info("int8 graphs written to %s (not served until the ranking check passes)", os.path.abspath(onnx_dir))
    return m


def mark_shipped(onnx_dir: str, gate: dict[str, dict]) -> dict:
    """Record the ranking check's result per int8 graph (``gate[graph]["shipped"]``) in the manifest."""
    m = read_manifest(onnx_dir)
    for name, result in gate.items():
        key = f"{name}:int8"
        if key in m["graphs"]:
            m["graphs"][key].update(shipped=bool(result["shipped"]), ranking_check=result)
    atomic_write_json(os.path.join(onnx_dir, "manifest.json"), m)
    return m
