"""The ``tensorrt`` backend: runs engines built by :mod:`fos.export.trt`. Imported lazily.

Engines are tied to the GPU model and the TensorRT version: each ``<graph>.engine`` has a
``<graph>.json`` beside it, and the backend refuses an engine built elsewhere.
"""
from __future__ import annotations

import json
import os

import numpy as np

from fos.config import PreprocessCfg
from fos.preprocess import GEOMETRY_DIM
from fos.checkpoint import stale_source
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


class TrtBackend(GraphBackend):
    """Runs the four engines of ``engine_dir`` (default ``<weights>/trt``) with torch CUDA buffers."""

    name = "tensorrt"

    def __init__(self, weights=SHIPPED, engine_dir: str | None = None, onnx_dir: str | None = None):
        trt = require_trt()
        import torch

        self.torch, self.trt = torch, trt
        w = as_weights(weights)
        engine_dir = engine_dir or w.trt
        onnx_dir = onnx_dir or w.onnx
        info = gpu_info()
        m = read_manifest(onnx_dir)
        problem = manifest_problem(m, onnx_dir)
        if problem:
            raise BackendError(f"{problem}: re-export with `python export/to_onnx.py`, then rebuild the engines")
        self.engines, self.contexts, self.meta = {}, {}, {}
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        rebuild = f"rebuild with `python export/to_trt.py --onnx {onnx_dir} --out {engine_dir}` on this machine"
        for g in GRAPHS:
            path, mpath = os.path.join(engine_dir, f"{g}.engine"), os.path.join(engine_dir, f"{g}.json")
            if not (os.path.isfile(path) and os.path.isfile(mpath)):
                raise BackendError(f"no TensorRT engine {path} (or its .json): {rebuild}")
            with open(mpath, encoding="utf-8") as f:
                meta = json.load(f)
            if meta["tensorrt_version"] != trt.__version__:
                raise BackendError(f"{path} was built with TensorRT {meta['tensorrt_version']}, this is "
                                   f"{trt.__version__}: {rebuild}")
            if (meta["gpu_name"], meta["compute_capability"]) != (info["gpu_name"], info["compute_capability"]):
                raise BackendError(f"{path} was built for {meta['gpu_name']} (sm {meta['compute_capability']}), "
                                   f"this GPU is {info['gpu_name']} (sm {info['compute_capability']}): {rebuild}")
            src = os.path.basename(meta["onnx"])  # the graph it was built from: still the exported one?
            exported = {e["file"]: e["sha256"] for e in m["graphs"].values()}.get(src, "")
            stale = stale_source(meta.get("onnx_sha256"), exported, path, os.path.join(onnx_dir, src))
            if stale:
                raise BackendError(f"{stale}: {rebuild}")
            geom = meta.get("shapes", {}).get("geom")
            if geom and geom["max"][-1] != GEOMETRY_DIM:
                raise BackendError(f"{path} takes {geom['max'][-1]} geometry columns, this version passes "
                                   f"{GEOMETRY_DIM}: re-export (`python export/to_onnx.py`), then {rebuild}")
            with open(path, "rb") as f:
                engine = runtime.deserialize_cuda_engine(f.read())
            if engine is None:
                raise BackendError(f"{path} could not be deserialized: {rebuild}")
            self.engines[g], self.contexts[g], self.meta[g] = engine, engine.create_execution_context(), meta
        self.student_sha256 = m["source_weights"]["student"]["sha256"]
        self.student_path = m["source_weights"]["student"].get("path", "")
        self.preprocess_cfg = PreprocessCfg.from_dict(m["preprocess_cfg"])
        self.description = f"tensorrt {trt.__version__} ({info['gpu_name']}, {self.meta['student_bg']['precision']})"
        self.stream = torch.cuda.Stream()

    def _torch_dtype(self, dt):
        trt, torch = self.trt, self.torch
        return {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64}[dt]

    def _run(self, graph: str, **inputs):
        torch, trt = self.torch, self.trt
        engine, ctx = self.engines[graph], self.contexts[graph]
        keep = []
        with torch.cuda.stream(self.stream):
            for name, arr in inputs.items():
                arr = np.asarray(arr)
                shape = self.meta[graph]["shapes"].get(name)  # None: a static input (bg_part)
                hi = shape["max"][0] if shape else arr.shape[0]
                if arr.shape[0] > hi:
                    raise BackendError(f"{graph}: batch {arr.shape[0]} for {name} is past the engine's maximum {hi}; "
                                       "rebuild with a larger --max-batch or send smaller batches")
                t = torch.from_numpy(np.ascontiguousarray(arr)).to("cuda", self._torch_dtype(engine.get_tensor_dtype(name)))
                keep.append(t)
                ctx.set_input_shape(name, tuple(t.shape))
                ctx.set_tensor_address(name, t.data_ptr())
            outs = {}
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                if engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
                    continue
                o = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=self._torch_dtype(engine.get_tensor_dtype(name)),
                                device="cuda")
                ctx.set_tensor_address(name, o.data_ptr())
                outs[name] = o
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise BackendError(f"TensorRT failed to run {graph}")
        self.stream.synchronize()
        res = tuple(outs[n].float().cpu().numpy() for n in GRAPHS[graph][1])
        return res if len(res) > 1 else res[0]
