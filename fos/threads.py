"""CPU thread count for torch and ONNX Runtime, the same everywhere (app, search, evaluate, train, bench),
and the one builder of ONNX Runtime sessions (:func:`ort_session`), which applies it.

torch's default (one thread per core, spinning while it waits) collapses when anything else runs on
the cores: 19 evaluation queries took 12.9 s with 2 threads and 2.1 s with 1 on a busy 2-core machine.
The default is half the cores this process may use (at least 1, at most 8); ``FOS_THREADS=N`` or a
CLI's ``--threads N`` overrides it.
"""
from __future__ import annotations

import os


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    env = os.environ.get("FOS_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"FOS_THREADS must be a whole number of threads, got {env!r}") from None
        if n < 1:
            raise ValueError(f"FOS_THREADS must be at least 1, got {n}")
        return n
    return max(1, min(8, available_cores() // 2))


_chosen: int | None = None  # what set_threads chose; ONNX Runtime sessions made later use it too


def set_threads(n: int = 0) -> int:
    """Set the thread count of torch and of ONNX Runtime sessions made afterwards to ``n``
    (0 = :func:`default_threads`); returns the count used."""
    global _chosen
    import torch

    if n < 0:
        raise ValueError(f"--threads must be 0 (automatic) or a positive number, got {n}")
    n = n or default_threads()
    torch.set_num_threads(n)
    _chosen = n
    return n


def current_threads() -> int:
    """The count :func:`set_threads` chose, else :func:`default_threads`."""
    return _chosen or default_threads()


def have_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def ort_session(path: str, providers: list[str] | None = None, threads: int = 0):
    """An ONNX Runtime session of the graph ``path``: every optimization on, ``threads`` intra-op
    threads (0: :func:`current_threads`), ``providers`` (default: CPU). The one place sessions are made:
    the backends' graphs, the inpainter's and u2netp's. onnxruntime is imported here, lazily."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or current_threads()
    # no spin-waiting between runs: a query runs several sessions (and torch, PIL) in turn, and threads left
    # spinning by one took the cores from the next; on 2 cores a 1,000-item query went from 92.6 to 46.4 ms
    # (preprocess 33.7 -> 9.8 ms, background encode 41.0 -> 25.4 ms; fos.bench retrieval's query, one run)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, opts, providers=providers or ["CPUExecutionProvider"])

