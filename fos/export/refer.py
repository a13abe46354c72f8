"""ONNX export of the referring segmenter's inference path, and its parity check on real photos.

One graph, ``refer.onnx``: ``image`` (1, 3, S, S, ImageNet-normalized) and ``tokens`` (T, L) int64 (the
query first, then the category bank; :meth:`fos.refer.infer.Referrer.query_tokens`) -> ``responses``
(1, T, h, w), ``maps`` (1, T, h, w), ``mask_logits`` (1, 1, h, w) of the query and ``logits`` (1, T);
T and L are dynamic. The sidecar ``refer.json`` records the source weights' sha256 (so
:class:`fos.refer.infer.Referrer` serves it only while it is current), the opset, the parity measured
here and the TensorRT optimization profile (:func:`trt_profile`).
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch import nn

from fos.checkpoint import file_sha256
from fos.export.onnx import OPSET, finish_graph, real_photos
from fos.refer.infer import DEFAULT_WEIGHTS, Referrer, bank_phrases, load_referrer, onnx_path

log = logging.getLogger("fos.export")
# max |onnxruntime - torch| over what is served: the maps (in [0, 1]) and the segmenter's probability
# (the sigmoid of the mask logits). The raw responses are not compared: the location gate's logits are
# 100 times a linear map of the phrase, so float32 rounding reaches them amplified (measured up to 4e-2 on
# responses of -15 to 4, the shipped weights on real photos), while the maps made from them differ by
# under 1e-4
TOLERANCE = 1e-3
OUTPUTS = ["responses", "maps", "mask_logits", "logits"]


def served(x: np.ndarray, name: str) -> np.ndarray:
    """An output as it is used: mask logits as the segmenter's probability, maps as they are."""
    return 1 / (1 + np.exp(-x)) if name == "mask_logits" else x


def trt_profile(cfg) -> dict:
    """The TensorRT optimization profile of ``tokens``: up to the query plus every category phrase
    (:func:`fos.refer.infer.bank_phrases`), each up to ``cfg.max_tokens`` words."""
    phrases = len(bank_phrases(cfg)) + 1
    return {"tokens": {"min": [1, 1], "opt": [phrases, min(4, cfg.max_tokens)], "max": [phrases, cfg.max_tokens]}}


class ReferOnnx(nn.Module):
    """Export-only wrapper (do not call directly)."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, image, tokens):
        return self.m(image, tokens)


def export_referrer(weights: str = DEFAULT_WEIGHTS, out: str | None = None, data: str | None = None,
                    check: bool = True) -> dict:
    """Export ``weights`` to ``out`` (default ``<weights dir>/onnx/refer.onnx``), check parity on real
    photos with phrases of every form, write the sidecar; raises RuntimeError past :data:`TOLERANCE`
    (the sidecar then records no source, so the graph is never served)."""
    model = load_referrer(weights)
    out = out or onnx_path(weights)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    s = model.cfg.input_size
    ref = Referrer(model)
    c = model.cfg.categories[0]
    tokens = ref.query_tokens(f"the small white {c} on the left")
    image = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    tmp = out + ".tmp"
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on instance norm and indexing
        torch.onnx.export(ReferOnnx(model), (image, tokens), tmp, input_names=["image", "tokens"],
                          output_names=OUTPUTS, opset_version=OPSET, dynamo=False,
                          dynamic_axes={"tokens": {0: "phrases", 1: "length"}, "responses": {1: "phrases"},
                                        "maps": {1: "phrases"}, "logits": {1: "phrases"}})
    import onnx

    onnx.checker.check_model(onnx.load(tmp))
    os.replace(tmp, out)
    meta = {"source": os.path.abspath(weights), "opset": OPSET,
            "inputs": {"image": [1, 3, s, s], "tokens": ["phrases", "length"]}, "outputs": OUTPUTS,
            "sha256": file_sha256(out), "trt_profile": trt_profile(model.cfg)}
    if check:
        from fos.preprocess import load_image, photo_input
        from fos.threads import ort_session

        sess = ort_session(out)
        diff, n = 0.0, 0
        for path in real_photos(data, 3, "referring"):
            x = photo_input(load_image(path, "RGB", what="photo"), s)[None].numpy()
            for text in (c, f"{c} on the right", f"the big {c}", f"red {c} at the top"):
                t = ref.query_tokens(text).numpy()
                got = sess.run(None, {"image": x, "tokens": t})
                want = ref.run_network(x, t)
                diff = max(diff, *(float(np.abs(served(g, name) - served(w, name)).max())
                                   for g, w, name in zip(got, want, OUTPUTS) if name in ("maps", "mask_logits")))
                n += 1
        return finish_graph(out, meta, weights, "referring", {"queries": n, "max_abs_diff": diff, "tolerance": TOLERANCE},
                            "queries")
    return finish_graph(out, meta, weights, "referring")
