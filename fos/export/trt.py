"""TensorRT engine building (``python export/to_trt.py``). Imported lazily; runs where TensorRT is.

Precision: TensorRT 10 builds float16 engines from the float32 ONNX graph with ``BuilderFlag.FP16``
(weak typing). TensorRT 11 removed that flag: every network is strongly typed and precision comes
from the graph, so float16 engines are built from the ``*_fp16.onnx`` graphs with the
``STRONGLY_TYPED`` creation flag (accepted on 10.x too, ignored on 11.x).
"""
from __future__ import annotations

import os
import time

from fos.checkpoint import atomic_write_bytes, atomic_write_json, file_sha256
from fos.runtime.base import BackendError
from fos.runtime.trt import gpu_info, require_trt, trt_major


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
        if all(d >= 0 for d in t.shape):  # a static input (bg_part, batch 1) needs no profile
            continue
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
    meta = {"graph": graph, "onnx": os.path.abspath(src), "onnx_sha256": file_sha256(src),
            "tensorrt_version": trt.__version__, **gpu_info(),
            "precision": "float16" if fp16 else "float32", "typing": "strong" if strongly else "weak",
            "shapes": shapes, "build_seconds": round(time.time() - t0, 1)}
    atomic_write_json(os.path.join(out_dir, f"{graph}.json"), meta)
    return path


