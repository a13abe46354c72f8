"""Erase what is in a box (or any hole) as a user meets it: photo + hole -> filled photo.

Every method works on the same crop around the hole (:func:`fos.inpaint.masks.crop_window`) and
pastes its result back into the hole only, so any photo size works and pixels outside the hole are
never changed:

- ``spl``: the SPL generator (weights: safetensors + JSON ``InpaintCfg`` sidecar, written by
  ``python -m fos.inpaint.train``; shipped: ``weights/inpaint.safetensors``). The crop is resized to
  ``cfg.size`` squared, filled, and resized back. With ``cfg.init == "telea"`` the crop's hole is first
  filled by Telea at full resolution; the network sees that fill at ``cfg.size`` and its correction
  (output minus input) is upsampled and added to the full-resolution fill. Runs in torch, in ONNX
  Runtime when its exported graph ``<weights dir>/onnx/inpaint.onnx`` is current, or in TensorRT from
  ``<weights dir>/trt/inpaint.engine`` (:func:`fos.runtime.graphs.open_graph`).
- ``telea``, ``ns``: OpenCV's ``cv2.inpaint`` (Telea's fast marching; Navier-Stokes), at full resolution.
- ``shiftmap``, ``fsr-fast``, ``fsr-best``: OpenCV contrib's ``cv2.xphoto.inpaint`` (He and Sun's shift-map,
  exemplar based, run in CIELab as its documentation asks; Seiler and Genser's frequency-selective
  reconstruction, fast and best). They are slow (seconds per fill even at 128 px on 2 cores, FSR best
  minutes), so they work on the crop resized so its longer side is at most ``XPHOTO_SIDE`` and their
  fill is resized back (the hole only); they need ``opencv-contrib-python-headless``
  (a superset of ``opencv-python-headless``, the same ``cv2``).
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from PIL import Image

from fos.weights import SHIPPED
from fos.checkpoint import graph_problem, load_paired, save_paired, side_graph
from fos.runtime.graphs import open_graph
from fos.config import BACKENDS, to_dict
from fos.inpaint.config import InpaintCfg
from fos.inpaint.masks import crop_window, hole_bbox
from fos.inpaint.model import SPLNet
from fos.preprocess import RESAMPLE, InputError, load_image, validate_box

DEFAULT_WEIGHTS = os.path.join(SHIPPED, "inpaint.safetensors")
CV2_METHODS = ("telea", "ns")  # cv2.inpaint
XPHOTO_METHODS = {"shiftmap": "INPAINT_SHIFTMAP", "fsr-fast": "INPAINT_FSR_FAST", "fsr-best": "INPAINT_FSR_BEST"}
METHODS = ("spl", *CV2_METHODS, *XPHOTO_METHODS)
CONTRIB = "opencv-contrib-python-headless"
XPHOTO_SIDE = 128  # the xphoto methods' working size: the crop's longer side at most this (pixels)
MAX_HOLE_FRACTION = 0.85  # a hole larger than this share of the photo leaves too little to fill from
CV2_RADIUS = 5  # cv2.inpaint's neighbourhood radius (pixels)
# what erases when no SPL weights are installed: the fastest classical method of the README's table that
# is as good as the best one there (NS: Telea's PSNR within 0.03 dB, a lower feature distance, 11% faster at
# 1024 px; shift-map and FSR take seconds a fill and score lower)
FALLBACK = "ns"
log = logging.getLogger("fos.inpaint")


def save_inpainter(model: SPLNet, path: str, **meta) -> None:
    save_paired(model, path, model_name="inpaint", inpaint_cfg=to_dict(model.cfg), **meta)


def load_inpainter(path: str = DEFAULT_WEIGHTS) -> SPLNet:
    return load_paired(path, "inpaint_cfg", InpaintCfg, SPLNet,
                       "train them with `python -m fos.inpaint.train`, pass --weights, or use --method telea|ns",
                       "inpainting")


def onnx_path(weights: str) -> str:
    return side_graph(weights, "inpaint")


def onnx_problem(weights: str) -> str | None:
    """None when ``onnx_path(weights)`` exists and was exported from these weights, else why not."""
    return graph_problem(onnx_path(weights), weights)


def network_inputs(crop: np.ndarray, hole: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB crop (h, w, 3 uint8) and its hole (h, w bool) -> the generator's inputs at ``size``:
    image (1, 3, S, S) in [-1, 1] and mask (1, 1, S, S) in {0, 1}. The mask is resized so that every
    output pixel that touches the hole is in it (the hole only grows)."""
    img = np.asarray(Image.fromarray(crop).resize((size, size), RESAMPLE), dtype=np.float32) / 127.5 - 1
    m = np.asarray(Image.fromarray(hole.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)) > 0
    return img.transpose(2, 0, 1)[None].copy(), m[None, None].astype(np.float32)


def xphoto_problem(method: str) -> str | None:
    """None when OpenCV contrib's ``xphoto`` has ``method``'s algorithm, else what to install."""
    import cv2

    xphoto = getattr(cv2, "xphoto", None)
    if xphoto is None or not hasattr(xphoto, XPHOTO_METHODS[method]):
        return (f"inpainting method {method!r} needs OpenCV contrib's cv2.xphoto.{XPHOTO_METHODS[method]}, which the "
                f"installed OpenCV {cv2.__version__} lacks; `pip uninstall opencv-python-headless && pip install "
                f"{CONTRIB}` (the same cv2, with contrib), or use --method telea")
    return None


def cv2_fill(crop: np.ndarray, hole: np.ndarray, method: str = "telea", radius: int = CV2_RADIUS) -> np.ndarray:
    """OpenCV's inpainting of an RGB uint8 array's ``hole`` (bool): ``telea`` or ``ns`` (``cv2.inpaint``,
    ``radius``), or one of :data:`XPHOTO_METHODS` (``cv2.xphoto.inpaint``)."""
    import cv2

    crop = np.ascontiguousarray(crop)
    if method in CV2_METHODS:
        flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
        return cv2.inpaint(crop, hole.astype(np.uint8) * 255, radius, flag)
    problem = xphoto_problem(method)
    if problem:
        raise InputError(problem)
    valid = (~hole).astype(np.uint8) * 255  # xphoto's mask marks the known pixels
    # shift-map expects CIELab (intensity first); FSR expects BGR
    src = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB if method == "shiftmap" else cv2.COLOR_RGB2BGR)
    dst = np.zeros_like(src)
    cv2.xphoto.inpaint(src, valid, dst, getattr(cv2.xphoto, XPHOTO_METHODS[method]))
    return cv2.cvtColor(dst, cv2.COLOR_LAB2RGB if method == "shiftmap" else cv2.COLOR_BGR2RGB)


class Inpainter:
    """``Inpainter(method).fill(photo, hole)`` and ``.erase_box(photo, box)``.

    ``backend`` (``spl`` only): ``torch``, ``onnxruntime``, ``tensorrt`` or ``auto``
    (:func:`fos.runtime.graphs.open_graph`: TensorRT where a GPU and a current engine are, then ONNX
    Runtime when the exported graph is current, else torch).
    """

    def __init__(self, method: str = "spl", weights: str = DEFAULT_WEIGHTS, backend: str = "auto",
                 model: SPLNet | None = None):
        if method not in METHODS:
            raise InputError(f"unknown inpainting method {method!r}; choose one of {', '.join(METHODS)}")
        if backend not in ("auto", *BACKENDS):
            raise InputError(f"unknown backend {backend!r}; choose auto, {' or '.join(BACKENDS)}")
        self.method, self.weights = method, weights
        self.cfg = InpaintCfg()
        self.model, self.session, self.backend = None, None, "opencv"
        problem = xphoto_problem(method) if method in XPHOTO_METHODS else None
        if problem:
            raise InputError(problem)
        if method != "spl":
            return
        self.model = model if model is not None else load_inpainter(weights)
        self.cfg = self.model.cfg
        self.session, self.backend = open_graph(weights, "inpaint", backend) if model is None else (None, "torch")
        log.info("inpainting with %s (%s)", method, self.backend)

    @property
    def description(self) -> str:
        return f"{self.method} ({self.backend})"

    def run_network(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The generator on a batch: image (B, 3, S, S), mask (B, 1, S, S) -> filled (B, 3, S, S), float32."""
        if self.session is not None:
            return self.session.run(["filled"], {"image": image, "mask": mask})[0]
        with torch.no_grad():
            return self.model(torch.from_numpy(image), torch.from_numpy(mask))[0].numpy()

    def fill(self, photo, hole: np.ndarray) -> Image.Image:
        """``photo`` (path, PIL or array; grayscale and RGBA are converted to RGB) with the pixels where
        ``hole`` (bool, photo-sized) is True filled; the other pixels are returned unchanged."""
        img = load_image(photo, "RGB", what="photo")
        arr = np.asarray(img)
        hole = np.asarray(hole, bool)
        if hole.shape != arr.shape[:2]:
            raise InputError(f"the hole is {hole.shape[1]}x{hole.shape[0]}, the photo {arr.shape[1]}x{arr.shape[0]}")
        if not hole.any():
            raise InputError("the area to erase is empty (zero pixels); draw a box with a width and a height")
        frac = float(hole.mean())
        if frac > MAX_HOLE_FRACTION:
            raise InputError(f"the area to erase covers {frac:.0%} of the photo; inpainting fills it from the pixels "
                             f"around it, so keep it under {MAX_HOLE_FRACTION:.0%} (draw a smaller box)")
        x1, y1, x2, y2 = crop_window(hole_bbox(hole), arr.shape[1], arr.shape[0], self.cfg.context, self.cfg.min_crop)
        crop, chole = arr[y1:y2, x1:x2], hole[y1:y2, x1:x2]
        if self.method == "spl" and self.cfg.init == "telea":
            # Telea at full resolution; the network's correction is computed at cfg.size and upsampled
            base = cv2_fill(crop, chole, "telea")
            img, mask = network_inputs(base, chole, self.cfg.size)
            delta = (self.run_network(img, mask)[0] - img[0]).transpose(1, 2, 0) * 127.5
            delta = np.stack([np.asarray(Image.fromarray(delta[..., c].astype(np.float32), mode="F")
                                         .resize((x2 - x1, y2 - y1), RESAMPLE)) for c in range(3)], -1)
            filled = np.clip(base.astype(np.float32) + delta + 0.5, 0, 255).astype(np.uint8)
        elif self.method == "spl":
            filled = self.run_network(*network_inputs(crop, chole, self.cfg.size))[0]
            filled = np.clip((filled.transpose(1, 2, 0) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
            filled = np.asarray(Image.fromarray(filled).resize((x2 - x1, y2 - y1), RESAMPLE))
        elif self.method in XPHOTO_METHODS and max(crop.shape[:2]) > XPHOTO_SIDE:
            f = XPHOTO_SIDE / max(crop.shape[:2])
            size = (max(8, round((x2 - x1) * f)), max(8, round((y2 - y1) * f)))
            small = np.asarray(Image.fromarray(crop).resize(size, RESAMPLE))
            shole = np.asarray(Image.fromarray(chole.astype(np.uint8) * 255).resize(size, Image.BILINEAR)) > 0
            filled = np.asarray(Image.fromarray(cv2_fill(small, shole, self.method)).resize((x2 - x1, y2 - y1), RESAMPLE))
        else:
            filled = cv2_fill(crop, chole, self.method)
        out = arr.copy()
        out[y1:y2, x1:x2][chole] = filled[chole]
        return Image.fromarray(out)

    def erase_box(self, photo, box) -> Image.Image:
        """Fill the pixel box ``(x1, y1, x2, y2)`` (x2/y2 exclusive) of ``photo``."""
        img = load_image(photo, "RGB", what="photo")
        x1, y1, x2, y2 = validate_box(box, *img.size)
        hole = np.zeros((img.size[1], img.size[0]), bool)
        hole[y1:y2, x1:x2] = True
        return self.fill(img, hole)
