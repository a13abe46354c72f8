"""The referring segmenter as a user meets it: photo + phrase -> mask, box, score, response map, cutout.

Weights: a safetensors file with its JSON config beside it (``ReferCfg``), written by
``python -m fos.refer train``; the shipped one is ``weights/refer.safetensors``. ``backend``: ``torch``,
``onnxruntime``, ``tensorrt`` or ``auto`` (:func:`fos.runtime.graphs.open_graph`: TensorRT where a GPU and
``<weights dir>/trt/refer.engine`` built from the current graph are, then ONNX Runtime when
``<weights dir>/onnx/refer.onnx`` was exported from these weights, else torch), as the other graphs.

A query is the phrase, then the category bank (one phrase per known category, the query's own left
out): the calibration weighs the query's response against theirs. The mask (``mask_from``) is the
segmenter's probability at ``mask_threshold`` or more, upsampled to the photo, keeping its connected
component with the most probability mass; or the response at ``peak_fraction`` of its peak or more,
keeping the connected component that holds the peak; or a u2netp / GrabCut mask the response and the
phrase's location words prompt (``prompted``, ``instance``: the shipped one; :mod:`fos.refer.masks`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from fos.weights import SHIPPED
from fos.checkpoint import graph_problem, load_paired, save_paired, side_graph
from fos.runtime.graphs import open_graph
from fos.config import BACKENDS, to_dict
from fos.preprocess import InputError, load_image, photo_input
from fos.refer.config import ReferCfg
from fos.refer.masks import instance_mask, keep_heaviest, keep_peak, prompted_mask  # noqa: F401 (keep_*: part of this API)
from fos.refer.model import ReferNet
from fos.refer.phrases import parse, words

DEFAULT_WEIGHTS = os.path.join(SHIPPED, "refer.safetensors")
log = logging.getLogger("fos.refer")


def save_referrer(model: ReferNet, path: str, **meta) -> None:
    save_paired(model, path, model_name="refer", refer_cfg=to_dict(model.cfg), **meta)


def load_referrer(path: str = DEFAULT_WEIGHTS) -> ReferNet:
    return load_paired(path, "refer_cfg", ReferCfg, lambda cfg: ReferNet(replace(cfg, pretrained=False)),
                       "train them with `python -m fos.refer train` or pass --weights", "referring")


def bank_phrases(cfg: ReferCfg) -> list[str]:
    """The phrases a query is calibrated against: every category name."""
    return list(cfg.categories)


def onnx_path(weights: str) -> str:
    return side_graph(weights, "refer")


def onnx_problem(weights: str) -> str | None:
    """None when ``onnx_path(weights)`` exists and was exported from these weights, else why not."""
    return graph_problem(onnx_path(weights), weights)


def upsample(m: np.ndarray, width: int, height: int) -> np.ndarray:
    """A map (h, w) -> (height, width) float32, bilinear."""
    t = torch.from_numpy(np.ascontiguousarray(m, np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


@dataclass
class Referral:
    text: str
    category: str
    box: tuple[int, int, int, int]  # pixels of the photo, x2/y2 exclusive
    score: float  # the classifier's probability that the phrase holds in the photo
    mask: np.ndarray  # (H, W) bool, photo size
    response: np.ndarray  # (H, W) float32 in [0, 1]: the (calibrated) response map, photo size
    peak: tuple[int, int]  # (x, y) of the response's maximum
    ignored: list[str]  # words of the phrase the model does not know (left out)

    def to_json(self) -> dict:
        return {"text": self.text, "category": self.category, "box": list(self.box), "score": round(self.score, 4),
                "peak": list(self.peak), "mask_pixels": int(self.mask.sum()), "ignored_words": self.ignored}

    def rgba(self, photo) -> Image.Image:
        """The RGBA cutout: the box's pixels, transparent outside the mask."""
        arr = np.asarray(load_image(photo, "RGB", what="photo"))
        x1, y1, x2, y2 = self.box
        out = Image.fromarray(arr[y1:y2, x1:x2]).convert("RGBA")
        out.putalpha(Image.fromarray((self.mask[y1:y2, x1:x2] * 255).astype(np.uint8), "L"))
        return out


class Referrer:
    """``Referrer(weights).refer(photo, "dog on the left")``."""

    def __init__(self, model: ReferNet | str = DEFAULT_WEIGHTS, backend: str = "auto"):
        if backend not in ("auto", *BACKENDS):
            raise InputError(f"unknown backend {backend!r}; choose auto, {' or '.join(BACKENDS)}")
        weights = model if isinstance(model, str) else None
        self.model = load_referrer(model) if isinstance(model, str) else model.eval()
        self.cfg: ReferCfg = self.model.cfg
        self.categories = list(self.cfg.categories)
        self.session, self.backend = open_graph(weights, "refer", backend) if weights else (None, "torch")
        self.bank = bank_phrases(self.cfg)
        if self.cfg.mask_from in ("prompted", "instance") and self.cfg.prompt_method == "u2netp":
            from fos.localize.masks import u2netp_path

            try:
                u2netp_path()
            except InputError as e:  # e.g. a Space that installs requirements.txt only
                log.warning("%s; %s masks fall back to grabcut", e, self.cfg.mask_from)
                self.cfg = replace(self.cfg, prompt_method="grabcut")

    def knows(self) -> str:
        return (f"it knows the categories {', '.join(self.categories)}; with location (on the left, in the middle, "
                "on the right, at the top, at the bottom), size (big, small) and colour words")

    def check_phrase(self, text: str):
        """(the parsed phrase, ignored words); a clear error for an empty phrase, one with no known word
        or one without a category the model knows."""
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"empty phrase: describe the object, e.g. '{self.categories[0]} on the left'; {self.knows()}")
        p, _ = parse(text, self.categories)
        vocab = set(self.cfg.vocab)
        ws = words(text)
        if not any(w in vocab for w in ws):
            raise InputError(f"no word of {text!r} is known to the model; {self.knows()}")
        if p is None:
            raise InputError(f"{text!r} names no category the model saw in training; {self.knows()}")
        return p, [w for w in ws if w not in vocab]

    def query_tokens(self, text: str) -> torch.Tensor:
        norm = " ".join(w for w in words(text) if w != "the")
        return self.model.text.tokenize([text] + [b for b in self.bank if b != norm])

    @torch.no_grad()
    def run_network(self, x: np.ndarray, tokens: np.ndarray, feats: torch.Tensor | None = None):
        """(responses, maps, query mask logits, photo-phrase logits) as numpy, by the serving backend
        (torch from the image encoder's ``feats`` when given)."""
        if feats is not None:
            return [t.numpy() for t in self.model.forward_features(feats, torch.from_numpy(tokens))]
        if self.session is not None:
            return self.session.run(None, {"image": x.astype(np.float32), "tokens": tokens.astype(np.int64)})
        return [t.numpy() for t in self.model(torch.from_numpy(x), torch.from_numpy(tokens))]

    @torch.no_grad()
    def features(self, img: Image.Image) -> torch.Tensor:
        """The image encoder's features of a photo (1, C, h, w), to score many phrases on it (torch)."""
        return self.model.image(photo_input(img, self.cfg.input_size)[None])

    def predict(self, img: Image.Image, text: str, feats: torch.Tensor | None = None):
        """(response (H, W) in [0, 1] over its peak, segmenter probability (H, W), score, raw peak
        response) of an RGB photo and a phrase, photo size; no checks."""
        x = None if feats is not None else photo_input(img, self.cfg.input_size)[None].numpy()
        _, maps, seg, cls = self.run_network(x, self.query_tokens(text).numpy(), feats)
        resp = maps[0, 0]
        prob = upsample(1 / (1 + np.exp(-seg[0, 0])), img.width, img.height)
        full = upsample(resp, img.width, img.height)
        full = np.clip(full / max(float(full.max()), 1e-6), 0, 1).astype(np.float32)
        return full, prob, float(1 / (1 + np.exp(-cls[0, 0]))), float(resp.max())

    def mask_of(self, prob: np.ndarray, response: np.ndarray, mask_from: str | None = None,
                photo: np.ndarray | None = None, attrs: dict | None = None) -> np.ndarray:
        """The final mask (by ``mask_from``, default the config's) from the segmenter's probability and the
        response over its peak; ``prompted`` and ``instance`` also need the RGB uint8 ``photo`` and the phrase's
        ``attrs``."""
        how = mask_from or self.cfg.mask_from
        if how in ("prompted", "instance"):
            if photo is None:
                raise ValueError(f"{how} masks need the photo")
            c = self.cfg
            if how == "instance":
                return instance_mask(photo, response, attrs or {}, c.prompt_method, c.peak_fraction, c.box_pad)
            return prompted_mask(photo, response, attrs or {}, c.prompt_method, c.peak_fraction, c.region_margin,
                                 c.box_pad)
        if how == "response":
            return keep_peak(response >= self.cfg.peak_fraction, response)
        mask = prob >= self.cfg.mask_threshold
        return keep_heaviest(mask, prob) if mask.any() else mask

    def refer(self, photo, text: str, feats: torch.Tensor | None = None) -> Referral:
        p, ignored = self.check_phrase(text)
        img = load_image(photo, "RGB", what="photo")
        full, prob, score, peak = self.predict(img, text, feats)
        if peak < self.cfg.respond_threshold:
            raise InputError(f"nothing in this photo responds to {text!r} (peak response {peak:.3f}, "
                             f"under {self.cfg.respond_threshold}); try another phrase or photo")
        mask = self.mask_of(prob, full, photo=np.asarray(img), attrs=dict(p.attrs))
        if not mask.any():
            raise InputError(f"the segmenter found no pixel of {text!r} in this photo (highest probability "
                             f"{float(prob.max()):.3f}); try another phrase or photo")
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        py, px = np.unravel_index(int(np.argmax(full)), full.shape)
        return Referral(text, p.category, box, score, mask, full, (int(px), int(py)), ignored)


def draw_response(img: Image.Image, response: np.ndarray, box=None) -> Image.Image:
    """The photo under the response map (red-yellow heat), with the box outlined: what the app shows."""
    from PIL import ImageDraw

    a = np.asarray(img.convert("RGB"), np.float32)
    heat = np.stack([response * 255, response * 160, response * 0], -1)
    out = Image.fromarray((a * 0.45 + heat * 0.55).clip(0, 255).astype(np.uint8))
    if box is not None:
        ImageDraw.Draw(out).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(64, 160, 255), width=3)
    return out
