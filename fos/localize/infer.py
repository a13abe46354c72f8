"""The localizer as a user meets it: photo + category -> box, score, mask, cutout.

Weights: a safetensors file with a JSON config beside it (``WsolCfg``: classes, thresholds chosen on
the train split, the default mask method), written by ``python -m fos.localize.train``. The shipped
one is ``weights/localizer.safetensors``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from fos.weights import SHIPPED
from fos.checkpoint import load_paired, save_paired
from fos.config import to_dict
from fos.localize.config import WsolCfg
from fos.localize.masks import METHODS, box_to_mask, cutout, u2netp_path
from fos.localize.metrics import cam_box
from fos.localize.model import WsolNet, normalize_cams, upsample_cam
from fos.preprocess import InputError, load_image, photo_input

DEFAULT_WEIGHTS = os.path.join(SHIPPED, "localizer.safetensors")
log = logging.getLogger("fos.localize")


def save_localizer(model: WsolNet, path: str, **meta) -> None:
    save_paired(model, path, model_name="localizer", wsol_cfg=to_dict(model.cfg), **meta)


def load_localizer(path: str = DEFAULT_WEIGHTS) -> WsolNet:
    return load_paired(path, "wsol_cfg", WsolCfg, lambda cfg: WsolNet(replace(cfg, pretrained=False)),
                       "train them with `python -m fos.localize.train` or pass --weights", "localizer")


@dataclass
class Localization:
    category: str
    box: tuple[int, int, int, int]  # pixels of the photo, x2/y2 exclusive
    score: float  # the classifier's probability that the photo shows the category
    cam: np.ndarray  # (H, W) float32 in [0, 1], photo size

    def to_json(self) -> dict:
        return {"box": list(self.box), "score": round(self.score, 4)}


class Localizer:
    """A trained :class:`~fos.localize.model.WsolNet` with its thresholds."""

    def __init__(self, model: WsolNet | str = DEFAULT_WEIGHTS):
        self.model = load_localizer(model) if isinstance(model, str) else model.eval()
        self.cfg: WsolCfg = self.model.cfg
        self.classes = list(self.cfg.classes)
        self.mask_method = self.cfg.mask_method
        if self.mask_method == "u2netp":
            try:
                u2netp_path()
            except InputError as e:  # e.g. a Space that installs requirements.txt only
                log.warning("%s; the default mask method falls back to grabcut", e)
                self.mask_method = "grabcut"

    def check_category(self, category: str) -> int:
        if category not in self.classes:
            raise InputError(f"unknown category {category!r}; the localizer knows {self.classes}")
        return self.classes.index(category)

    @torch.no_grad()
    def predict(self, photo: Image.Image) -> tuple[np.ndarray, torch.Tensor]:
        """(class probabilities (K,), min-max normalized CAMs (K, h, w)) of an RGB photo."""
        logits, cams = self.model(photo_input(photo, self.cfg.input_size)[None])
        return torch.sigmoid(logits[0]).numpy(), normalize_cams(cams[0])

    def localize(self, photo, category: str) -> Localization:
        k = self.check_category(category)
        img = load_image(photo, "RGB", what="photo")
        probs, cams = self.predict(img)
        cam = upsample_cam(cams[k], img.width, img.height)
        box = cam_box(cam, self.cfg.box_threshold) or (0, 0, img.width, img.height)
        return Localization(category, box, float(probs[k]), cam)

    def mask(self, photo, loc: Localization, box=None, method: str | None = None) -> np.ndarray:
        """Object mask inside ``box`` (default: the localized one) by ``method`` (default: the config's)."""
        method = method or self.mask_method
        if method not in METHODS:
            raise InputError(f"unknown mask method {method!r}; choose one of {list(METHODS)}")
        arr = np.asarray(load_image(photo, "RGB", what="photo"))
        return box_to_mask(method, arr, box or loc.box, loc.cam, self.cfg.mask_threshold)

    def cut(self, photo, category: str, box=None, method: str | None = None) -> "Cutout":
        """Localize ``category`` in ``photo`` and cut it out; ``box`` overrides the localized box
        (validated against the photo)."""
        from fos.preprocess import validate_box

        img = load_image(photo, "RGB", what="photo")
        loc = self.localize(img, category)
        if box is not None:
            box = validate_box(box, img.width, img.height)
        b = box or loc.box
        m = self.mask(img, loc, b, method)
        whole_box = not m.any()
        if whole_box:  # nothing found inside the box: keep the whole box rather than an empty cutout, and say so
            m = np.zeros_like(m)
            m[b[1]:b[3], b[0]:b[2]] = True
        fg, mask_img = cutout(np.asarray(img), b, m)
        return Cutout(loc, tuple(int(v) for v in b), m, fg, mask_img, method or self.mask_method, whole_box)


@dataclass
class Cutout:
    loc: Localization  # the localizer's box and score
    box: tuple[int, int, int, int]  # the box the cutout was made in (the localized one, or the given one)
    mask: np.ndarray  # (H, W) bool, photo size, inside ``box`` only
    image: Image.Image  # RGB: the box's pixels, white outside the mask (a FOSD cutout)
    mask_image: Image.Image  # L: the mask inside the box, 0/255
    method: str
    whole_box: bool = False  # the mask method found nothing in the box, so the cutout is the whole box

    def rgba(self) -> Image.Image:
        out = self.image.convert("RGBA")
        out.putalpha(self.mask_image)
        return out


def draw_localization(img: Image.Image, box, mask: np.ndarray | None = None) -> Image.Image:
    """The photo with the box outlined and the mask tinted red (what the app shows)."""
    from PIL import ImageDraw

    arr = np.asarray(img.convert("RGB")).copy()
    if mask is not None:
        arr[mask] = (0.5 * arr[mask] + 0.5 * np.array([255, 64, 64])).astype(np.uint8)
    out = Image.fromarray(arr)
    ImageDraw.Draw(out).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(255, 64, 64), width=3)
    return out
