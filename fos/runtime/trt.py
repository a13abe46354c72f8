"""The ``tensorrt`` backend: runs engines built by :mod:`fos.export.trt`. Imported lazily.

:class:`TrtGraph` runs one engine, any graph, with the call of an ONNX Runtime session
(``run(output_names, feed)``): :class:`TrtBackend` runs the teacher's and the student's four with it,
and :func:`fos.runtime.graphs.open_graph` the side graphs (the inpainter's, the referrer's).

Engines are tied to the GPU model and the TensorRT version: each ``<graph>.engine`` has a
``<graph>.json`` beside it, and an engine built elsewhere, or from another ONNX graph, is refused.
"""
from __future__ import annotations

import json
import os

import numpy as np

from fos.config import PreprocessCfg
from fos.preprocess import GEOMETRY_DIM
from fos.checkpoint import file_sha256, stale_source
from fos.runtime.base import GRAPHS, BackendError, GraphBackend, as_weights, manifest_problem, read_manifest
from fos.weights import SHIPPED

INSTALL = "TensorRT is not installed: on a GPU host run `pip install -r requirements-gpu.txt` (NVIDIA's index)"


def require_trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendError(INSTALL) from e
    return trt


def trt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def gpu_info() -> dict:
    import torch

    if not torch.cuda.is_available():
        raise BackendError("TensorRT needs an NVIDIA GPU, and torch sees none (torch.cuda.is_available() is False)")
    cc = torch.cuda.get_device_capability()
    return {"gpu_name": torch.cuda.get_device_name(), "compute_capability": f"{cc[0]}.{cc[1]}"}


def engine_files(engine_dir: str, graph: str) -> tuple[str, str]:
    """(``<engine_dir>/<graph>.engine``, its ``.json``)."""
    return os.path.join(engine_dir, f"{graph}.engine"), os.path.join(engine_dir, f"{graph}.json")


def read_engine_meta(engine: str) -> dict | None:
    """The JSON beside ``engine`` (None when either file is missing or the JSON is unreadable)."""
    meta = os.path.splitext(engine)[0] + ".json"
    if not (os.path.isfile(engine) and os.path.isfile(meta)):
        return None
    try:
        with open(meta, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def engine_problem(engine: str, onnx_sha256: str, onnx: str, version: str | None = None,
                   gpu: dict | None = None) -> str:
    """Why ``engine`` cannot serve the ONNX graph ``onnx`` (sha256 ``onnx_sha256``) here; "" when it can.
    Its JSON must exist and record that graph's sha256, and, when given, the TensorRT ``version`` and the
    ``gpu`` (:func:`gpu_info`) it was built with. Needs no TensorRT: the check before any build."""
    meta = read_engine_meta(engine)
    if meta is None:
        return f"no TensorRT engine {engine} (or its .json)"
    stale = stale_source(meta.get("onnx_sha256"), onnx_sha256, engine, onnx)
    if stale:
        return stale
    if version is not None and meta.get("tensorrt_version") != version:
        return f"{engine} was built with TensorRT {meta.get('tensorrt_version')}, this is {version}"
    if gpu is not None and (meta.get("gpu_name"), meta.get("compute_capability")) != \
            (gpu["gpu_name"], gpu["compute_capability"]):
        return (f"{engine} was built for {meta.get('gpu_name')} (sm {meta.get('compute_capability')}), "
                f"this GPU is {gpu['gpu_name']} (sm {gpu['compute_capability']})")
    return ""


def profile_problem(graph: str, shapes: dict, feed: dict) -> str:
    """Why the inputs ``feed`` (name -> array) fall outside the engine's optimization profile ``shapes``
    (name -> {"min", "max"}: the JSON's ``shapes``); "" when they fit. Inputs without a profile are static."""
    for name, arr in feed.items():
        s = shapes.get(name)
        if s is None:
            continue
        got = list(np.shape(arr))
        if len(got) != len(s["max"]):
            return f"{graph}: {name} has {len(got)} dimensions, the engine takes {len(s['max'])}"
        for d, (lo, v, hi) in enumerate(zip(s["min"], got, s["max"])):
            if v > hi:
                what = "batch" if d == 0 else f"dimension {d}"
                return (f"{graph}: {what} {v} for {name} is past the engine's maximum {hi}; rebuild with a larger "
                        "profile (--max-batch for batches) or send smaller inputs")
            if v < lo:
                return f"{graph}: dimension {d} of {name} is {v}, under the engine's minimum {lo}"
    return ""


class TrtGraph:
    """One engine, run with torch CUDA buffers on its own stream: ``run(output_names, feed)`` returns the
    outputs (all, in the engine's order, for None) as float32 numpy arrays, as an ONNX Runtime session does."""

    def __init__(self, engine: str, meta: dict, runtime=None):
        trt = require_trt()
        import torch

        self.torch, self.trt, self.meta, self.path = torch, trt, meta, engine
        runtime = runtime or trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with open(engine, "rb") as f:
            self.engine = runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise BackendError(f"{engine} could not be deserialized: rebuild it with `python export/to_trt.py`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.stream = torch.cuda.Stream()

    def _torch_dtype(self, dt):
        trt, torch = self.trt, self.torch
        return {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
                trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool}[dt]

    def run(self, output_names, feed: dict) -> list[np.ndarray]:
        torch, engine, ctx = self.torch, self.engine, self.context
        graph = self.meta.get("graph", os.path.basename(self.path))
        problem = profile_problem(graph, self.meta.get("shapes", {}), feed)
        if problem:
            raise BackendError(problem)
        keep, outs = [], {}
        with torch.cuda.stream(self.stream):
            for name, arr in feed.items():
                t = torch.from_numpy(np.ascontiguousarray(arr)).to("cuda", self._torch_dtype(engine.get_tensor_dtype(name)))
                keep.append(t)
                ctx.set_input_shape(name, tuple(t.shape))
                ctx.set_tensor_address(name, t.data_ptr())
            for name in self.outputs:
                o = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=self._torch_dtype(engine.get_tensor_dtype(name)),
                                device="cuda")
                ctx.set_tensor_address(name, o.data_ptr())
                outs[name] = o
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise BackendError(f"TensorRT failed to run {graph}")
        self.stream.synchronize()
        return [outs[n].float().cpu().numpy() for n in (output_names or self.outputs)]


def open_engine(engine: str, onnx: str, rebuild: str, runtime=None) -> TrtGraph:
    """The :class:`TrtGraph` of ``engine``, checked first (:func:`engine_problem`) against the ONNX graph
    ``onnx`` it must have been built from, this TensorRT and this GPU; ``rebuild`` ends each refusal."""
    trt = require_trt()
    problem = engine_problem(engine, file_sha256(onnx) if os.path.isfile(onnx) else "", onnx, trt.__version__,
                             gpu_info())
    if problem:
        raise BackendError(f"{problem}: {rebuild}")
    return TrtGraph(engine, read_engine_meta(engine), runtime)


class TrtBackend(GraphBackend):
    """Runs the four engines of ``engine_dir`` (default ``<weights>/trt``), one :class:`TrtGraph` each."""

    name = "tensorrt"

    def __init__(self, weights=SHIPPED, engine_dir: str | None = None, onnx_dir: str | None = None):
        trt = require_trt()
        w = as_weights(weights)
        engine_dir = engine_dir or w.trt
        onnx_dir = onnx_dir or w.onnx
        info = gpu_info()
        m = read_manifest(onnx_dir)
        problem = manifest_problem(m, onnx_dir)
        if problem:
            raise BackendError(f"{problem}: re-export with `python export/to_onnx.py`, then rebuild the engines")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        rebuild = f"rebuild with `python export/to_trt.py --onnx {onnx_dir} --out {engine_dir}` on this machine"
        exported = {e["file"]: e["sha256"] for e in m["graphs"].values()}
        self.graphs: dict[str, TrtGraph] = {}
        for g in GRAPHS:
            path, _ = engine_files(engine_dir, g)
            meta = read_engine_meta(path) or {}
            src = os.path.basename(meta.get("onnx", f"{g}.onnx"))  # the graph it was built from: still the exported one?
            problem = engine_problem(path, exported.get(src, ""), os.path.join(onnx_dir, src), trt.__version__, info)
            if problem:
                raise BackendError(f"{problem}: {rebuild}")
            geom = meta.get("shapes", {}).get("geom")
            if geom and geom["max"][-1] != GEOMETRY_DIM:
                raise BackendError(f"{path} takes {geom['max'][-1]} geometry columns, this version passes "
                                   f"{GEOMETRY_DIM}: re-export (`python export/to_onnx.py`), then {rebuild}")
            self.graphs[g] = TrtGraph(path, meta, runtime)
        self.meta = {g: t.meta for g, t in self.graphs.items()}
        self.student_sha256 = m["source_weights"]["student"]["sha256"]
        self.student_path = m["source_weights"]["student"].get("path", "")
        self.preprocess_cfg = PreprocessCfg.from_dict(m["preprocess_cfg"])
        self.description = f"tensorrt {trt.__version__} ({info['gpu_name']}, {self.meta['student_bg']['precision']})"

    def _run(self, graph: str, **inputs):
        res = tuple(self.graphs[graph].run(list(GRAPHS[graph][1]), inputs))
        return res if len(res) > 1 else res[0]
