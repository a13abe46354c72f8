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

# the package's API lives in fos.runtime.backends; this file only names it
from fos.runtime.backends import *  # noqa: F401,F403
from fos.runtime.backends import __doc__  # noqa: F401,E402
