"""TensorRT: engine building (``export/to_trt.py``) and the ``tensorrt`` backend. Imported lazily.

Precision: TensorRT 10 builds float16 engines from the float32 ONNX graph with ``BuilderFlag.FP16``
(weak typing). TensorRT 11 removed that flag: every network is strongly typed and precision comes
from the graph, so float16 engines are built from the ``*_fp16.onnx`` graphs with the
``STRONGLY_TYPED`` creation flag (accepted on 10.x too, ignored on 11.x).

Engines are tied to the GPU model and the TensorRT version: each ``<graph>.engine`` has a
``<graph>.json`` beside it, and the backend refuses an engine built elsewhere.
"""
from __future__ import annotations

import json
import logging
import os
import time

import numpy as np

from fos.checkpoint import atomic_write_bytes, atomic_write_json
from fos.config import PreprocessCfg
from fos.preprocess import GEOMETRY_DIM
from fos.runtime import BackendError, GraphBackend, read_manifest

log = logging.getLogger("fos.trt")
GRAPHS = ("teacher", "student_bg", "student_fg", "student_head")
OUTPUTS = {"teacher": ("score", "feat"), "student_bg": ("bg_part", "emb"), "student_fg": ("fg_part", "emb"),
           "student_head": ("score",)}  # as named by fos.export
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


def build_engine(onnx_dir: str, graph: str, out_dir: str, fp16: bool = False, min_batch: int = 1,
                 opt_batch: int = 8, max_batch: int = 256, workspace_gib: float = 4.0,
                 timing_cache: str | None = None) -> str:
    """Parse ``<graph>.onnx`` (or ``<graph>_fp16.onnx``), build, and write ``<graph>.engine`` + ``.json``."""
    trt = require_trt()
    if not (1 <= min_batch <= opt_batch <= max_batch):
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    weak_fp16 = fp16 and trt_major(trt) < 11 and hasattr(trt.BuilderFlag, "FP16")
    strongly = fp16 and not weak_fp16
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    src = os.path.join(onnx_dir, f"{graph}_fp16.onnx" if strongly else f"{graph}.onnx")
    if not os.path.isfile(src):
        hint = " (export float16 graphs with `python export/to_onnx.py --fp16`)" if strongly else ""
        raise BackendError(f"{src} not found{hint}")
    if not parser.parse_from_file(src):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {src}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if weak_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        rest = list(t.shape)[1:]
        if any(d < 0 for d in rest):
            raise BackendError(f"{src}: input {t.name} has dynamic non-batch dims {list(t.shape)}")
        lo, mid, hi = ([1] + rest, [1] + rest, [1] + rest) if t.name == "bg_part" else \
            ([min_batch] + rest, [opt_batch] + rest, [max_batch] + rest)
        profile.set_shape(t.name, lo, mid, hi)
        shapes[t.name] = {"min": lo, "opt": mid, "max": hi}
    config.add_optimization_profile(profile)
    cache_bytes = b""
    if timing_cache and os.path.isfile(timing_cache):
        with open(timing_cache, "rb") as f:
            cache_bytes = f.read()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.time()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {src} (see the TensorRT log above)")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{graph}.engine")
    atomic_write_bytes(path, bytes(serialized))
    if timing_cache:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    meta = {"graph": graph, "onnx": os.path.abspath(src), "tensorrt_version": trt.__version__, **gpu_info(),
            "precision": "float16" if fp16 else "float32", "typing": "strong" if strongly else "weak",
            "shapes": shapes, "build_seconds": round(time.time() - t0, 1)}
    atomic_write_json(os.path.join(out_dir, f"{graph}.json"), meta)
    return path


class TrtBackend(GraphBackend):
    """Runs the four engines of ``engine_dir`` (default ``<weights>/trt``) with torch CUDA buffers."""

    name = "tensorrt"

    def __init__(self, weights: str = "weights", engine_dir: str | None = None, onnx_dir: str | None = None):
        trt = require_trt()
        import torch

        self.torch, self.trt = torch, trt
        engine_dir = engine_dir or os.path.join(weights, "trt")
        onnx_dir = onnx_dir or os.path.join(weights, "onnx")
        info = gpu_info()
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
            geom = meta.get("shapes", {}).get("geom")
            if geom and geom["max"][-1] != GEOMETRY_DIM:
                raise BackendError(f"{path} takes {geom['max'][-1]} geometry columns, this version passes "
                                   f"{GEOMETRY_DIM}: re-export (`python export/to_onnx.py`), then {rebuild}")
            with open(path, "rb") as f:
                engine = runtime.deserialize_cuda_engine(f.read())
            if engine is None:
                raise BackendError(f"{path} could not be deserialized: {rebuild}")
            self.engines[g], self.contexts[g], self.meta[g] = engine, engine.create_execution_context(), meta
        m = read_manifest(onnx_dir)
        self.student_sha256 = m["source_weights"]["student"]["sha256"]
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
                hi = self.meta[graph]["shapes"][name]["max"][0]
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
        res = tuple(outs[n].float().cpu().numpy() for n in OUTPUTS[graph])
        return res if len(res) > 1 else res[0]
