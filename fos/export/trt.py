"""TensorRT engine building (``python export/to_trt.py``). Imported lazily; runs where TensorRT is.

Precision: TensorRT 10 builds float16 engines from the float32 ONNX graph with ``BuilderFlag.FP16``
(weak typing). TensorRT 11 removed that flag: every network is strongly typed and precision comes
from the graph, so float16 engines are built from the ``*_fp16.onnx`` graphs with the
``STRONGLY_TYPED`` creation flag (accepted on 10.x too, ignored on 11.x).

Two kinds of graph, one builder (:func:`build`):

* the teacher's and the student's four (:func:`build_engine`): dynamic batch from ``min_batch`` to
  ``max_batch`` (``bg_part`` is always batch 1);
* the side graphs, the inpainter's and the referrer's (:func:`build_side_engine`): float32, with the
  optimization profile their export wrote into the sidecar (``trt_profile``: the referrer's phrase count
  and token length are dynamic, not only its batch).
"""
from __future__ import annotations

import json
import os
import time

from fos.checkpoint import atomic_write_bytes, atomic_write_json, file_sha256, sidecar
from fos.runtime.base import BackendError
from fos.runtime.trt import engine_files, gpu_info, require_trt, trt_major


def batch_profiles(inputs: dict[str, list[int]], min_batch: int, opt_batch: int, max_batch: int) -> dict:
    """name -> {"min", "opt", "max"} for inputs (name -> shape, -1 for dynamic) whose only dynamic
    dimension is the batch; ``bg_part`` (one background per query) is batch 1; static inputs get none."""
    if not (1 <= min_batch <= opt_batch <= max_batch):
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    out = {}
    for name, shape in inputs.items():
        if all(d >= 0 for d in shape):
            continue
        rest = list(shape)[1:]
        if any(d < 0 for d in rest):
            raise BackendError(f"input {name} has dynamic non-batch dims {list(shape)}: it needs a trt_profile")
        lo, mid, hi = (1, 1, 1) if name == "bg_part" else (min_batch, opt_batch, max_batch)
        out[name] = {"min": [lo] + rest, "opt": [mid] + rest, "max": [hi] + rest}
    return out


def build(src: str, engine: str, profiles, fp16: bool = False, workspace_gib: float = 4.0,
          timing_cache: str | None = None, **meta) -> str:
    """Parse the ONNX graph ``src``, build it with the optimization profile ``profiles`` (a dict, or a
    function of the network's inputs {name: shape} that returns one), and write ``engine`` and its
    ``.json`` (TensorRT version, GPU, precision, shapes, the graph's sha256, and ``meta``)."""
    trt = require_trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    weak_fp16 = fp16 and trt_major(trt) < 11 and hasattr(trt.BuilderFlag, "FP16")
    strongly = fp16 and not weak_fp16
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(src):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {src}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if weak_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    inputs = {network.get_input(i).name: list(network.get_input(i).shape) for i in range(network.num_inputs)}
    shapes = profiles(inputs) if callable(profiles) else profiles
    dynamic = [n for n, s in inputs.items() if any(d < 0 for d in s)]
    missing = [n for n in dynamic if n not in shapes]
    if missing:
        raise BackendError(f"{src}: no optimization profile for the dynamic input(s) {', '.join(missing)}")
    profile = builder.create_optimization_profile()
    for name in dynamic:
        s = shapes[name]
        profile.set_shape(name, s["min"], s["opt"], s["max"])
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
    os.makedirs(os.path.dirname(os.path.abspath(engine)), exist_ok=True)
    atomic_write_bytes(engine, bytes(serialized))
    if timing_cache:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    info = {**meta, "onnx": os.path.abspath(src), "onnx_sha256": file_sha256(src),
            "tensorrt_version": trt.__version__, **gpu_info(),
            "precision": "float16" if fp16 else "float32", "typing": "strong" if strongly else "weak",
            "shapes": {n: shapes[n] for n in dynamic}, "build_seconds": round(time.time() - t0, 1)}
    atomic_write_json(os.path.splitext(engine)[0] + ".json", info)
    return engine


def build_engine(onnx_dir: str, graph: str, out_dir: str, fp16: bool = False, min_batch: int = 1,
                 opt_batch: int = 8, max_batch: int = 256, workspace_gib: float = 4.0,
                 timing_cache: str | None = None) -> str:
    """One of the teacher's and the student's graphs: ``<graph>.onnx`` (or ``<graph>_fp16.onnx``) ->
    ``<out_dir>/<graph>.engine`` + ``.json``."""
    trt = require_trt()
    batch_profiles({}, min_batch, opt_batch, max_batch)  # the range is checked before anything is parsed
    strongly = fp16 and not (trt_major(trt) < 11 and hasattr(trt.BuilderFlag, "FP16"))
    src = os.path.join(onnx_dir, f"{graph}_fp16.onnx" if strongly else f"{graph}.onnx")
    if not os.path.isfile(src):
        hint = " (export float16 graphs with `python export/to_onnx.py --fp16`)" if strongly else ""
        raise BackendError(f"{src} not found{hint}")
    return build(src, engine_files(out_dir, graph)[0],
                 lambda inputs: batch_profiles(inputs, min_batch, opt_batch, max_batch), fp16, workspace_gib,
                 timing_cache, graph=graph)


def side_profile(onnx: str) -> dict:
    """The optimization profile the side graph ``onnx``'s export wrote into its sidecar; a clear error
    for a sidecar without one (exported by an older version) or a graph that failed its parity check."""
    try:
        with open(sidecar(onnx), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise BackendError(f"{sidecar(onnx)} is missing or unreadable ({e}): re-export with `python export/to_onnx.py`") from e
    if not meta.get("source_sha256"):
        raise BackendError(f"{onnx} records no source weights (its parity check failed?): re-export with "
                           "`python export/to_onnx.py`")
    if not isinstance(meta.get("trt_profile"), dict):
        raise BackendError(f"{sidecar(onnx)} has no trt_profile (exported by an older version): re-export with "
                           "`python export/to_onnx.py`")
    return meta["trt_profile"]


def build_side_engine(onnx: str, out_dir: str, workspace_gib: float = 4.0, timing_cache: str | None = None) -> str:
    """A side graph (``<...>/onnx/inpaint.onnx``, ``refer.onnx``) -> ``<out_dir>/<name>.engine`` + ``.json``,
    float32, with its sidecar's profile."""
    if not os.path.isfile(onnx):
        raise BackendError(f"{onnx} not found: export it with `python export/to_onnx.py`")
    name = os.path.splitext(os.path.basename(onnx))[0]
    return build(onnx, engine_files(out_dir, name)[0], side_profile(onnx), False, workspace_gib, timing_cache,
                 graph=name)
