"""From a referring response to a mask (bool, photo size).

* ``response``: the response at ``peak_fraction`` of its peak or more, the connected component that holds
  the peak (:func:`keep_peak`);
* ``segmenter``: the segmenter's probability at its threshold or more, the heaviest component;
* ``prompted``: the response and the phrase's location words as a prompt for a class-agnostic mask
  (:func:`prompted_mask`): the peak is taken inside the region the location words name, the response's
  component at that peak gives a box, and u2netp (or GrabCut) cuts the object inside the box; of what it
  cuts, the component with the most response is kept.

:func:`named_region` is also the no-pixel baseline of the evaluation ("location words only").
"""
from __future__ import annotations

import numpy as np

THIRD = {"on the left": 0, "in the middle": 1, "on the right": 2, "at the top": 0, "at the bottom": 2}
PROMPT_METHODS = ("u2netp", "grabcut")


def keep_heaviest(mask: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """The 8-connected component of ``mask`` with the most ``prob`` mass."""
    import cv2

    n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask
    mass = np.bincount(lab.ravel(), weights=prob.ravel(), minlength=n)[1:]
    return lab == 1 + int(np.argmax(mass))


def keep_peak(mask: np.ndarray, response: np.ndarray) -> np.ndarray:
    """The 8-connected component of ``mask`` that holds the maximum of ``response`` (the first in
    row-major order; the heaviest component when the peak lies outside ``mask``)."""
    import cv2

    y, x = np.unravel_index(int(np.argmax(response)), response.shape)
    if not mask[y, x]:
        return keep_heaviest(mask, response) if mask.any() else mask
    _, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return lab == lab[y, x]


def named_span(n: int, word: str | None, margin: float = 0.0) -> tuple[int, int]:
    """The pixel span [a, b) of an extent ``n`` that a location word names (its third), widened by
    ``margin`` x n on each side; the whole extent without a word."""
    if word is None:
        return 0, n
    k = THIRD[word]
    return max(0, round((k / 3 - margin) * n)), min(n, round(((k + 1) / 3 + margin) * n))


def named_region(attrs: dict, width: int, height: int, margin: float = 0.0) -> np.ndarray:
    """(height, width) bool: the part of the photo the phrase's location words (``attrs["h"]``,
    ``attrs["v"]``) name, each third widened by ``margin`` of the side; the whole photo without one."""
    x1, x2 = named_span(width, attrs.get("h"), margin)
    y1, y2 = named_span(height, attrs.get("v"), margin)
    region = np.zeros((height, width), bool)
    region[y1:y2, x1:x2] = True
    return region


def box_of(mask: np.ndarray, pad: float = 0.0) -> tuple[int, int, int, int]:
    """The box (x1, y1, x2, y2; x2/y2 exclusive) of a non-empty mask, grown by ``pad`` of its size on
    each side and clipped to the photo."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    x1, x2, y1, y2 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    dx, dy = round(pad * (x2 - x1)), round(pad * (y2 - y1))
    return max(0, x1 - dx), max(0, y1 - dy), min(w, x2 + dx), min(h, y2 + dy)


def prompted_mask(photo: np.ndarray, response: np.ndarray, attrs: dict, method: str = "u2netp",
                  peak_fraction: float = 0.2, margin: float = 1 / 6, pad: float = 0.15) -> np.ndarray:
    """The mask of the object a phrase names, from an RGB uint8 ``photo`` (H, W, 3), the response over
    its peak (H, W) in [0, 1] and the phrase's location words ``attrs``:

    1. the response outside the named region (:func:`named_region` with ``margin``) is set to 0, unless
       nothing inside it responds;
    2. the component of that response at ``peak_fraction`` of its peak or more that holds the peak gives
       the box, grown by ``pad``;
    3. ``method`` (u2netp or GrabCut) cuts the object inside the box, and of its components the one with
       the most response is kept. If it cuts nothing, the response's component is the mask.
    """
    from fos.localize.masks import grabcut_mask, u2netp_mask

    if method not in PROMPT_METHODS:
        raise ValueError(f"prompt method must be one of {', '.join(PROMPT_METHODS)}, got {method!r}")
    h, w = response.shape
    inside = response * named_region(attrs, w, h, margin)
    r = inside if inside.max() > 0 else response
    comp = keep_peak(r >= peak_fraction * float(r.max()), r)
    if not comp.any():
        return comp
    box = box_of(comp, pad)
    cut = u2netp_mask(photo, box) if method == "u2netp" else grabcut_mask(photo, box)
    if not cut.any():
        return comp
    return keep_heaviest(cut, r + 1e-6 * comp)
