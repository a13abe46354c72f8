"""Start-up of the app (and of ``fos.bench retrieval``): weights, graphs and library, checked first.

The layers below never prepare anything themselves: :mod:`fos.runtime` only runs graphs and
:mod:`fos.export` only builds them. This module decides, for a weights folder:

1. a library the user named (``FOS_LIBRARY`` / ``--library``) must fit the student weights, or start-up
   stops with a message that says how to rebuild it; it is never rebuilt, moved or deleted here;
2. ONNX graphs are exported into ``<weights>/onnx`` when the backend is ``auto`` or ``onnxruntime`` and they
   are missing or older than the weights (only after step 1 passed);
3. with no library named, the default one (``assets/library``, 119 attributed cutouts) is encoded once into
   ``<weights>/library-<sha12>``, a folder per student, so nothing earlier is ever replaced.

Everything it writes lies under the weights folder, in the generated folders named in :mod:`fos.weights`.
"""
from __future__ import annotations

import logging
import os

from fos.checkpoint import WeightsError
from fos.examples import ASSETS
from fos.library import Library, LibraryError
from fos.library.build import write_library
from fos.runtime import Backend, get_backend, have, onnx_problem
from fos.weights import SHIPPED, WeightsDir

log = logging.getLogger("fos.bootstrap")


def ensure_graphs(w: WeightsDir) -> None:
    """Export ONNX graphs into ``<weights>/onnx`` when they are missing or stale and onnx is installed."""
    problem = onnx_problem(w)
    if not problem:
        return
    if not (have("onnx") and have("onnxruntime")):
        log.info("no current ONNX graphs (%s) and onnx/onnxruntime not installed: serving with torch", problem)
        return
    from fos.export.onnx import export_and_check

    log.info("exporting ONNX graphs to %s (%s); once per set of weights", w.onnx, problem)
    export_and_check(w, fp16=False)


def prepare(weights: str = SHIPPED, library: str | None = None, backend: str = "auto",
            src: str | None = None) -> tuple[Library, Backend]:
    """(library, backend) for the app: see the module doc for what is checked, built and refused."""
    w = WeightsDir(weights)
    if not w.has("student"):
        raise WeightsError(f"{w.student} not found: the app needs the student weights (the shipped ones are in "
                           "weights/ of the repository; `python -m fos.train student` makes new ones)")
    if library:
        lib = Library(library)
        lib.check_weights(w.student_sha256)
    if backend in ("auto", "onnxruntime"):
        ensure_graphs(w)
    b = get_backend(backend, w)
    if library:
        return lib, b
    lib_dir = w.default_library()
    if os.path.isfile(os.path.join(lib_dir, "library.json")):
        try:
            return Library(lib_dir), b
        except LibraryError as e:
            raise LibraryError(f"{e} (it is the app's generated default library: delete {lib_dir} and restart "
                               "to have it rebuilt)") from None
    src = src or os.path.join(ASSETS, "library")
    log.info("encoding the default library %s into %s", src, lib_dir)
    res = write_library(b, src, lib_dir)
    log.info("default library: %d items encoded with %s -> %s", res["count"], b.description, os.path.abspath(lib_dir))
    if res["failed"]:
        log.warning("default library: skipped %s", res["failed"])
    return Library(lib_dir), b


def export_if_stale(path: str, name: str, backend: str) -> None:
    """Export the side graph ``name`` of the model file ``path`` (the inpainter's, the referrer's) into
    ``<its folder>/onnx`` when the backend would serve it or build its TensorRT engine from it (``auto``,
    ``onnxruntime``, ``tensorrt``) and it is missing or stale; once per weights. TensorRT engines are
    built by ``python export/to_trt.py`` on the GPU that serves them, as the teacher's and the student's."""
    from fos.checkpoint import graph_problem, side_graph

    if backend not in ("auto", "onnxruntime", "tensorrt") or not (have("onnx") and have("onnxruntime")):
        return
    problem = graph_problem(side_graph(path, name), path)
    if not problem:
        return
    log.info("exporting the %s graph (%s); once per set of weights", name, problem)
    if name == "inpaint":
        from fos.export.inpaint import export_inpainter

        export_inpainter(path)
    else:
        from fos.export.refer import export_referrer

        export_referrer(path)


def prepare_inpainter(weights: str = SHIPPED, method: str = "spl", backend: str = "auto"):
    """The inpainter for "erase what is in the box first": ``spl`` from ``<weights>/inpaint.safetensors``
    (its ONNX graph exported once into ``<weights>/onnx`` when the backend allows), or OpenCV's ``telea``
    / ``ns`` (or contrib's ``shiftmap``, ``fsr-fast``, ``fsr-best``). Falls back to
    :data:`fos.inpaint.infer.FALLBACK` with a warning when the SPL weights are missing."""
    from fos.inpaint.infer import FALLBACK, Inpainter

    path = WeightsDir(weights).path("inpainter")
    if method == "spl" and not os.path.isfile(path):
        log.warning("no inpainting weights at %s: erasing with OpenCV's %s (python -m fos.inpaint.train)", path,
                    FALLBACK)
        method = FALLBACK
    if method == "spl":
        export_if_stale(path, "inpaint", backend)
    return Inpainter(method, path, backend=backend)


def prepare_referrer(path: str, backend: str = "auto"):
    """The referring segmenter of ``path`` for the app's "describe the object" box (its ONNX graph
    exported once into ``<weights>/onnx`` when the backend allows); None when the weights are missing."""
    if not os.path.isfile(path):
        log.warning("no referring weights at %s: the describe-the-object box is off (python -m fos.refer train)", path)
        return None
    from fos.refer.infer import Referrer

    export_if_stale(path, "refer", backend)
    return Referrer(path, backend=backend)


def load(kind: str, weights: str = SHIPPED, backend: str = "auto"):
    """The one way to load what a weights folder serves (:data:`fos.weights.MODELS`), on ``backend``
    (``auto``: TensorRT where a GPU and current engines are, then ONNX Runtime, its graphs exported first
    when they are missing or stale, else torch; ``tensorrt`` runs engines built by ``export/to_trt.py``):

    * ``teacher`` / ``student``: the :class:`fos.runtime.Backend` that runs both;
    * ``prefilter``: the distilled :class:`fos.prefilter.Prefilter` of the folder's student (None without one);
    * ``localizer``: :class:`fos.localize.infer.Localizer`;
    * ``inpainter``: :class:`fos.inpaint.infer.Inpainter` (SPL);
    * ``referrer``: :class:`fos.refer.infer.Referrer`.

    A missing weights file is one :class:`WeightsError` that names the command that trains it."""
    w = WeightsDir(weights)
    path = w.path(kind)  # an unknown kind is refused here
    if not w.has(kind):
        from fos.weights import MODELS

        raise WeightsError(f"{path} not found: train it with `{MODELS[kind][1]}` or pass another weights folder")
    if kind in ("teacher", "student"):
        if backend in ("auto", "onnxruntime"):
            ensure_graphs(w)
        return get_backend(backend, w)
    if kind == "prefilter":
        from fos.search import weights_prefilter

        return weights_prefilter(w, w.student_sha256)
    if kind == "localizer":
        from fos.localize.infer import Localizer

        return Localizer(path)
    if kind == "inpainter":
        return prepare_inpainter(weights, "spl", backend)
    return prepare_referrer(path, backend)
