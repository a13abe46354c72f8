"""Quality inside the hole: PSNR, SSIM and L1 between a filled photo and the true one (uint8 RGB).

Only hole pixels count: outside the hole every method returns the input unchanged, and averaging over
the whole photo would mostly measure the hole's size.
"""
from __future__ import annotations

import numpy as np

SSIM_SIGMA = 1.5  # Gaussian window of Wang et al. (2004), 11 x 11
C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def _pixels(pred: np.ndarray, true: np.ndarray, hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hole = np.asarray(hole, bool)
    if pred.shape != true.shape or pred.shape[:2] != hole.shape:
        raise ValueError(f"shapes differ: filled {pred.shape}, true {true.shape}, hole {hole.shape}")
    if not hole.any():
        raise ValueError("the hole is empty")
    return pred[hole].astype(np.float64), true[hole].astype(np.float64)


def l1_in_hole(pred: np.ndarray, true: np.ndarray, hole: np.ndarray) -> float:
    """Mean absolute error over the hole's pixels and channels, in [0, 1] (divided by 255)."""
    p, t = _pixels(pred, true, hole)
    return float(np.abs(p - t).mean() / 255)


def psnr_in_hole(pred: np.ndarray, true: np.ndarray, hole: np.ndarray, cap: float = 100.0) -> float:
    """10 log10(255^2 / MSE) over the hole's pixels and channels (``cap`` when they are equal)."""
    p, t = _pixels(pred, true, hole)
    mse = float(((p - t) ** 2).mean())
    return cap if mse == 0 else min(cap, 10 * np.log10(255.0 ** 2 / mse))


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM (Gaussian window, sigma 1.5), averaged over channels; (H, W)."""
    import cv2

    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]

    def blur(x):
        return cv2.GaussianBlur(x, (11, 11), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    maps = []
    for c in range(a.shape[2]):
        x, y = a[..., c], b[..., c]
        mx, my = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        maps.append(((2 * mx * my + C1) * (2 * sxy + C2)) / ((mx * mx + my * my + C1) * (sxx + syy + C2)))
    return np.mean(maps, axis=0)


def ssim_in_hole(pred: np.ndarray, true: np.ndarray, hole: np.ndarray) -> float:
    """The SSIM map of the whole photo, averaged over the hole's pixels."""
    _pixels(pred, true, hole)
    return float(ssim_map(pred, true)[np.asarray(hole, bool)].mean())


def visible_region(hole: np.ndarray, known: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """What a person sees of a fill once a cutout is pasted: the hole's pixels whose truth is known
    (``known``: off the erased object) and that the pasted cutout leaves showing (``coverage`` == 0:
    the pasted matte, uint8 or bool)."""
    return np.asarray(hole, bool) & np.asarray(known, bool) & (np.asarray(coverage) == 0)

