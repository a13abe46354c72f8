"""From a referring response to a mask (bool, photo size).

* ``response``: the response at ``peak_fraction`` of its peak or more, the connected component that holds
  the peak (:func:`keep_peak`);
* ``segmenter``: the segmenter's probability at its threshold or more, the heaviest component;
* ``prompted``: the response and the phrase's location words as a prompt for a class-agnostic mask
  (:func:`prompted_mask`): the peak is taken inside the region the location words name, the response's
  component at that peak gives a box, and u2netp (or GrabCut) cuts the object inside the box; of what it
  cuts, the component with the most response is kept;
* ``instance``: the box of everything the phrase lights up (every component of the response at
  ``peak_fraction``) prompts u2netp (or GrabCut); of the objects it cuts, those whose centroid lies in
  the third the location words name compete, and the one with the most response is the mask
  (:func:`instance_mask`).

:func:`named_region` is also the no-pixel baseline of the evaluation ("location words only").
"""
from __future__ import annotations

import numpy as np

from fos.refer.config import PROMPT_METHODS

THIRD = {"on the left": 0, "in the middle": 1, "on the right": 2, "at the top": 0, "at the bottom": 2}


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


def check_method(method: str) -> None:
    if method not in PROMPT_METHODS:
        raise ValueError(f"prompt method must be one of {', '.join(PROMPT_METHODS)}, got {method!r}")


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
    from fos.localize.masks import box_to_mask

    check_method(method)
    h, w = response.shape
    inside = response * named_region(attrs, w, h, margin)
    r = inside if inside.max() > 0 else response
    comp = keep_peak(r >= peak_fraction * float(r.max()), r)
    if not comp.any():
        return comp
    box = box_of(comp, pad)
    cut = box_to_mask(method, photo, box)
    if not cut.any():
        return comp
    return keep_heaviest(cut, r + 1e-6 * comp)


def in_named_third(x: float, y: float, attrs: dict, width: int, height: int) -> bool:
    """The point (x, y) lies in the third (across and/or down) that the location words name."""
    for key, n, v in (("h", width, x), ("v", height, y)):
        word = attrs.get(key)
        if word is not None and not THIRD[word] * n / 3 <= v < (THIRD[word] + 1) * n / 3:
            return False
    return True


def instance_mask(photo: np.ndarray, response: np.ndarray, attrs: dict, method: str = "u2netp",
                  peak_fraction: float = 0.2, pad: float = 0.15, min_share: float = 0.02) -> np.ndarray:
    """The mask of the one object a phrase names, from an RGB uint8 ``photo``, the response over its
    peak (H, W) in [0, 1] and the phrase's location words ``attrs``:

    1. the box of the response at ``peak_fraction`` or more (all its components), grown by ``pad``;
    2. ``method`` cuts the objects in it; its connected components of at least ``min_share`` of the cut
       are the candidates;
    3. those whose centroid lies in the named third (:func:`in_named_third`; all of them when none does,
       or without a location word) compete, and the one with the most response wins.

    The phrases this model is trained and scored on write their location from the instance's centroid,
    which is why the centroid, not the overlap, is tested. With nothing cut, the response's component at
    its peak is the mask."""
    import cv2

    from fos.localize.masks import box_to_mask

    check_method(method)
    lit = response >= peak_fraction
    if not lit.any():
        return lit
    h, w = response.shape
    box = box_of(lit, pad)
    cut = box_to_mask(method, photo, box)
    n, lab, stats, cent = cv2.connectedComponentsWithStats(cut.astype(np.uint8), connectivity=8)
    total = max(int(cut.sum()), 1)
    cands = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_share * total]
    if not cands:
        return keep_peak(lit, response)
    named = [i for i in cands if in_named_third(cent[i][0], cent[i][1], attrs, w, h)] or cands
    mass = np.bincount(lab.ravel(), weights=response.ravel(), minlength=n)
    return lab == max(named, key=lambda i: mass[i])
