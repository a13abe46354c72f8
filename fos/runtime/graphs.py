"""The one backend choice of the side graphs: the inpainter's (``inpaint``) and the referrer's
(``refer``), models whose weights are one file ``<folder>/<name>.safetensors``.

Their exported graph is ``<folder>/onnx/<name>.onnx`` (with a sidecar that binds it to the weights'
sha256, :func:`fos.checkpoint.graph_problem`) and their TensorRT engine ``<folder>/trt/<name>.engine``
(with a JSON that binds it to that graph, :func:`fos.runtime.trt.engine_problem`). :func:`open_graph`
returns a session with ONNX Runtime's call, ``run(output_names, feed)``, or None for torch:

* ``torch``: never opens a graph;
* ``onnxruntime``: the current exported graph, or one line that says why not;
* ``tensorrt``: the current engine (a :class:`fos.runtime.trt.TrtGraph`), or one line that says why not;
* ``auto``: with a GPU and TensorRT, the engine when it is current; then the exported graph when it is
  current and onnxruntime is installed; else torch.

Nothing is exported or built here: :func:`fos.bootstrap.export_if_stale` does that first.
"""
from __future__ import annotations

import logging
import os

from fos.checkpoint import graph_problem, side_graph
from fos.config import BACKENDS
from fos.errors import BackendError, InputError
from fos.runtime.base import have

log = logging.getLogger("fos.runtime")


def side_engine(weights: str, name: str) -> str:
    """Where the TensorRT engine of the side graph ``name`` of the model file ``weights`` lives."""
    return os.path.join(os.path.dirname(os.path.abspath(weights)), "trt", f"{name}.engine")


def build_hint(weights: str, name: str) -> str:
    folder = os.path.dirname(os.path.abspath(weights))
    return (f"build it with `python export/to_trt.py --onnx {os.path.join(folder, 'onnx')} "
            f"--out {os.path.join(folder, 'trt')} --graphs {name}` on this machine")


def open_engine_of(weights: str, name: str):
    """The :class:`fos.runtime.trt.TrtGraph` of the side graph ``name`` of ``weights``; a one-line
    :class:`BackendError` when TensorRT, the GPU, a current exported graph or a current engine is missing."""
    from fos.runtime.trt import open_engine, require_trt

    require_trt()
    onnx = side_graph(weights, name)
    problem = graph_problem(onnx, weights)
    if problem:
        raise BackendError(f"the tensorrt backend builds its engine from the exported graph ({problem}): run "
                           "`python export/to_onnx.py` first, then `python export/to_trt.py`")
    return open_engine(side_engine(weights, name), onnx, build_hint(weights, name))


def open_graph(weights: str, name: str, backend: str):
    """(a session with ``run(output_names, feed)``, or None for torch; the backend's name) for the side
    graph ``name`` of the model file ``weights``: see the module doc for what each backend picks."""
    if backend not in ("auto", *BACKENDS):
        raise InputError(f"unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    if backend == "torch":
        return None, "torch"
    if backend == "tensorrt":
        return open_engine_of(weights, name), "tensorrt"
    if backend == "auto" and have("tensorrt"):
        import torch

        if torch.cuda.is_available():
            try:
                return open_engine_of(weights, name), "tensorrt"
            except BackendError as e:
                log.info("%s graph: no TensorRT engine to serve (%s)", name, e)
    from fos.threads import have_onnxruntime, ort_session

    problem = graph_problem(side_graph(weights, name), weights)
    if problem is None and have_onnxruntime():
        return ort_session(side_graph(weights, name)), "onnxruntime"
    if backend == "onnxruntime":
        why = problem or "onnxruntime is not installed"
        raise InputError(f"the onnxruntime backend needs an exported graph ({why}); run "
                         "`python export/to_onnx.py` or use --backend torch")
    return None, "torch"
