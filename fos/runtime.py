"""Inference backends with one interface: ``torch``, ``onnxruntime`` and ``tensorrt``.

Every backend takes and returns numpy float32 arrays:

* ``encode_background(background (B,3,S,S), crop_box (B,4)) -> (bg_part (B,D,a,a), emb (B,E))``
* ``encode_foreground(foreground (B,3,S,S)) -> (fg_part (B,D,a,a), emb (B,E))``
* ``head(bg_part (1|B,D,a,a), fg_part (B,D,a,a), geom (B,3)) -> score (B,)``
* ``teacher(composite (B,3,S,S), geom (B,3)) -> score (B,)``

``get_backend("auto")`` picks by what is installed, loadable and present: with a GPU, TensorRT, then
ONNX Runtime with its CUDA provider, then torch on CUDA; without one, ONNX Runtime, then torch. It logs
what it picked and why. onnxruntime and tensorrt are imported lazily.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os

import numpy as np
import torch

from fos.checkpoint import WeightsError, file_sha256, load_checkpoint
from fos.config import PreprocessCfg
from fos.preprocess import GEOMETRY_DIM

log = logging.getLogger("fos.runtime")
BACKENDS = ("torch", "onnxruntime", "tensorrt")


class BackendError(RuntimeError):
    """A backend that is missing, stale or does not fit this machine; the message says how to fix it."""


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def weights_paths(weights: str) -> tuple[str, str]:
    return os.path.join(weights, "teacher.safetensors"), os.path.join(weights, "student.safetensors")


class Backend:
    name = "backend"
    preprocess_cfg: PreprocessCfg
    geometry: bool = True
    student_sha256: str = ""
    description = ""

    def encode_background(self, background, crop_box):
        raise NotImplementedError

    def encode_foreground(self, foreground):
        raise NotImplementedError

    def head(self, bg_part, fg_part, geom):
        raise NotImplementedError

    def teacher(self, composite, geom):
        raise NotImplementedError


class TorchBackend(Backend):
    """The PyTorch models, loaded lazily from ``weights`` (or passed in as ``student`` / ``teacher``)."""

    name = "torch"

    def __init__(self, weights: str = "weights", device: str = "cpu", half: bool = False, student=None, teacher=None):
        self._tpath, self._spath = weights_paths(weights)
        self._s, self._t = student, teacher
        self._moved: set[str] = set()  # models already loaded and moved to device/dtype
        self.device = torch.device(device)
        self.dtype = torch.float16 if half else torch.float32
        first = student if student is not None else teacher
        if first is None:  # load one model now: its config (and the student's sha) identify the weights
            if os.path.isfile(self._spath) or not os.path.isfile(self._tpath):
                first = self.s
                self.student_sha256 = file_sha256(self._spath)
            else:
                first = self.t
        elif student is not None:
            self.student_sha256 = getattr(student, "weights_sha256", "")
        self.preprocess_cfg = getattr(first, "preprocess_cfg", PreprocessCfg())
        self.geometry = first.cfg.geometry
        self.weights = os.path.abspath(self._spath)
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
        return self._ready("_s", self._spath, "student")

    @property
    def t(self):
        return self._ready("_t", self._tpath, "teacher")

    def _in(self, x):
        return torch.as_tensor(np.asarray(x), device=self.device).to(self.dtype)

    def _out(self, *xs):
        out = tuple(x.float().cpu().numpy() for x in xs)
        return out if len(out) > 1 else out[0]

    @torch.inference_mode()
    def encode_background(self, background, crop_box):
        s = self.s
        roi, emb = s.encode_background(self._in(background), torch.as_tensor(np.asarray(crop_box), device=self.device).float())
        return self._out(s.head.bg_part(roi), emb)

    @torch.inference_mode()
    def encode_foreground(self, foreground):
        s = self.s
        fmap, emb = s.encode_foreground(self._in(foreground))
        return self._out(s.head.fg_part(fmap), emb)

    @torch.inference_mode()
    def head(self, bg_part, fg_part, geom):
        s = self.s
        _, logit = s.head.finish(self._in(bg_part), self._in(fg_part), self._in(geom) if s.cfg.geometry else None)
        return self._out(torch.sigmoid(logit))

    @torch.inference_mode()
    def teacher(self, composite, geom):
        t = self.t
        _, logit = t(self._in(composite), self._in(geom) if t.cfg.geometry else None)
        return self._out(torch.sigmoid(logit))


def read_manifest(onnx_dir: str) -> dict:
    path = os.path.join(onnx_dir, "manifest.json")
    if not os.path.isfile(path):
        raise BackendError(f"no exported graphs in {onnx_dir} (manifest.json missing): run `python export/to_onnx.py`")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def onnx_is_current(weights: str, onnx_dir: str, precision: str = "float32") -> bool:
    """True when ``onnx_dir`` holds every graph, exported from the current weights."""
    try:
        m = read_manifest(onnx_dir)
    except BackendError:
        return False
    tpath, spath = weights_paths(weights)
    src = m.get("source_weights", {})
    if src.get("student", {}).get("sha256") != file_sha256(spath):
        return False
    if os.path.exists(tpath) and src.get("teacher", {}).get("sha256") != file_sha256(tpath):
        return False
    if geometry_mismatch(m):
        return False
    return all(os.path.isfile(os.path.join(onnx_dir, g["file"])) for k, g in m["graphs"].items() if k.endswith(precision))


def geometry_mismatch(manifest: dict) -> str:
    """Graphs whose ``geom`` input is narrower or wider than :data:`GEOMETRY_DIM` (made by older code)."""
    bad = [k for k, g in manifest.get("graphs", {}).items()
           if "geom" in g.get("inputs", {}) and g["inputs"]["geom"][-1] != GEOMETRY_DIM]
    return ", ".join(bad)


def ensure_onnx(weights: str = "weights", onnx_dir: str | None = None, fp16_too: bool = True) -> str:
    """Export the graphs once when they are missing or older than the weights; return the folder."""
    onnx_dir = onnx_dir or os.path.join(weights, "onnx")
    if not onnx_is_current(weights, onnx_dir):
        if not have("onnx"):
            raise BackendError("exported graphs are missing or stale and `onnx` is not installed to export them: "
                               "`pip install onnx onnxruntime`")
        from fos.export import export_onnx

        log.info("exporting ONNX graphs from %s to %s (missing or older than the weights)", weights, onnx_dir)
        export_onnx(weights, onnx_dir, fp16_too=fp16_too)
        log.info("ONNX graphs written to %s", os.path.abspath(onnx_dir))
    return onnx_dir


class GraphBackend(Backend):
    """A backend that runs the four exported graphs by name (see :mod:`fos.export`)."""

    def _run(self, graph: str, **inputs):
        raise NotImplementedError

    def encode_background(self, background, crop_box):
        return self._run("student_bg", background=background, crop_box=crop_box)

    def encode_foreground(self, foreground):
        return self._run("student_fg", foreground=foreground)

    def head(self, bg_part, fg_part, geom):
        return self._run("student_head", bg_part=bg_part, fg_part=fg_part, geom=geom)

    def teacher(self, composite, geom):
        return self._run("teacher", composite=composite, geom=geom)[0]


class OrtBackend(GraphBackend):
    name = "onnxruntime"

    def __init__(self, weights: str = "weights", onnx_dir: str | None = None, precision: str = "float32",
                 providers: list[str] | None = None, threads: int = 0):
        if not have("onnxruntime"):
            raise BackendError("onnxruntime is not installed: `pip install onnxruntime` (CPU) or onnxruntime-gpu")
        import onnxruntime as ort

        onnx_dir = onnx_dir or os.path.join(weights, "onnx")
        m = read_manifest(onnx_dir)
        _, spath = weights_paths(weights)
        if os.path.exists(spath) and m["source_weights"]["student"]["sha256"] != file_sha256(spath):
            raise BackendError(f"the graphs in {onnx_dir} were exported from other weights than {spath}: "
                               "re-export with `python export/to_onnx.py`")
        if geometry_mismatch(m):
            raise BackendError(f"the graphs in {onnx_dir} take another geometry width than this version "
                               f"({GEOMETRY_DIM} columns): re-export with `python export/to_onnx.py`")
        self.student_sha256 = m["source_weights"]["student"]["sha256"]
        self.preprocess_cfg = PreprocessCfg.from_dict(m["preprocess_cfg"])
        avail = ort.get_available_providers()
        self.providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
        self.precision = precision
        self.np_dtype = np.float16 if precision == "float16" else np.float32
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self._sessions: dict[str, object] = {}
        self._opts, self._ort, self._dir, self._m = opts, ort, onnx_dir, m
        self.weights = os.path.abspath(onnx_dir)
        self.description = f"onnxruntime {ort.__version__} ({self.providers[0]}, {precision})"

    def session(self, graph: str):
        if graph not in self._sessions:
            key = f"{graph}:{self.precision}"
            if key not in self._m["graphs"]:
                raise BackendError(f"{self._dir} has no {key} graph: re-export with `python export/to_onnx.py`")
            path = os.path.join(self._dir, self._m["graphs"][key]["file"])
            if not os.path.isfile(path):
                raise BackendError(f"{path} is missing: re-export with `python export/to_onnx.py`")
            self._sessions[graph] = self._ort.InferenceSession(path, self._opts, providers=self.providers)
        return self._sessions[graph]

    def _run(self, graph: str, **inputs):
        feed = {k: np.ascontiguousarray(v, dtype=self.np_dtype) for k, v in inputs.items()}
        outs = self.session(graph).run(None, feed)
        outs = tuple(o.astype(np.float32) for o in outs)
        return outs if len(outs) > 1 else outs[0]


def get_backend(name: str = "auto", weights: str = "weights", **kw) -> Backend:
    """``torch``, ``onnxruntime``, ``tensorrt`` or ``auto``.

    ``auto``: with a GPU, TensorRT, then ONNX Runtime with its CUDA provider, then torch on CUDA
    (float16); without one, ONNX Runtime on CPU, then torch. It logs what it picked and why.
    """
    if name == "torch":
        return TorchBackend(weights, **kw)
    if name == "onnxruntime":
        ensure_onnx(weights, kw.get("onnx_dir"))
        return OrtBackend(weights, **kw)
    if name == "tensorrt":
        from fos.trt import TrtBackend

        return TrtBackend(weights, **kw)
    if name != "auto":
        raise BackendError(f"unknown backend {name!r}; use auto, {', '.join(BACKENDS)}")
    tried = []

    def attempt(runtime: str, **kw):
        try:
            b = get_backend(runtime, weights, **kw)
            log.info("backend auto: picked %s", b.description)
            return b
        except (BackendError, WeightsError, OSError) as e:
            tried.append(f"{runtime}: {e}")
            return None

    gpu = torch.cuda.is_available()
    ort_gpu = False
    if have("onnxruntime"):
        import onnxruntime

        ort_gpu = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if have("tensorrt") and gpu:
        b = attempt("tensorrt")
        if b:
            return b
    if ort_gpu:
        b = attempt("onnxruntime")
        if b:
            return b
    if gpu:  # a GPU but no GPU runtime: torch on CUDA beats onnxruntime on CPU
        b = TorchBackend(weights, device="cuda", half=True)
        log.info("backend auto: picked %s (no GPU runtime installed)", b.description)
        return b
    if have("onnxruntime"):
        b = attempt("onnxruntime")
        if b:
            return b
    else:
        tried.append("onnxruntime: not installed")
    b = TorchBackend(weights)
    log.info("backend auto: picked %s (%s)", b.description, "; ".join(tried) or "no runtime installed")
    return b
