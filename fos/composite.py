"""Composites: a cutout pasted into a prepared background's box, and what the teacher sees of one.

Two compositing rules, named for what they are (``COMPOSITES``):

* ``stretch``: :func:`stretch_composite`, DiscoFOS's: the cutout (object on white) resized to fill the
  box of the gray-filled background. The teacher was trained on it and the evaluation scores it.
* ``fit``: :func:`fit_composite`, what a person sees: the cutout keeps its aspect ratio, fits inside
  the box standing on its bottom edge, and only its object pixels are pasted (mask eroded by one
  pixel and feathered, so no white fringe) on the original photo. The app shows it, and its teacher
  rerank scores exactly the composite it shows (:func:`teacher_tensor` of the same image).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter

from fos.config import PreprocessCfg
from fos.errors import InputError
from fos.preprocess import (
    DEFAULT_CFG, RESAMPLE, PreparedBackground, foreground_mask, load_image, resize_square, to_tensor,
)


def stretch_composite(bg: PreparedBackground, fg, cfg: PreprocessCfg = DEFAULT_CFG) -> Image.Image:
    """DiscoFOS's composite (full size): the cutout, object on white, resized to fill the box of the
    gray-filled background. What the teacher was trained on."""
    img = load_image(fg, "RGB", cfg, what="foreground")
    x1, y1, x2, y2 = bg.box
    comp = bg.filled.copy()
    comp.paste(img.resize((x2 - x1, y2 - y1), RESAMPLE), (x1, y1))
    return comp


def teacher_view(bg: PreparedBackground, composite: Image.Image, cfg: PreprocessCfg = DEFAULT_CFG) -> Image.Image:
    """What the teacher sees of a full-size composite: the crop around the box, resized (RGB SxS)."""
    return resize_square(composite.crop(bg.crop_box), cfg.image_size)


COMPOSITES = ("stretch", "fit")
SHOWN = "fit"  # the rule of the composite a person is shown, and the teacher rerank scores


def composite(bg: PreparedBackground, fg, rule: str = "stretch", mask=None,
              cfg: PreprocessCfg = DEFAULT_CFG) -> Image.Image:
    """Full-size composite of cutout ``fg`` into ``bg``'s box by ``rule`` (see ``COMPOSITES``)."""
    if rule == "stretch":
        return stretch_composite(bg, fg, cfg)
    if rule == "fit":
        return fit_composite(bg, fg, mask, cfg)
    raise InputError(f"unknown composite rule {rule!r}; use one of {', '.join(COMPOSITES)}")


def teacher_tensor(bg: PreparedBackground, composite_image: Image.Image, cfg: PreprocessCfg = DEFAULT_CFG) -> torch.Tensor:
    """3xSxS teacher input of a full-size composite already made (:func:`composite`)."""
    return to_tensor(teacher_view(bg, composite_image, cfg), cfg)


def teacher_input(bg: PreparedBackground, fg, cfg: PreprocessCfg = DEFAULT_CFG, rule: str = "stretch",
                  mask=None) -> torch.Tensor:
    """3xSxS teacher input for one (background, foreground) pair, composited by ``rule``."""
    return teacher_tensor(bg, composite(bg, fg, rule, mask, cfg), cfg)


def context_crop(bg: PreparedBackground, cfg: PreprocessCfg = DEFAULT_CFG) -> Image.Image:
    """The crop around the box of the filled background (no foreground), RGB SxS."""
    return resize_square(bg.filled.crop(bg.crop_box), cfg.image_size)



# --------------------------------------------------------------------------- the composite people see
def object_matte(fg: Image.Image, mask=None) -> tuple[Image.Image, Image.Image]:
    """The object of a cutout cropped to its mask's bounding box: (RGB object, L mask)."""
    m = foreground_mask(fg, mask)
    if not m.any():
        raise InputError("the foreground has no object pixels (it is all white or fully transparent)")
    ys, xs = np.nonzero(m)
    crop = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    obj = fg.convert("RGB").crop(crop)
    return obj, Image.fromarray((m[crop[1]:crop[3], crop[0]:crop[2]] * 255).astype(np.uint8))


def fit_composite(bg: PreparedBackground, fg, mask=None, cfg: PreprocessCfg = DEFAULT_CFG) -> Image.Image:
    """The composite people see (full size, on the original photo).

    The cutout's object keeps its aspect ratio: it is scaled to fit inside the box, centred
    horizontally and standing on the box's bottom edge. Only its object pixels (alpha, ``mask`` or
    non-white) are pasted, through a mask eroded by one pixel and feathered, so the matte leaves no
    white fringe.

    Args:
        bg: the prepared background (its box is already validated).
        fg: cutout, RGBA or object on white (path, array or PIL image).
        mask: optional object mask of the cutout.
    Returns:
        RGB image of the background's size.
    """
    obj, alpha, at = fit_placement(bg.box, fg, mask, cfg)
    out = bg.image.copy()
    out.paste(obj, at, alpha)
    return out


def fit_placement(box, fg, mask=None, cfg: PreprocessCfg = DEFAULT_CFG) -> tuple[Image.Image, Image.Image, tuple[int, int]]:
    """Where :func:`fit_composite` pastes cutout ``fg`` into pixel ``box``: (RGB object at its pasted size,
    its L matte (eroded by one pixel and feathered), top-left corner)."""
    fg_img = fg if isinstance(fg, Image.Image) else load_image(fg, "RGBA", cfg, what="foreground")
    obj, obj_mask = object_matte(fg_img, mask)
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    s = min(bw / obj.width, bh / obj.height)
    nw, nh = max(1, round(obj.width * s)), max(1, round(obj.height * s))
    obj = obj.resize((nw, nh), RESAMPLE)
    alpha = obj_mask.resize((nw, nh), RESAMPLE)
    if min(nw, nh) >= 8:  # erode the matte by one pixel, then feather it
        alpha = alpha.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.GaussianBlur(0.8))
    return obj, alpha, (x1 + (bw - nw) // 2, y2 - nh)


def fit_coverage(box, size: tuple[int, int], fg, mask=None, cfg: PreprocessCfg = DEFAULT_CFG) -> np.ndarray:
    """The matte :func:`fit_composite` pastes, as a photo-sized (``size`` = (w, h)) uint8 array (0 where
    the photo shows through)."""
    _, alpha, (x, y) = fit_placement(box, fg, mask, cfg)
    out = Image.new("L", size, 0)
    out.paste(alpha, (x, y))
    return np.asarray(out)
