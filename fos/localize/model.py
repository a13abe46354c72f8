"""The localization network and DA-WSOL's training pieces.

Network (:class:`WsolNet`): ImageNet MobileNetV2 ``features`` at output stride 16 (stage 14, the
first 160-channel block, keeps stride 1 and the later 3x3 depthwise convs are dilated by 2, so
the pretrained weights see the same receptive field), stages 0-13 frozen, then a linear classifier.
Image feature = global average of the 1280-channel pixel features; logits = classifier(image feature);
the class activation map of class c is the classifier applied to every pixel feature.

DA-WSOL (Zhu, She, Lu et al., CVPR 2022) treats the image feature as the source domain and the
pixel features as the target domain. :class:`TargetSampleAssigner` splits a photo's pixel features by
three-way k-means whose centres start at (0) a running universum (background) centre, (1) the photo's
own image feature and (2) a running per-class target centre: cluster 1 = pseudo-source pixels T^f,
cluster 0 = unknown-class pixels T^u, cluster 2 = true target pixels T^t. L_d = MMD(S + T^f, T^t)
and L_u = mean of the T^u features (pushed to zero, so the class response leaves the background).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fos.localize.config import WsolCfg
from fos.models.backbones import MobileNetV2, load_imagenet_mobilenet_v2


def _dilate_tail(features: nn.Sequential, first: int) -> None:
    """Output stride 32 -> 16: stage ``first`` (stride 2) keeps stride 1; later 3x3 convs get dilation 2."""
    for i, stage in enumerate(features):
        if i < first:
            continue
        for m in stage.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                if i == first:
                    m.stride = (1, 1)
                else:
                    m.dilation, m.padding = (2, 2), (2, 2)


class WsolNet(nn.Module):
    def __init__(self, cfg: WsolCfg):
        super().__init__()
        if not cfg.classes:
            raise ValueError("a localizer needs at least one class")
        self.cfg = cfg
        net = load_imagenet_mobilenet_v2() if cfg.pretrained else MobileNetV2()
        self.features = net.features
        _dilate_tail(self.features, 14)
        self.classifier = nn.Linear(MobileNetV2.out_channels, len(cfg.classes))
        for i, stage in enumerate(self.features):
            for p in stage.parameters():
                p.requires_grad_(i >= cfg.frozen_stages)
        self.eval()  # inference unless a trainer says otherwise (batch norm stays in eval even then)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():  # batch norm keeps ImageNet statistics (batches of a dozen photos)
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def frozen(self, x: torch.Tensor) -> torch.Tensor:
        return self.features[: self.cfg.frozen_stages](x)

    def tail(self, h: torch.Tensor) -> torch.Tensor:
        return self.features[self.cfg.frozen_stages:](h)

    def head(self, pix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel features (B, C, h, w) -> (logits (B, K), CAMs (B, K, h, w))."""
        logits = self.classifier(pix.mean((2, 3)))
        cams = torch.einsum("bchw,kc->bkhw", pix, self.classifier.weight) + self.classifier.bias.view(1, -1, 1, 1)
        return logits, cams

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.tail(self.frozen(x)))


# --------------------------------------------------------------------------- DA-WSOL
def kmeans3(x: torch.Tensor, centres: torch.Tensor, iters: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means of rows of ``x`` (N, C) from the given initial ``centres`` (3, C); an empty
    cluster keeps its centre. Returns (labels (N,), centres (3, C))."""
    c = centres.clone()
    labels = torch.zeros(len(x), dtype=torch.long)
    for _ in range(iters):
        labels = torch.cdist(x, c).argmin(1)
        new = c.clone()
        for k in range(len(c)):
            sel = labels == k
            if sel.any():
                new[k] = x[sel].mean(0)
        if torch.allclose(new, c):
            break
        c = new
    return labels, c


class TargetSampleAssigner:
    """DA-WSOL's target sample assigner, with running-mean memories of the universum and class centres."""

    UNIVERSUM, SOURCE, TARGET = 0, 1, 2

    def __init__(self, num_classes: int, dims: int, samples: int = 32, seed: int = 0):
        self.class_centres = np.zeros((num_classes, dims), np.float64)
        self.class_counts = np.zeros(num_classes, np.int64)
        self.universum = np.zeros(dims, np.float64)
        self.universum_count = 0
        self.samples = samples
        self.rng = np.random.default_rng(seed)

    def state(self) -> dict:
        return {"class_centres": self.class_centres.tolist(), "class_counts": self.class_counts.tolist(),
                "universum": self.universum.tolist(), "universum_count": self.universum_count}

    def load_state(self, st: dict) -> None:
        self.class_centres = np.asarray(st["class_centres"], np.float64)
        self.class_counts = np.asarray(st["class_counts"], np.int64)
        self.universum = np.asarray(st["universum"], np.float64)
        self.universum_count = int(st["universum_count"])

    def split(self, image_feature: torch.Tensor, pixel_features: torch.Tensor, label: int):
        """One photo: ``image_feature`` (C,), ``pixel_features`` (C, h, w) of class ``label``.

        Returns (source samples (1 + s, C): the image feature and pseudo-source pixels, or None when a
        cluster is too small; target samples (s, C) or None; universum pixels (n, C); labels (h, w))."""
        c, h, w = pixel_features.shape
        pix = pixel_features.reshape(c, -1).t()  # (hw, C), carries the gradient
        if self.class_counts[label] == 0:  # the class's first photo: its image feature is the target centre
            self.class_centres[label] = image_feature.detach().double().numpy()
            self.class_counts[label] = 1
        init = torch.from_numpy(np.stack([self.universum, image_feature.detach().double().numpy(),
                                          self.class_centres[label]])).float()
        labels, centres = kmeans3(pix.detach(), init)
        # running means of the memories (the centres the next photos start from)
        self.class_counts[label] += 1
        n = self.class_counts[label]
        self.class_centres[label] += (centres[self.TARGET].double().numpy() - self.class_centres[label]) / n
        self.universum_count += 1
        self.universum += (centres[self.UNIVERSUM].double().numpy() - self.universum) / self.universum_count
        src_idx = torch.nonzero(labels == self.SOURCE).flatten().numpy()
        tgt_idx = torch.nonzero(labels == self.TARGET).flatten().numpy()
        universum = pix[labels == self.UNIVERSUM]
        source = target = None
        if len(tgt_idx) >= self.samples and len(src_idx) >= self.samples - 1:
            s = torch.from_numpy(self.rng.choice(src_idx, self.samples - 1, replace=False))
            t = torch.from_numpy(self.rng.choice(tgt_idx, self.samples, replace=False))
            source = torch.cat([image_feature.unsqueeze(0), pix[s]])
            target = pix[t]
        return source, target, universum, labels.view(h, w)


def mmd_rbf(source: torch.Tensor, target: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5) -> torch.Tensor:
    """Squared MMD between two equal-size samples with a sum of ``kernel_num`` Gaussian kernels whose
    bandwidths are spaced by ``kernel_mul`` around the mean pairwise distance (the linear-time estimator)."""
    if len(source) != len(target):
        raise ValueError(f"mmd_rbf needs equal sample sizes, got {len(source)} and {len(target)}")
    n = len(source)
    total = torch.cat([source, target])
    d2 = torch.cdist(total, total).pow(2)
    bandwidth = d2.detach().sum() / (len(total) ** 2 - len(total)) / (kernel_mul ** (kernel_num // 2))
    k = sum(torch.exp(-d2 / (bandwidth * kernel_mul ** i + 1e-12)) for i in range(kernel_num))
    i = torch.arange(n)
    j = (i + 1) % n
    return (k[i, j] + k[i + n, j + n] - k[i, j + n] - k[j, i + n]).mean()


def dal_loss(tsa: TargetSampleAssigner, pix: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L_d and L_u over a batch: pixel features (B, C, h, w), multi-hot targets (B, K). Photos with one
    label take part (as the authors' multi-label code does); returns (L_d, L_u), zero when none did."""
    ld, lu, nd, nu = pix.new_zeros(()), pix.new_zeros(()), 0, 0
    image_features = pix.mean((2, 3))
    for b in range(len(pix)):
        labs = torch.nonzero(targets[b] > 0.5).flatten()
        if len(labs) != 1:
            continue
        source, target, universum, _ = tsa.split(image_features[b], pix[b], int(labs[0]))
        if source is not None:
            ld = ld + mmd_rbf(source, target)
            nd += 1
        if len(universum):
            lu = lu + universum.mean()
            nu += 1
    return ld / max(nd, 1), lu / max(nu, 1)


def normalize_cams(cams: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalization to [0, 1] of (..., h, w)."""
    flat = cams.flatten(-2)
    lo, hi = flat.min(-1, keepdim=True).values, flat.max(-1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(cams)


def upsample_cam(cam: torch.Tensor, width: int, height: int) -> np.ndarray:
    """One CAM (h, w) -> (height, width) float32 in [0, 1], bilinear, then min-max normalized."""
    up = F.interpolate(cam[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    return normalize_cams(up).numpy().astype(np.float32)
