"""What every backend shares: the graph contract, the interface, errors and the manifest reader.
Imported by :mod:`fos.runtime` and :mod:`fos.runtime.trt` (never the other way round)."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np

from fos.errors import BackendError
from fos.config import BACKENDS, PreprocessCfg  # noqa: F401  (BACKENDS: re-exported by fos.runtime)
from fos.preprocess import GEOMETRY_DIM
from fos.weights import WeightsDir

# graph name -> (input names, output names): the contract of export, runtime and TensorRT
GRAPHS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "teacher": (("composite", "geom"), ("score", "feat")),
    "student_bg": (("background", "crop_box"), ("bg_part", "emb")),
    "student_fg": (("foreground",), ("fg_part", "emb")),
    "student_head": (("bg_part", "fg_part", "geom"), ("score",)),
}
# what the exported graphs compute, by version: 2 = the student head's score folded (conv2, the spatial
# mean and the classifier in one map, DistillHead.score). Graphs of another version are re-exported.
GRAPH_VERSION = 2
EXPORT_HINT = "export them with `python export/to_onnx.py --weights {w} --out {o}`"




def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def as_weights(weights: str | WeightsDir) -> WeightsDir:
    return weights if isinstance(weights, WeightsDir) else WeightsDir(weights)


class Backend:
    """The interface: see the table in :mod:`fos.runtime`."""

    name = "backend"
    preprocess_cfg: PreprocessCfg
    student_sha256: str = ""  # sha256 of the student weights: libraries built by another student are refused
    student_path: str = ""  # the student weights file it runs (or its graphs were exported from)
    description = ""

    def student_bg(self, background, crop_box):
        raise NotImplementedError

    def student_fg(self, foreground):
        raise NotImplementedError

    def student_head(self, bg_part, fg_part, geom):
        raise NotImplementedError

    def teacher(self, composite, geom):
        raise NotImplementedError

    def lighting(self, geom) -> np.ndarray:
        """The student's photometric term alone (N,), from the pair vectors ``geom`` (N, 17): the lighting
        share of a score that the app shows beside the geometry and appearance shares. The term is a small
        MLP, run in torch from the student weights whatever the backend; zeros for a student without one."""
        import torch

        if not hasattr(self, "_photo"):
            from fos.checkpoint import read_state_dict
            from fos.models.discofos import PhotometricTerm

            self._photo = None
            sd = {k[len("head.photo."):]: v for k, v in read_state_dict(self.student_path).items()
                  if k.startswith("head.photo.")} if self.student_path else {}
            if sd:
                term = PhotometricTerm(sd["mlp.0.weight"].shape[0])
                term.load_state_dict(sd, strict=True)
                self._photo = term.eval()
        g = np.asarray(geom, np.float32)
        if self._photo is None:
            return np.zeros(len(g), np.float32)
        with torch.no_grad():
            return self._photo(torch.from_numpy(g)).numpy()


# --------------------------------------------------------------------------- exported graphs
def read_manifest(onnx_dir: str) -> dict:
    path = os.path.join(onnx_dir, "manifest.json")
    if not os.path.isfile(path):
        raise BackendError(f"no exported graphs in {onnx_dir} (manifest.json missing): run `python export/to_onnx.py`")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
        m["source_weights"]["student"]["sha256"], m["graphs"], m["preprocess_cfg"]  # noqa: B018 (fields we read)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BackendError(f"{path} is not a valid graph manifest ({type(e).__name__}: {e}): "
                           "re-export with `python export/to_onnx.py`") from e
    return m


def manifest_problem(manifest: dict, where: str) -> str:
    """Why graphs of ``manifest`` were made by other code than this ("" when they were not): another
    :data:`GRAPH_VERSION`, or a ``geom`` input of another width than :data:`GEOMETRY_DIM`."""
    if manifest.get("graph_version", 1) != GRAPH_VERSION:
        return (f"the graphs in {where} are of graph version {manifest.get('graph_version', 1)}, this version "
                f"runs version {GRAPH_VERSION} (the student head's score folded into one map)")
    bad = [k for k, g in manifest.get("graphs", {}).items()
           if "geom" in g.get("inputs", {}) and g["inputs"]["geom"][-1] != GEOMETRY_DIM]
    if bad:
        return f"the graphs in {where} take another geometry width than this version ({GEOMETRY_DIM} columns)"
    return ""


class GraphBackend(Backend):
    """A backend that runs the exported graphs of :data:`GRAPHS` by name."""

    def _run(self, graph: str, **inputs):
        raise NotImplementedError

    def student_bg(self, background, crop_box):
        return self._run("student_bg", background=background, crop_box=crop_box)

    def student_fg(self, foreground):
        return self._run("student_fg", foreground=foreground)

    def student_head(self, bg_part, fg_part, geom):
        return self._run("student_head", bg_part=bg_part, fg_part=fg_part, geom=geom)

    def teacher(self, composite, geom):
        return self._run("teacher", composite=composite, geom=geom)[0]
