"""ONNX export of the SPL inpainting generator, and its parity check on real photos.

One graph, ``inpaint.onnx``: ``image`` (B, 3, S, S) in [-1, 1], ``mask`` (B, 1, S, S) -> ``filled``
(B, 3, S, S), dynamic batch, next to the other graphs in ``<weights dir>/onnx``. A sidecar
``inpaint.json`` records the source weights' sha256 (so :class:`fos.inpaint.infer.Inpainter` serves it
only while it is current), the opset, the parity measured here and the TensorRT profile (batch 1 to 16).
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch import nn

from fos.checkpoint import file_sha256
from fos.export.onnx import OPSET, _export_one, finish_graph, real_photos
from fos.inpaint.infer import DEFAULT_WEIGHTS, Inpainter, load_inpainter, network_inputs, onnx_path

log = logging.getLogger("fos.export")
TOLERANCE = 1e-3  # max |onnxruntime - torch| of the filled crop (values in [-1, 1])
TRT_MAX_BATCH = 16  # the TensorRT engine's largest batch of crops (the app erases one box at a time)


class InpaintOnnx(nn.Module):
    """Export-only wrapper (do not call directly): the generator's filled crop."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, image, mask):
        return self.m(image, mask)[0]


def real_crops(data_root: str | None, n: int = 4, size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` real crops with box holes (msrc-fos test photos when ``data_root`` exists, else the app's examples)."""
    from fos.inpaint.masks import box_hole

    rng = np.random.default_rng(seed)
    paths = real_photos(data_root, n, "inpainting")
    from fos.preprocess import load_image

    imgs, masks = [], []
    for p in paths:
        a = np.asarray(load_image(p, "RGB", what="photo"))
        i, m = network_inputs(a, box_hole(*a.shape[:2], rng), size)
        imgs.append(i[0])
        masks.append(m[0])
    return np.stack(imgs), np.stack(masks)


def export_inpainter(weights: str = DEFAULT_WEIGHTS, out: str | None = None, data: str | None = None,
                     check: bool = True) -> dict:
    """Export ``weights`` to ``out`` (default ``<weights dir>/onnx/inpaint.onnx``), check parity on real
    crops, write the sidecar; raises RuntimeError past :data:`TOLERANCE` (the sidecar then says so and
    the graph is not served, since its sidecar records no current source)."""
    model = load_inpainter(weights)
    out = out or onnx_path(weights)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    s = model.cfg.size
    g = torch.Generator().manual_seed(0)
    inputs = {"image": torch.rand(2, 3, s, s, generator=g) * 2 - 1,
              "mask": (torch.rand(2, 1, s, s, generator=g) > 0.5).float()}
    _export_one(InpaintOnnx(model), inputs, ["filled"], out, fp16=False)
    meta = {"source": os.path.abspath(weights), "opset": OPSET, "inputs": {"image": ["batch", 3, s, s],
            "mask": ["batch", 1, s, s]}, "outputs": ["filled"], "sha256": file_sha256(out),
            "trt_profile": {k: {"min": [1, c, s, s], "opt": [1, c, s, s], "max": [TRT_MAX_BATCH, c, s, s]}
                            for k, c in (("image", 3), ("mask", 1))}}
    if check:
        from fos.threads import ort_session

        img, mask = real_crops(data, size=s)
        sess = ort_session(out)
        got = sess.run(["filled"], {"image": img, "mask": mask})[0]
        want = Inpainter("spl", model=model).run_network(img, mask)
        diff = float(np.abs(got - want).max())
        return finish_graph(out, meta, weights, "inpainting", {"crops": len(img), "max_abs_diff": diff,
                                                               "tolerance": TOLERANCE}, "crops")
    return finish_graph(out, meta, weights, "inpainting")
