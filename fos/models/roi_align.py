"""RoIAlign in plain torch, with torchvision's semantics (``torchvision.ops.roi_align``).

Bilinear sampling is separable, so each RoI becomes two small interpolation matrices
``Ay`` (out_h x H) and ``Ax`` (out_w x W) that already average the sample points of every bin; the
result is ``Ay @ feature @ Ax^T``. That is exact, differentiable and exportable (einsum).
"""
from __future__ import annotations

import math

import torch


def _axis_weights(start, bin_size, n_out: int, grid, size: int) -> torch.Tensor:
    """(K, n_out, size) averaged bilinear weights along one axis.

    start, bin_size: (K,) float tensors; grid: samples per bin (int, same for all RoIs).
    """
    k = start.shape[0]
    dev, dt = start.device, start.dtype
    ph = torch.arange(n_out, device=dev, dtype=dt).view(1, n_out, 1)
    it = torch.arange(grid, device=dev, dtype=dt).view(1, 1, grid)
    pos = start.view(k, 1, 1) + ph * bin_size.view(k, 1, 1) + (it + 0.5) * bin_size.view(k, 1, 1) / grid
    valid = ((pos >= -1.0) & (pos <= size)).to(dt)
    pos = pos.clamp(min=0)
    low = pos.floor().clamp(max=size - 1)
    at_edge = low >= size - 1
    pos = torch.where(at_edge, low, pos)
    high = torch.where(at_edge, low, low + 1)
    frac = pos - low
    idx_low = low.long()
    idx_high = high.long()
    w = torch.zeros(k, n_out, grid, size, device=dev, dtype=dt)
    w = w.scatter_add(3, idx_low.unsqueeze(-1), ((1 - frac) * valid).unsqueeze(-1))
    w = w.scatter_add(3, idx_high.unsqueeze(-1), (frac * valid).unsqueeze(-1))
    return w.mean(2)


def roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: int | tuple[int, int],
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False) -> torch.Tensor:
    """Same contract as ``torchvision.ops.roi_align``.

    Args:
        features: (N, C, H, W).
        rois: (K, 5) rows ``[batch_index, x1, y1, x2, y2]`` in input-image pixels.
        output_size: out_h, out_w (an int for square).
        spatial_scale: feature pixels per input pixel (1/32 for a stride-32 map).
        sampling_ratio: samples per bin side; <= 0 = adaptive ``ceil(roi_size / output_size)``.
        aligned: shift by half a pixel (torchvision's ``aligned=True``).
    Returns:
        (K, C, out_h, out_w).
    """
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    _, _, h, w = features.shape
    rois = rois.float()  # sampling weights in float32 (also for half features: exact, exportable)
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    x2 = rois[:, 3] * spatial_scale - offset
    y2 = rois[:, 4] * spatial_scale - offset
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    bw, bh = rw / ow, rh / oh
    if sampling_ratio > 0:
        ay = _axis_weights(y1, bh, oh, sampling_ratio, h)
        ax = _axis_weights(x1, bw, ow, sampling_ratio, w)
    else:  # adaptive grid: the number of samples depends on each RoI's size
        ays, axs = [], []
        for i in range(rois.shape[0]):
            gy = max(1, math.ceil(float(rh[i]) / oh))
            gx = max(1, math.ceil(float(rw[i]) / ow))
            ays.append(_axis_weights(y1[i:i + 1], bh[i:i + 1], oh, gy, h))
            axs.append(_axis_weights(x1[i:i + 1], bw[i:i + 1], ow, gx, w))
        ay, ax = torch.cat(ays), torch.cat(axs)
    feats = features[rois[:, 0].long()]  # (K, C, H, W)
    dt = features.dtype
    return torch.einsum("kph,kchw,kqw->kcpq", ay.to(dt), feats, ax.to(dt))

