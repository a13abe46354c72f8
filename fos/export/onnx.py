"""ONNX export of the four graphs of :data:`fos.runtime.GRAPHS`, and its parity check.

The wrappers below are export-only (do not call them directly): each runs the model methods that
the torch backend runs for that graph. Every graph has a dynamic batch dimension; the head's
``bg_part`` has batch 1 (one query, broadcast over its candidates). Models without geometry get a ``geom`` input too (ignored), so every
backend has one signature. Export uses the current ``torch.export``-based exporter (``dynamo=True``).
"""
from __future__ import annotations

import copy
import logging
import os
import time
import warnings

import torch
from torch import nn

from fos.checkpoint import atomic_write_json, file_sha256 as sha256
from fos.registry import load_checkpoint
from fos.config import PreprocessCfg
from fos.preprocess import GEOMETRY_DIM
from fos.runtime import GRAPHS, OrtBackend, TorchBackend
from fos.runtime.base import GRAPH_VERSION
from fos.weights import SHIPPED, WeightsDir

log = logging.getLogger("fos.export")
OPSET = 18
TOLERANCE = {"float32": 1e-3, "float16": 5e-2}  # max |onnxruntime - torch| allowed on real images


class TeacherOnnx(nn.Module):
    def __init__(self, teacher):
        super().__init__()
        self.m = teacher

    def forward(self, composite, geom):
        feat, logit = self.m(composite, geom if self.m.cfg.geometry else None)
        return torch.sigmoid(logit), feat


class BackgroundOnnx(nn.Module):
    def __init__(self, student):
        super().__init__()
        self.m = student

    def forward(self, background, crop_box):
        roi, emb = self.m.encode_background(background, crop_box)
        return self.m.head.bg_part(roi), emb


class ForegroundOnnx(nn.Module):
    def __init__(self, student):
        super().__init__()
        self.m = student

    def forward(self, foreground):
        fmap, emb = self.m.encode_foreground(foreground)
        return self.m.head.fg_part(fmap), emb


class HeadOnnx(nn.Module):
    def __init__(self, student):
        super().__init__()
        self.m = student

    def forward(self, bg_part, fg_part, geom):
        return torch.sigmoid(self.m.head.score(bg_part, fg_part, geom if self.m.cfg.geometry else None))


def graph_specs(teacher, student, pcfg: PreprocessCfg, batch: int = 2) -> dict:
    """name -> (wrapper, example inputs (ordered dict), output names); no teacher graph when ``teacher`` is None."""
    s = pcfg.image_size
    d, a = student.head.part_dim, student.cfg.align_size
    g = torch.Generator().manual_seed(0)
    img = lambda: torch.rand(batch, 3, s, s, generator=g) * 2 - 1  # noqa: E731
    box = torch.tensor([[20.0, 30.0, 180.0, 200.0]] * batch)
    inputs = {
        "teacher": {"composite": img(), "geom": torch.rand(batch, GEOMETRY_DIM, generator=g)},
        "student_bg": {"background": img(), "crop_box": box},
        "student_fg": {"foreground": img()},
        "student_head": {"bg_part": torch.rand(1, d, a, a, generator=g), "fg_part": torch.rand(batch, d, a, a, generator=g),
                         "geom": torch.rand(batch, GEOMETRY_DIM, generator=g)},
    }
    wrappers = {"teacher": TeacherOnnx(teacher) if teacher is not None else None, "student_bg": BackgroundOnnx(student),
                "student_fg": ForegroundOnnx(student), "student_head": HeadOnnx(student)}
    out = {}
    for name, (in_names, out_names) in GRAPHS.items():
        assert tuple(inputs[name]) == in_names, name  # the runtime's contract
        if wrappers[name] is not None:
            out[name] = (wrappers[name], inputs[name], list(out_names))
    return out


def _export_one(wrapper: nn.Module, inputs: dict, outputs: list[str], path: str, fp16: bool) -> None:
    """torch.onnx.export (dynamo) to a temporary name, onnx.checker, then rename (earlier files stay on failure)."""
    import onnx

    wrapper = copy.deepcopy(wrapper).eval()
    args = tuple(inputs.values())
    if fp16:
        wrapper = wrapper.half()
        args = tuple(x.half() for x in args)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # bg_part is one query's half (batch 1) broadcast over the candidates: a dynamic batch of its own
    # would make the exporter assume it equals the candidates' batch (broadcasting cannot be traced)
    dyn = {name: (None if name == "bg_part" else {0: batch}) for name in inputs}
    tmp = path + ".tmp"
    # the exporter's INFO chatter ("torchvision is not installed. Skipping torchvision::nms", optimizer passes)
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        # and its warnings about torch's own internals (LeafSpec deprecation, unused axis names), one per
        # graph, which scrolled the app's first start; they say nothing about our graphs
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            torch.onnx.export(wrapper, args, tmp, input_names=list(inputs), output_names=outputs,
                              dynamic_shapes=dyn, opset_version=OPSET, dynamo=True, external_data=False,
                              verbose=False)
        onnx.checker.check_model(onnx.load(tmp), full_check=True)
        os.replace(tmp, path)
    finally:
        for q, lv in zip(quiet, levels):
            q.setLevel(lv)
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_onnx(weights: str | WeightsDir = SHIPPED, out: str | None = None, fp16_too: bool = True,
                progress: bool = True) -> dict:
    """Export the student graphs and, when ``<weights>/teacher.safetensors`` exists, the teacher's
    (float32, and float16 when ``fp16_too``) into ``out`` (default ``<weights>/onnx``); write ``manifest.json``."""
    w = weights if isinstance(weights, WeightsDir) else WeightsDir(weights)
    out = out or w.onnx
    teacher = load_checkpoint(w.teacher, model_name="teacher") if w.has("teacher") else None
    student = load_checkpoint(w.student, model_name="student")
    pcfg = student.preprocess_cfg
    os.makedirs(out, exist_ok=True)
    specs = graph_specs(teacher, student, pcfg)
    src = {"student": {"path": os.path.abspath(w.student), "sha256": w.student_sha256}}
    if teacher is not None:
        src["teacher"] = {"path": os.path.abspath(w.teacher), "sha256": w.teacher_sha256}
    manifest = {"opset": OPSET, "graph_version": GRAPH_VERSION, "preprocess_cfg": pcfg.__dict__, "source_weights": src, "graphs": {},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    from tqdm import tqdm

    jobs = [(n, p) for n in specs for p in (("float32", "float16") if fp16_too else ("float32",))]
    for name, precision in tqdm(jobs, desc="export onnx", unit="graph", disable=not progress):
        wrapper, inputs, outputs = specs[name]
        fname = f"{name}.onnx" if precision == "float32" else f"{name}_fp16.onnx"
        path = os.path.join(out, fname)
        _export_one(wrapper, inputs, outputs, path, precision == "float16")
        manifest["graphs"][f"{name}:{precision}"] = {
            "file": fname, "precision": precision, "sha256": sha256(path),
            "inputs": {k: ["batch" if i == 0 and k != "bg_part" else s for i, s in enumerate(v.shape)]
                       for k, v in inputs.items()},
            "outputs": outputs, "source": "teacher" if name == "teacher" else "student"}
    atomic_write_json(os.path.join(out, "manifest.json"), manifest)
    log.info("ONNX graphs and manifest.json written to %s", os.path.abspath(out))
    return manifest


def real_photos(data_root: str | None, n: int, what: str) -> list[str]:
    """``n`` real photos for a parity check: msrc-fos test photos when ``data_root`` has ``photos/``,
    else the app's examples (the inpainting and referring graphs' checks)."""
    paths = []
    if data_root and os.path.isdir(os.path.join(data_root, "photos")):
        from fos.data.photos import load_photos

        paths = [ph.path for ph in load_photos(data_root, "test")[:n]]
    if not paths:
        from fos.examples import load_examples

        paths = [e["image"] for e in load_examples()[:n]]
    if not paths:
        raise RuntimeError(f"no real photos found for the {what} parity check (pass --data DATASET_ROOT)")
    return paths


def finish_graph(out: str, meta: dict, weights: str, what: str, parity: dict | None = None,
                 unit: str = "samples") -> dict:
    """The tail of a side graph's export (the inpainter's, the referrer's): with ``parity``
    (``{unit: n, "max_abs_diff": d, "tolerance": t}``) past its tolerance, the sidecar is written without
    a source, so the graph is never served, and RuntimeError says so; else the sidecar binds the graph to
    the sha256 of ``weights``. Returns the sidecar's content."""
    from fos.checkpoint import sidecar

    if parity is not None:
        meta["parity"] = parity
        if parity["max_abs_diff"] > parity["tolerance"]:
            atomic_write_json(sidecar(out), meta)  # no source_sha256: never served
            raise RuntimeError(f"{what} graph differs from torch by {parity['max_abs_diff']:.2e} "
                               f"(> {parity['tolerance']}) on real {unit}")
    meta["source_sha256"] = sha256(weights)
    atomic_write_json(sidecar(out), meta)
    log.info("%s graph written to %s%s", what, out,
             f" (parity {parity['max_abs_diff']:.2e} on {parity[unit]} real {unit})" if parity else "")
    return meta


def real_inputs(data_root: str | None, n: int = 4, pcfg: PreprocessCfg | None = None) -> dict:
    """Real test inputs for parity checks: ``n`` backgrounds with their boxes and ``n`` foregrounds.

    From the S-FOSD test set of ``data_root`` when given, else from the app's example library.
    """
    import numpy as np

    from fos.data import load_test
    from fos.composite import teacher_input
    from fos.preprocess import (
        foreground_colour, foreground_input, geometry_batch, load_image, norm_to_pixel_box, prepare_background,
    )

    pcfg = pcfg or PreprocessCfg()
    pairs = []
    if data_root and os.path.isdir(data_root):
        ts = load_test(data_root, "sfosd")
        for cs in ts.categories.values():
            for q, fg in zip(cs.queries, cs.fg_paths):
                img = load_image(q.bg_path)
                pairs.append((img, norm_to_pixel_box(q.bbox, *img.size), load_image(fg)))
                break
            if len(pairs) >= n:
                break
    else:
        from fos.examples import example_pairs

        pairs = example_pairs(n)
    if not pairs:
        raise RuntimeError("no real images found for the parity check (pass --data DATASET_ROOT)")
    bgs = [prepare_background(img, box, pcfg) for img, box, _ in pairs]
    return {
        "background": np.stack([b.tensor.numpy() for b in bgs]),
        "crop_box": np.stack([b.crop_box_net.numpy() for b in bgs]),
        "foreground": np.stack([foreground_input(f, pcfg).numpy() for _, _, f in pairs]),
        "composite": np.stack([teacher_input(b, f, pcfg).numpy() for b, (_, _, f) in zip(bgs, pairs)]),
        "geom": np.concatenate([geometry_batch(b.box, [f.size], b.ring_colour, [foreground_colour(f)])
                                for b, (_, _, f) in zip(bgs, pairs)]),
    }


def parity(weights: str | WeightsDir, onnx_dir: str, precision: str, inputs: dict) -> dict[str, float]:
    """Max |onnxruntime - torch| per graph output on real inputs (``real_inputs``)."""
    import numpy as np

    tb, ob = TorchBackend(weights), OrtBackend(weights, onnx_dir, precision)
    out = {}
    bg = [tb.student_bg(inputs["background"], inputs["crop_box"]), ob.student_bg(inputs["background"], inputs["crop_box"])]
    fg = [tb.student_fg(inputs["foreground"]), ob.student_fg(inputs["foreground"])]
    for name, (a, b) in (("student_bg.bg_part", (bg[0][0], bg[1][0])), ("student_bg.emb", (bg[0][1], bg[1][1])),
                         ("student_fg.fg_part", (fg[0][0], fg[1][0])), ("student_fg.emb", (fg[0][1], fg[1][1]))):
        out[name] = float(np.abs(a - b).max())
    g, bgp, fgp = inputs["geom"], bg[0][0][:1], fg[0][0]
    out["student_head.score"] = float(np.abs(tb.student_head(bgp, fgp, g) - ob.student_head(bgp, fgp, g)).max())
    if tb.wdir.has("teacher"):
        out["teacher.score"] = float(np.abs(tb.teacher(inputs["composite"], g) - ob.teacher(inputs["composite"], g)).max())
    return out


def export_and_check(weights: str | WeightsDir = SHIPPED, out: str | None = None, fp16: bool = False,
                     data: str | None = None, check: bool = True, progress: bool = True) -> dict:
    """Export, then check parity on real images (msrc-fos test when ``data`` is given, else the app's
    examples); parity goes into the manifest. Raises RuntimeError past :data:`TOLERANCE`."""
    from fos.runtime import have

    w = weights if isinstance(weights, WeightsDir) else WeightsDir(weights)
    out = out or w.onnx
    manifest = export_onnx(w, out, fp16_too=fp16, progress=progress)
    if not check:
        return manifest
    if not have("onnxruntime"):
        log.warning("onnxruntime is not installed: parity check skipped (`pip install onnxruntime`)")
        return manifest
    inputs = real_inputs(data if data and os.path.isdir(data) else None)
    manifest["parity"] = {}
    bad = []
    for precision in ("float32", "float16") if fp16 else ("float32",):
        diffs = parity(w, out, precision, inputs)
        manifest["parity"][precision] = {"images": len(inputs["background"]), "max_abs_diff": diffs,
                                         "tolerance": TOLERANCE[precision]}
        bad += [f"{precision} {k} {v:.2e}" for k, v in diffs.items() if v > TOLERANCE[precision]]
    atomic_write_json(os.path.join(out, "manifest.json"), manifest)
    if bad:
        raise RuntimeError("parity check failed, exported graphs differ from torch beyond tolerance: " + ", ".join(bad))
    return manifest
