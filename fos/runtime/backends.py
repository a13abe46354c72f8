"""Inference backends with one interface: ``torch``, ``onnxruntime`` and ``tensorrt``.

A backend runs graphs; it never exports or writes files (export: :mod:`fos.export`; preparing the
app's graphs and library: :mod:`fos.bootstrap`). Its methods are named after the four graphs of
:data:`GRAPHS` and take and return numpy float32 arrays:

==============  ===========================================  ==========================================
method / graph  inputs                                       outputs
==============  ===========================================  ==========================================
student_bg      background (B,3,S,S), crop_box (B,4)         bg_part (B,D,a,a), emb (B,E)
student_fg      foreground (B,3,S,S)                         fg_part (B,D,a,a), emb (B,E)
student_head    bg_part (1,D,a,a), fg_part (B,D,a,a),        score (B,)
                geom (B,17)
teacher         composite (B,3,S,S), geom (B,17)             score (B,) (the graph also returns feat)
==============  ===========================================  ==========================================

``bg_part``/``fg_part`` are the two halves of the student head's first conv (``DistillHead``): a
library caches ``fg_part``, a query computes ``bg_part`` once. ``geom`` is
:func:`fos.preprocess.geometry_batch`. Scores are probabilities (sigmoid of the logit).

``get_backend("auto")`` picks by what is installed and present: with a GPU, TensorRT engines, then ONNX
Runtime with its CUDA provider, then torch on CUDA; without one, ONNX Runtime when current graphs
exist, else torch. It logs what it picked and why. onnxruntime and tensorrt are imported lazily.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from fos.checkpoint import WeightsError, stale_source, weights_sha256
from fos.registry import load_checkpoint
from fos.config import PreprocessCfg
from fos.runtime.base import (
    BACKENDS, EXPORT_HINT, GRAPHS, Backend, BackendError, GraphBackend, as_weights, have, manifest_problem,
    read_manifest,
)
from fos.threads import ort_session
from fos.weights import SHIPPED, WeightsDir

log = logging.getLogger("fos.runtime")
PRECISIONS = ("float32", "float16", "int8")
__all__ = ["BACKENDS", "GRAPHS", "PRECISIONS", "Backend", "BackendError", "GraphBackend", "OrtBackend", "TorchBackend",
           "as_weights", "get_backend", "have", "onnx_is_current", "onnx_problem", "read_manifest"]

class TorchBackend(Backend):
    """The PyTorch models, loaded lazily from ``weights`` (or passed in as ``student`` / ``teacher``)."""

    name = "torch"

    def __init__(self, weights: str | WeightsDir = SHIPPED, device: str = "cpu", half: bool = False,
                 student=None, teacher=None):
        self.wdir = as_weights(weights)
        self._s, self._t = student, teacher
        self._moved: set[str] = set()  # models already loaded and moved to device/dtype
        self.device = torch.device(device)
        self.dtype = torch.float16 if half else torch.float32
        first = student if student is not None else teacher
        if first is None:  # load one model now: its config (and the student's sha) identify the weights
            first = self.s if self.wdir.has("student") or not self.wdir.has("teacher") else self.t
        if self._s is not None:
            self.student_sha256 = weights_sha256(self._s)
        self.preprocess_cfg = getattr(first, "preprocess_cfg", PreprocessCfg())
        self.student_path = os.path.abspath(self.wdir.student)
        self.description = f"torch ({self.device.type}, {'float16' if half else 'float32'})"

    def _ready(self, attr: str, path: str, kind: str):
        """The model in ``attr``, loaded from ``path`` if needed and moved to device/dtype once."""
        if attr not in self._moved:
            m = getattr(self, attr)
            m = (m if m is not None else load_checkpoint(path, model_name=kind)).to(self.device, self.dtype).eval()
            setattr(self, attr, m)
            self._moved.add(attr)
        return getattr(self, attr)

    @property
    def s(self):
        return self._ready("_s", self.wdir.student, "student")

    @property
    def t(self):
        return self._ready("_t", self.wdir.teacher, "teacher")

    def _in(self, x):
        return torch.as_tensor(np.asarray(x), device=self.device).to(self.dtype)

    def _out(self, *xs):
        out = tuple(x.float().cpu().numpy() for x in xs)
        return out if len(out) > 1 else out[0]

    @torch.inference_mode()
    def student_bg(self, background, crop_box):
        s = self.s
        roi, emb = s.encode_background(self._in(background), torch.as_tensor(np.asarray(crop_box), device=self.device).float())
        return self._out(s.head.bg_part(roi), emb)

    @torch.inference_mode()
    def student_fg(self, foreground):
        s = self.s
        fmap, emb = s.encode_foreground(self._in(foreground))
        return self._out(s.head.fg_part(fmap), emb)

    @torch.inference_mode()
    def student_head(self, bg_part, fg_part, geom):
        s = self.s
        logit = s.head.score(self._in(bg_part), self._in(fg_part), self._in(geom) if s.cfg.geometry else None)
        return self._out(torch.sigmoid(logit))

    @torch.inference_mode()
    def teacher(self, composite, geom):
        t = self.t
        _, logit = t(self._in(composite), self._in(geom) if t.cfg.geometry else None)
        return self._out(torch.sigmoid(logit))


def onnx_problem(weights: str | WeightsDir, onnx_dir: str | None = None, precision: str = "float32") -> str:
    """Why the graphs in ``onnx_dir`` (default ``<weights>/onnx``) cannot serve ``weights``; "" when they can."""
    w = as_weights(weights)
    onnx_dir = onnx_dir or w.onnx
    try:
        m = read_manifest(onnx_dir)
    except BackendError as e:
        return str(e)
    src = m.get("source_weights", {})
    for kind, path in (("student", w.student), ("teacher", w.teacher)):
        if w.has(kind) and (kind == "student" or kind in src):
            why = stale_source(src.get(kind, {}).get("sha256"), getattr(w, f"{kind}_sha256"),
                               f"the graphs in {onnx_dir}", path)
            if why:
                return why
    if manifest_problem(m, onnx_dir):
        return manifest_problem(m, onnx_dir)
    missing = [g["file"] for k, g in m["graphs"].items() if k.endswith(precision)
               and not os.path.isfile(os.path.join(onnx_dir, g["file"]))]
    if missing:
        return f"{onnx_dir} lacks {', '.join(missing)}"
    return ""


def onnx_is_current(weights: str | WeightsDir, onnx_dir: str | None = None, precision: str = "float32") -> bool:
    """True when ``onnx_dir`` holds every graph of ``precision``, exported from the current weights."""
    return not onnx_problem(weights, onnx_dir, precision)


class OrtBackend(GraphBackend):
    name = "onnxruntime"

    def __init__(self, weights: str | WeightsDir = SHIPPED, onnx_dir: str | None = None, precision: str = "float32",
                 providers: list[str] | None = None, threads: int = 0, int8_graphs: set[str] | None = None):
        """``precision``: float32, float16 or int8. With int8, the int8 graphs that passed the export's
        ranking check run (``int8_graphs`` names others, for that check) and float32 the rest."""
        if precision not in PRECISIONS:
            raise BackendError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        if not have("onnxruntime"):
            raise BackendError("onnxruntime is not installed: `pip install onnxruntime` (CPU) or onnxruntime-gpu")
        import onnxruntime as ort

        w = as_weights(weights)
        onnx_dir = onnx_dir or w.onnx
        problem = onnx_problem(w, onnx_dir, "float32" if precision == "int8" else precision)
        if problem:
            raise BackendError(f"{problem}: " + EXPORT_HINT.format(w=w.root, o=onnx_dir)
                               + (" --fp16" if precision == "float16" else ""))
        m = read_manifest(onnx_dir)
        self.student_sha256 = m["source_weights"]["student"]["sha256"]
        self.preprocess_cfg = PreprocessCfg.from_dict(m["preprocess_cfg"])
        avail = ort.get_available_providers()
        self.providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
        self.precision = precision
        self.np_dtype = np.float16 if precision == "float16" else np.float32
        shipped = {k.split(":")[0] for k, g in m["graphs"].items() if k.endswith(":int8") and g.get("shipped")}
        self.int8 = (shipped if int8_graphs is None else set(int8_graphs)) if precision == "int8" else set()
        missing = sorted(g for g in self.int8 if f"{g}:int8" not in m["graphs"])
        if missing:
            raise BackendError(f"{onnx_dir} has no int8 graph of {', '.join(missing)}: export them with "
                               "`python export/to_onnx.py --int8`")
        self.threads = threads
        self._sessions: dict[str, object] = {}
        self._dir, self._m = onnx_dir, m
        self.onnx_dir = os.path.abspath(onnx_dir)
        self.student_path = m["source_weights"]["student"].get("path", "")
        kinds = precision if precision != "int8" else \
            f"int8 {'+'.join(sorted(self.int8)) or 'none shipped'}, float32 the rest"
        self.description = f"onnxruntime {ort.__version__} ({self.providers[0]}, {kinds})"

    def session(self, graph: str):
        if graph not in self._sessions:
            key = f"{graph}:{'int8' if graph in self.int8 else 'float32'}" if self.precision == "int8" else \
                f"{graph}:{self.precision}"
            if key not in self._m["graphs"]:
                raise BackendError(f"{self._dir} has no {key} graph: re-export with `python export/to_onnx.py`")
            path = os.path.join(self._dir, self._m["graphs"][key]["file"])
            self._sessions[graph] = ort_session(path, self.providers, self.threads)
        return self._sessions[graph]

    def _run(self, graph: str, **inputs):
        feed = {k: np.ascontiguousarray(v, dtype=self.np_dtype) for k, v in inputs.items()}
        outs = self.session(graph).run(None, feed)
        outs = tuple(o.astype(np.float32) for o in outs)
        return outs if len(outs) > 1 else outs[0]


def get_backend(name: str = "auto", weights: str | WeightsDir = SHIPPED, **kw) -> Backend:
    """``torch``, ``onnxruntime``, ``tensorrt`` or ``auto`` over the weights folder ``weights``.

    ``auto``: with a GPU, TensorRT, then ONNX Runtime with its CUDA provider, then torch on CUDA
    (float16); without one, ONNX Runtime when ``<weights>/onnx`` holds current graphs, else torch.
    It logs what it picked and why. Nothing is exported here (see :mod:`fos.bootstrap`).
    """
    w = as_weights(weights)
    if not os.path.isdir(w.root):
        raise WeightsError(f"weights folder {w.root} not found (it should hold student.safetensors "
                           "and teacher.safetensors)")
    if name == "torch":
        return TorchBackend(w, **kw)
    if name == "onnxruntime":
        return OrtBackend(w, **kw)
    if name == "tensorrt":
        from fos.runtime.trt import TrtBackend

        return TrtBackend(w, **kw)
    if name != "auto":
        raise BackendError(f"unknown backend {name!r}; use auto, {', '.join(BACKENDS)}")
    tried = []

    def attempt(runtime: str):
        try:
            b = get_backend(runtime, w, **kw)
            log.info("backend auto: picked %s", b.description)
            return b
        except (BackendError, WeightsError, OSError) as e:
            tried.append(f"{runtime}: {e}")
            return None

    gpu = torch.cuda.is_available()
    ort_gpu = have("onnxruntime") and "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers()
    if gpu and have("tensorrt"):
        b = attempt("tensorrt")
        if b:
            return b
    if ort_gpu:
        b = attempt("onnxruntime")
        if b:
            return b
    if gpu:  # a GPU but no GPU runtime: torch on CUDA beats onnxruntime on CPU
        b = TorchBackend(w, device="cuda", half=True)
        log.info("backend auto: picked %s (no GPU runtime ready: %s)", b.description, "; ".join(tried) or "none installed")
        return b
    if have("onnxruntime"):
        b = attempt("onnxruntime")
        if b:
            return b
    else:
        tried.append("onnxruntime: not installed")
    b = TorchBackend(w)
    log.info("backend auto: picked %s (%s)", b.description, "; ".join(tried))
    return b
