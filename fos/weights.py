"""The weights folder: one object that knows its layout.

::

    WEIGHTS/teacher.safetensors (+ teacher.json)   the teacher and its config
    WEIGHTS/student.safetensors (+ student.json)   the student and its config
    WEIGHTS/prefilter.safetensors (+ .json)        the prefilter distilled from the student (python -m fos.train.prefilter)
    WEIGHTS/localizer.safetensors (+ .json)        DA-WSOL, photos -> boxes and cutouts (python -m fos.localize.train)
    WEIGHTS/inpaint.safetensors (+ .json)          SPL, erase what is in a box (python -m fos.inpaint.train)
    WEIGHTS/refer.safetensors (+ .json)            TRIS, phrase -> mask (python -m fos.refer train)
    WEIGHTS/onnx/                                  exported graphs + manifest.json   (python export/to_onnx.py)
    WEIGHTS/trt/                                   TensorRT engines + one .json each (python export/to_trt.py)
    WEIGHTS/library-<sha12>/                       the app's default library, encoded by these weights

Only ``export/to_onnx.py``, ``export/to_trt.py`` and the app's start-up (:mod:`fos.bootstrap`) write
into it, and only the generated folders above.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

from fos.checkpoint import file_sha256

#: the shipped weights folder, found from the package rather than the working folder, so that the
#: CLIs and the app run from anywhere (``weights/`` beside ``fos/`` in a clone or a Space)
SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")


#: every model a weights folder holds -> (its file, the command that trains it)
MODELS = {
    "teacher": ("teacher.safetensors", "python -m fos.train teacher"),
    "student": ("student.safetensors", "python -m fos.train student"),
    "prefilter": ("prefilter.safetensors", "python -m fos.train.prefilter"),
    "localizer": ("localizer.safetensors", "python -m fos.localize.train"),
    "inpainter": ("inpaint.safetensors", "python -m fos.inpaint.train"),
    "referrer": ("refer.safetensors", "python -m fos.refer train"),
}


@dataclass(frozen=True)
class WeightsDir:
    root: str = SHIPPED

    @property
    def teacher(self) -> str:
        return self.path("teacher")

    @property
    def student(self) -> str:
        return self.path("student")

    @property
    def prefilter(self) -> str:
        return self.path("prefilter")

    @property
    def onnx(self) -> str:
        return os.path.join(self.root, "onnx")

    @property
    def trt(self) -> str:
        return os.path.join(self.root, "trt")

    def path(self, kind: str) -> str:
        """The weights file of a model kind (:data:`MODELS`)."""
        if kind not in MODELS:
            from fos.errors import UnknownModelError

            raise UnknownModelError(f"unknown model kind {kind!r}; the weights folder holds {', '.join(MODELS)}")
        return os.path.join(self.root, MODELS[kind][0])

    def has(self, kind: str) -> bool:
        return os.path.isfile(self.path(kind))

    def manifest(self) -> dict[str, dict]:
        """Every model kind: its file, whether it is there, and what makes it."""
        return {k: {"path": self.path(k), "present": self.has(k), "made_by": MODELS[k][1]} for k in MODELS}

    @cached_property
    def student_sha256(self) -> str:
        """sha256 of the student weights (what libraries and exported graphs record)."""
        return file_sha256(self.student)

    @cached_property
    def teacher_sha256(self) -> str:
        """sha256 of the teacher weights (what exported graphs record)."""
        return file_sha256(self.teacher)

    def default_library(self) -> str:
        """Where the app keeps the default library encoded by these weights (one folder per student)."""
        return os.path.join(self.root, f"library-{self.student_sha256[:12]}")
