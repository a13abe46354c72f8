"""Export-only wrappers and ONNX export. These modules should not be called directly.

Four graphs, each with a dynamic batch dimension:

* ``teacher``:      composite (B,3,S,S), geom (B,3)             -> score (B,), feat (B,D,a,a)
* ``student_bg``:   background (B,3,S,S), crop_box (B,4)         -> bg_part (B,D,a,a), emb (B,E)
* ``student_fg``:   foreground (B,3,S,S)                         -> fg_part (B,D,a,a), emb (B,E)
* ``student_head``: bg_part (1|B,D,a,a), fg_part (B,D,a,a), geom (B,3) -> score (B,)

``bg_part`` / ``fg_part`` are the two halves of the head's first conv (see ``DistillHead``): the
library caches ``fg_part``, a query computes ``bg_part`` once. Models without geometry get a ``geom``
input too (ignored), so every backend has one signature.
"""
from __future__ import annotations

import copy
import logging
import os
import time
import warnings

import torch
from torch import nn

from fos.checkpoint import atomic_write_json, file_sha256 as sha256, load_checkpoint
from fos.config import PreprocessCfg
from fos.preprocess import GEOMETRY_DIM

log = logging.getLogger("fos.export")
OPSET = 18
GRAPHS = ("teacher", "student_bg", "student_fg", "student_head")


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
        _, logit = self.m.head.finish(bg_part, fg_part, geom if self.m.cfg.geometry else None)
        return torch.sigmoid(logit)


def graph_specs(teacher, student, pcfg: PreprocessCfg, batch: int = 2) -> dict:
    """name -> (wrapper, example inputs (ordered dict), output names, dynamic input names)."""
    s = pcfg.image_size
    d, a = student.dim, student.cfg.align_size
    g = torch.Generator().manual_seed(0)
    img = lambda: torch.rand(batch, 3, s, s, generator=g) * 2 - 1  # noqa: E731
    box = torch.tensor([[20.0, 30.0, 180.0, 200.0]] * batch)
    return {
        "teacher": (TeacherOnnx(teacher), {"composite": img(), "geom": torch.rand(batch, GEOMETRY_DIM, generator=g)},
                    ["score", "feat"]),
        "student_bg": (BackgroundOnnx(student), {"background": img(), "crop_box": box}, ["bg_part", "emb"]),
        "student_fg": (ForegroundOnnx(student), {"foreground": img()}, ["fg_part", "emb"]),
        "student_head": (HeadOnnx(student), {"bg_part": torch.rand(1, d, a, a, generator=g),
                                             "fg_part": torch.rand(batch, d, a, a, generator=g),
                                             "geom": torch.rand(batch, GEOMETRY_DIM, generator=g)}, ["score"]),
    }


def _export_one(wrapper: nn.Module, inputs: dict, outputs: list[str], path: str, fp16: bool) -> None:
    """torch.onnx.export to a temporary name, onnx.checker, then rename (earlier files stay on failure)."""
    import onnx

    wrapper = copy.deepcopy(wrapper).eval()
    args = tuple(inputs.values())
    if fp16:
        wrapper = wrapper.half()
        args = tuple(x.half() for x in args)
    dyn = {}
    for name, x in inputs.items():
        if name == "bg_part":
            dyn[name] = {0: "bg_batch"}
        else:
            dyn[name] = {0: "batch"}
    for o in outputs:
        dyn[o] = {0: "batch"}
    tmp = path + ".tmp"
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are fixed by PreprocessCfg
            torch.onnx.export(wrapper, args, tmp, input_names=list(inputs), output_names=outputs,
                              dynamic_axes=dyn, opset_version=OPSET, dynamo=False)
        onnx.checker.check_model(onnx.load(tmp), full_check=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_onnx(weights: str = "weights", out: str = "weights/onnx", fp16_too: bool = True,
                check_images: list | None = None) -> dict:
    """Export teacher and student graphs (float32, and float16 when ``fp16_too``); write ``manifest.json``."""
    tpath, spath = os.path.join(weights, "teacher.safetensors"), os.path.join(weights, "student.safetensors")
    teacher = load_checkpoint(tpath, model_name="teacher")
    student = load_checkpoint(spath, model_name="student")
    pcfg = student.preprocess_cfg
    os.makedirs(out, exist_ok=True)
    specs = graph_specs(teacher, student, pcfg)
    src = {"teacher": {"path": os.path.abspath(tpath), "sha256": sha256(tpath)},
           "student": {"path": os.path.abspath(spath), "sha256": sha256(spath)}}
    manifest = {"opset": OPSET, "preprocess_cfg": pcfg.__dict__, "source_weights": src, "graphs": {},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    from tqdm import tqdm

    jobs = [(n, p) for n in GRAPHS for p in (("float32", "float16") if fp16_too else ("float32",))]
    for name, precision in tqdm(jobs, desc="export onnx", unit="graph"):
        wrapper, inputs, outputs = specs[name]
        fname = f"{name}.onnx" if precision == "float32" else f"{name}_fp16.onnx"
        path = os.path.join(out, fname)
        _export_one(wrapper, inputs, outputs, path, precision == "float16")
        manifest["graphs"][f"{name}:{precision}"] = {
            "file": fname, "precision": precision, "sha256": sha256(path),
            "inputs": {k: ["batch" if i == 0 else s for i, s in enumerate(v.shape)] for k, v in inputs.items()},
            "outputs": outputs, "source": "teacher" if name == "teacher" else "student"}
    atomic_write_json(os.path.join(out, "manifest.json"), manifest)
    return manifest


def real_inputs(data_root: str | None, n: int = 4, pcfg: PreprocessCfg | None = None) -> dict:
    """Real test inputs for parity checks: ``n`` backgrounds with their boxes and ``n`` foregrounds.

    From the S-FOSD test set of ``data_root`` when given, else from the app's example library.
    """
    import numpy as np

    from fos.data import load_test
    from fos.preprocess import geometry_features, load_image, norm_to_pixel_box, prepare_background, teacher_input

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
    from fos.preprocess import foreground_input

    bgs = [prepare_background(img, box, pcfg) for img, box, _ in pairs]
    return {
        "background": np.stack([b.tensor.numpy() for b in bgs]),
        "crop_box": np.stack([b.crop_box_net.numpy() for b in bgs]),
        "foreground": np.stack([foreground_input(f, pcfg).numpy() for _, _, f in pairs]),
        "composite": np.stack([teacher_input(b, f, pcfg).numpy() for b, (_, _, f) in zip(bgs, pairs)]),
        "geom": np.stack([geometry_features(b.box, f.size) for b, (_, _, f) in zip(bgs, pairs)]),
    }


def parity(weights: str, onnx_dir: str, precision: str, inputs: dict) -> dict[str, float]:
    """Max |onnxruntime - torch| per graph output on real inputs."""
    import numpy as np

    from fos.runtime import OrtBackend, TorchBackend

    tb, ob = TorchBackend(weights), OrtBackend(weights, onnx_dir, precision)
    out = {}
    tb_bg, ob_bg = tb.encode_background(inputs["background"], inputs["crop_box"]), ob.encode_background(
        inputs["background"], inputs["crop_box"])
    tb_fg, ob_fg = tb.encode_foreground(inputs["foreground"]), ob.encode_foreground(inputs["foreground"])
    for name, a, b in (("student_bg.bg_part", tb_bg[0], ob_bg[0]), ("student_bg.emb", tb_bg[1], ob_bg[1]),
                       ("student_fg.fg_part", tb_fg[0], ob_fg[0]), ("student_fg.emb", tb_fg[1], ob_fg[1])):
        out[name] = float(np.abs(a - b).max())
    g = inputs["geom"]
    out["student_head.score"] = float(np.abs(tb.head(tb_bg[0][:1], tb_fg[0], g) - ob.head(tb_bg[0][:1], tb_fg[0], g)).max())
    if os.path.exists(os.path.join(weights, "teacher.safetensors")):
        out["teacher.score"] = float(np.abs(tb.teacher(inputs["composite"], g) - ob.teacher(inputs["composite"], g)).max())
    return out
