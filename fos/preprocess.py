"""THE preprocessing of fos: every image that reaches a network goes through this module.

Geometry follows the DiscoFOS paper and the official FOSD loaders:

* boxes are XYXY in pixels of the original image, ``x2``/``y2`` exclusive; a normalized FOSD box
  ``[x1/W, y1/H, x2/W, y2/H]`` maps to pixels with ``int(v * W)`` (FOSD's ``normbox2globalbox``);
* the query box is filled with gray 128 in the background;
* student background input (``PreprocessCfg.student_view``): the filled background around the box, its
  width and height grown ``student_context`` times (clamped to the image), or the whole filled
  background, resized to ``image_size`` squared; the student pools the teacher's crop out of its map;
* student foreground input: the cutout (object on white) padded to a square with 255, resized;
* teacher input: a composite, cropped around the box with its width and height enlarged by sqrt(2)
  (``int(w * (sqrt(2) - 1) / 2)`` per side, clamped to the image), resized to ``image_size`` squared;
* normalization ``(x / 255 - mean) / std`` with mean = std = 0.5, written only in :func:`to_tensor`.

The composites the teacher scores (and people see) are :mod:`fos.composite`'s, built on this module.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from fos.errors import InputError
from fos.config import PreprocessCfg

DEFAULT_CFG = PreprocessCfg()
RESAMPLE = Image.BILINEAR
MIN_BOX_SIDE = 2  # pixels; smaller boxes carry no usable shape




Box = tuple[int, int, int, int]


# --------------------------------------------------------------------------- images
def load_image(src, mode: str = "RGB", cfg: PreprocessCfg = DEFAULT_CFG, what: str = "image") -> Image.Image:
    """Open an image from a path, bytes, a numpy array or a PIL image, with clear errors.

    Returns:
        PIL image in ``mode`` ("RGB", "RGBA" or "L"), fully decoded.
    """
    if isinstance(src, Image.Image):
        img = src
    elif isinstance(src, np.ndarray):
        if src.ndim not in (2, 3) or src.size == 0:
            raise InputError(f"{what} array must be HxW or HxWxC, got shape {src.shape}")
        arr = src if src.dtype == np.uint8 else np.clip(src, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
    else:
        name = "<bytes>" if isinstance(src, (bytes, bytearray)) else os.fspath(src)
        if not isinstance(src, (bytes, bytearray)) and not os.path.isfile(name):
            raise InputError(f"{what} {os.path.basename(name)!r} does not exist or is not a file")
        try:
            img = Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else name)
            w, h = img.size
            if w * h > cfg.max_pixels:
                raise InputError(
                    f"{what} {os.path.basename(name)!r} is {w}x{h} = {w * h / 1e6:.0f} MP, over the limit of "
                    f"{cfg.max_pixels / 1e6:.0f} MP; downscale it first"
                )
            img.load()
        except InputError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            reason = str(e).replace(name, os.path.basename(name))  # no server paths in messages
            raise InputError(f"{what} {os.path.basename(name)!r} could not be read as an image ({reason}); "
                             "use a PNG or JPEG file") from e
    w, h = img.size
    if w * h > cfg.max_pixels:
        raise InputError(f"{what} is {w}x{h}, over the limit of {cfg.max_pixels / 1e6:.0f} MP; downscale it first")
    if w < 1 or h < 1:
        raise InputError(f"{what} is empty ({w}x{h})")
    if mode == "RGB" and img.mode in ("RGBA", "LA", "P"):
        # flatten transparency onto white, as FOSD cutouts are objects on white
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert(mode) if img.mode != mode else img


ImageFile.LOAD_TRUNCATED_IMAGES = False
# load_image refuses images over PreprocessCfg.max_pixels from their header, before decoding; PIL's own
# decompression-bomb check would otherwise answer first, for very large images, with a vaguer message.
Image.MAX_IMAGE_PIXELS = None


# --------------------------------------------------------------------------- boxes
def parse_box(text: str, what: str = "the box") -> tuple[float, float, float, float]:
    """``"x1,y1,x2,y2"`` (commas, semicolons or spaces between) -> four floats, pixels; the one parser of
    box text, for the command lines (``--box``) and the app's box field. Checked against an image later
    (:func:`validate_box`)."""
    parts = [p for p in str(text).replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        raise InputError(f"{what} takes four numbers x1,y1,x2,y2 in pixels, got {text!r}") from None
    if len(vals) != 4:
        raise InputError(f"{what} takes four numbers x1,y1,x2,y2 in pixels, got {text!r}")
    return vals


def norm_to_pixel_box(norm_box: Sequence[float], width: int, height: int) -> Box:
    """FOSD normalized box -> pixel box, exactly as FOSD's ``normbox2globalbox``."""
    x1, y1, x2, y2 = norm_box
    return (max(int(x1 * width), 0), max(int(y1 * height), 0),
            min(int(x2 * width), width), min(int(y2 * height), height))


def validate_box(box, width: int, height: int) -> Box:
    """Check a pixel box XYXY against a ``width`` x ``height`` image; return it as ints."""
    if box is None:
        raise InputError("no box given: draw a box on the background or type x1,y1,x2,y2 in pixels")
    try:
        vals = [float(v) for v in box]
    except (TypeError, ValueError) as e:
        raise InputError(f"box must be four numbers x1,y1,x2,y2 in pixels, got {box!r}") from e
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise InputError(f"box must be four finite numbers x1,y1,x2,y2 in pixels, got {box!r}")
    x1, y1, x2, y2 = (int(round(v)) for v in vals)
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise InputError(
            f"box must be XYXY inside the {width}x{height} image, got ({x1}, {y1}, {x2}, {y2}); "
            "keep 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height"
        )
    if x2 - x1 < MIN_BOX_SIDE or y2 - y1 < MIN_BOX_SIDE:
        hint = ""
        if all(0 <= v <= 1 for v in vals) and (width > 2 or height > 2):
            hint = (f"; it looks normalised to 0..1, but boxes are in pixels: multiply x by {width} and y by "
                    f"{height}")
        raise InputError(
            f"box ({x1}, {y1}, {x2}, {y2}) is empty or too small: it needs x2 > x1 and y2 > y1 and "
            f"sides of at least {MIN_BOX_SIDE} px{hint}"
        )
    return x1, y1, x2, y2


def enlarged_box(box: Box, width: int, height: int, scale: float = DEFAULT_CFG.crop_scale) -> Box:
    """The crop around the box: width and height grown by ``scale`` (FOSD rule), clamped to the image."""
    x1, y1, x2, y2 = box
    add_w = int((x2 - x1) * (scale - 1) / 2)
    add_h = int((y2 - y1) * (scale - 1) / 2)
    return max(0, x1 - add_w), max(0, y1 - add_h), min(width, x2 + add_w), min(height, y2 + add_h)


def jitter_box(box: Box, width: int, height: int, max_pad: float, rng) -> Box:
    """Enlarge a box by a random 5%..``max_pad`` of its width and height (FOSD's box jitter).

    Only enlarges, so a box that was filled with gray in a stored background stays covered.
    """
    if max_pad <= 0:
        return box
    x1, y1, x2, y2 = box
    pad_w = rng.uniform(0.05, max_pad) * (x2 - x1) if max_pad > 0.05 else max_pad * (x2 - x1)
    pad_h = rng.uniform(0.05, max_pad) * (y2 - y1) if max_pad > 0.05 else max_pad * (y2 - y1)
    return (max(0, int(x1 - pad_w / 2)), max(0, int(y1 - pad_h / 2)),
            min(width, int(math.ceil(x2 + pad_w / 2))), min(height, int(math.ceil(y2 + pad_h / 2))))


def scale_box(box: Box, width: int, height: int, size: int) -> list[float]:
    """Pixel box of a ``width`` x ``height`` image -> box in the ``size`` x ``size`` network input."""
    x1, y1, x2, y2 = box
    return [float(int(x1 / width * size)), float(int(y1 / height * size)),
            float(int(x2 / width * size)), float(int(y2 / height * size))]


SHAPE_DIM = 5  # the geometry columns (shape and size); models made before the scale terms read the first 3
COLOUR_DIM = 6  # CIELAB mean and spread of a pixel set (colour_stats)
GEOMETRY_DIM = SHAPE_DIM + 2 * COLOUR_DIM  # width of the pair vector the graphs take as ``geom``


def colour_stats(pixels: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 RGB -> float32 (6,): CIELAB mean and standard deviation of L/100, a/128, b/128."""
    import cv2

    px = np.asarray(pixels, dtype=np.uint8).reshape(-1, 3)
    if len(px) == 0:
        return np.full(COLOUR_DIM, np.nan, np.float32)
    if len(px) > 20000:  # a fixed, even subsample: the statistics of a big region barely move
        px = px[:: len(px) // 20000 + 1]
    lab = cv2.cvtColor(px[None].astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)[0] / np.float32([100, 128, 128])
    return np.concatenate([lab.mean(0), lab.std(0)]).astype(np.float32)


def foreground_colour(fg: Image.Image, mask=None) -> np.ndarray:
    """Colour statistics (6,) of a cutout's object pixels (what a library caches per item)."""
    img = fg if isinstance(fg, Image.Image) else load_image(fg, "RGBA", what="foreground")
    m = foreground_mask(img, mask)
    return colour_stats(np.asarray(img.convert("RGB"))[m])


def ring_pixels(filled: Image.Image, box: Box, crop_box: Box) -> np.ndarray:
    """The pixels (N, 3) of ``crop_box`` outside ``box``: the context around the box."""
    arr = np.asarray(filled)
    cx1, cy1, cx2, cy2 = crop_box
    x1, y1, x2, y2 = box
    ring = np.ones((cy2 - cy1, cx2 - cx1), bool)
    ring[y1 - cy1:y2 - cy1, x1 - cx1:x2 - cx1] = False
    region = arr[cy1:cy2, cx1:cx2][ring]
    return region if len(region) else arr.reshape(-1, 3)  # the box fills the whole image: the whole image


def geometry_batch(box: Box, fg_sizes, ring_colour=None, fg_colours=None) -> np.ndarray:
    """The pair vector of N foregrounds of pixel sizes ``fg_sizes`` (N, 2) against ``box``: float32
    (N, :data:`GEOMETRY_DIM`).

    Columns 0-4, geometry: log box aspect, log foreground aspect, |aspect difference| (shape), then
    log(box area / foreground area) / 2 and its absolute value (resolution: how much the cutout is
    scaled to fill the box; a cutout blown up far past its own pixels looks soft). Columns 5-10: the
    colour statistics of the context ring around the box (``ring_colour``, :func:`colour_stats`);
    11-16: those of each foreground's object pixels (``fg_colours`` (N, 6)). Colour columns not given
    are NaN, which a model with a photometric term refuses; the others never read them.
    """
    x1, y1, x2, y2 = box
    bw, bh = max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)
    sz = np.asarray(fg_sizes, dtype=np.float64).reshape(-1, 2)
    fw, fh = np.maximum(sz[:, 0], 1e-6), np.maximum(sz[:, 1], 1e-6)
    lb = np.full(len(sz), math.log(bw / bh))
    lf = np.log(fw / fh)
    ls = 0.5 * np.log(bw * bh / (fw * fh))
    shape = np.stack([lb, lf, np.abs(lb - lf), ls, np.abs(ls)], 1)
    ring = np.full((len(sz), COLOUR_DIM), np.nan) if ring_colour is None else \
        np.tile(np.asarray(ring_colour, np.float64).reshape(1, COLOUR_DIM), (len(sz), 1))
    fgc = np.full((len(sz), COLOUR_DIM), np.nan) if fg_colours is None else \
        np.asarray(fg_colours, np.float64).reshape(len(sz), COLOUR_DIM)
    return np.concatenate([shape, ring, fgc], 1).astype(np.float32)


# --------------------------------------------------------------------------- tensors
def to_tensor(img: Image.Image | np.ndarray, cfg: PreprocessCfg = DEFAULT_CFG) -> torch.Tensor:
    """RGB uint8 HxWx3 -> float32 3xHxW normalized with ``cfg.mean`` / ``cfg.std``."""
    arr = np.asarray(img, dtype=np.float32)
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1) / 255.0
    return (t - cfg.mean) / cfg.std


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def photo_input(img: Image.Image | np.ndarray, size: int) -> torch.Tensor:
    """A whole photo for the localizer (:mod:`fos.localize`): RGB, squashed to ``size`` squared,
    normalized with ImageNet's mean and std (what its ImageNet backbone was trained on); (3, S, S)."""
    img = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, dtype=np.uint8))
    arr = np.asarray(resize_square(img.convert("RGB"), size), dtype=np.float32) / 255.0
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    return (t - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def resize_square(img: Image.Image, size: int) -> Image.Image:
    return img.resize((size, size), RESAMPLE)


def fill_box(img: Image.Image, box: Box, value: int) -> Image.Image:
    arr = np.array(img, dtype=np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = value
    return Image.fromarray(arr)


def pad_to_square(img: Image.Image, value: int = 255) -> Image.Image:
    """Center the image on a square canvas of ``value`` (FOSD's ``padding_to_square``)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), (value, value, value))
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


@dataclass
class PreparedBackground:
    """A background with its query box, ready for every model. The box is validated once, here."""

    image: Image.Image  # the original photo (RGB)
    filled: Image.Image  # original size, box filled gray
    box: Box  # pixels of the original image
    crop_box: Box  # enlarged box, pixels of the original image
    tensor: torch.Tensor  # 3xSxS student background input
    crop_box_net: torch.Tensor  # (4,) crop box in the student input's pixels, for RoIAlign
    view_box: Box = (0, 0, 0, 0)  # what the student input shows, pixels of the original image
    ring_colour: np.ndarray | None = None  # (6,) colour statistics of the crop around the box (colour_stats)

    @property
    def size(self) -> tuple[int, int]:
        return self.filled.size


def prepare_background(bg, box, cfg: PreprocessCfg = DEFAULT_CFG) -> PreparedBackground:
    """Background image + pixel box -> :class:`PreparedBackground`. Validates the box."""
    img = load_image(bg, "RGB", cfg, what="background")
    w, h = img.size
    box = validate_box(box, w, h)
    filled = fill_box(img, box, cfg.fill_value)
    crop = enlarged_box(box, w, h, cfg.crop_scale)
    view = enlarged_box(box, w, h, cfg.student_context) if cfg.student_view == "context" else (0, 0, w, h)
    vx, vy = view[0], view[1]
    tensor = to_tensor(resize_square(filled.crop(view) if view != (0, 0, w, h) else filled, cfg.image_size), cfg)
    crop_in_view = (crop[0] - vx, crop[1] - vy, crop[2] - vx, crop[3] - vy)
    crop_net = torch.tensor(scale_box(crop_in_view, view[2] - vx, view[3] - vy, cfg.image_size), dtype=torch.float32)
    ring = colour_stats(ring_pixels(filled, box, crop))
    return PreparedBackground(img, filled, box, crop, tensor, crop_net, view, ring)


def foreground_input(fg, cfg: PreprocessCfg = DEFAULT_CFG) -> torch.Tensor:
    """Cutout (object on white) -> 3xSxS student foreground input."""
    img = load_image(fg, "RGB", cfg, what="foreground")
    return to_tensor(resize_square(pad_to_square(img, cfg.pad_value), cfg.image_size), cfg)


# --------------------------------------------------------------------------- cutouts
def foreground_mask(fg: Image.Image, mask=None, white_threshold: int = 235) -> np.ndarray:
    """Object mask (HxW bool) of a cutout: its alpha, a given mask, or its non-white pixels."""
    if mask is not None:
        m = np.asarray(load_image(mask, "L", what="mask").resize(fg.size, Image.NEAREST)) > 127
    elif fg.mode in ("RGBA", "LA") and np.asarray(fg.getchannel("A")).min() < 255:
        m = np.asarray(fg.getchannel("A")) > 127  # real transparency
    else:  # object on white (an opaque alpha carries no shape)
        rgb = np.asarray(fg.convert("RGB"))
        m = rgb.min(axis=2) < white_threshold
    return m
