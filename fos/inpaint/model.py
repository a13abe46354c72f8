"""SPL: image inpainting with learned semantic priors (Zhang et al., IJCAI 2021), sized for CPUs.

Two paths read the masked crop (RGB with the hole set to 0, i.e. mid-gray in [-1, 1], plus the hole
mask): the **semantic learner** (three down-samplings, each followed by a residual dense block, then a
1x1 conv) predicts the *semantic priors*, trained by distillation to equal the features that a frozen
ImageNet MobileNetV2 (:class:`PriorNet`) computes on the complete crop; the **image encoder** (three
down-samplings) extracts texture. The decoder runs ``blocks`` ResBlocks at stride 8 whose normalization
is modulated by the priors (SPADE: ``IN(x) * (1 + gamma(p)) + beta(p)``), or, in the ``concat``
ablation, takes the priors concatenated once to its input, then up-samples three times to RGB.

With ``cfg.init == "telea"`` (our variant, not the paper's) the hole of ``image`` arrives filled by
OpenCV's Telea instead of gray and the decoder's output is a correction added to it; at serving time
that correction is upsampled and added to the full-resolution Telea fill (:mod:`fos.inpaint.infer`).

Shapes: ``image`` (B, 3, S, S) in [-1, 1], ``mask`` (B, 1, S, S) with 1 in the hole;
``SPLNet(image, mask) -> (filled (B, 3, S, S), raw output (B, 3, S, S), priors (B, P, S/8, S/8))``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fos.inpaint.config import InpaintCfg

PRIOR_CHANNELS = {6: 32, 13: 96}  # MobileNetV2 stage -> output channels (stage 6: stride 8, 13: stride 16)


def prior_channels(cfg: InpaintCfg) -> int:
    return sum(PRIOR_CHANNELS[i] for i in cfg.prior_layers)


class PriorNet(nn.Module):
    """The frozen prior model: ImageNet MobileNetV2 stages 0..max(prior_layers), in eval mode.

    ``forward(image in [-1, 1]) -> (B, P, S/8, S/8)``: the outputs of ``prior_layers``, each resampled
    (bilinear) to stride 8 and concatenated. Used only for training (the generator never needs it).
    """

    def __init__(self, cfg: InpaintCfg, pretrained: bool = True):
        super().__init__()
        from fos.models.backbones import MobileNetV2, load_imagenet_mobilenet_v2
        from fos.preprocess import IMAGENET_MEAN, IMAGENET_STD

        net = load_imagenet_mobilenet_v2() if pretrained else MobileNetV2()
        self.layers = tuple(cfg.prior_layers)
        self.features = net.features[: max(self.layers) + 1]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always eval: batch norm keeps its ImageNet statistics
        return super().train(False)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = ((image + 1) / 2 - self.mean) / self.std
        size = (image.shape[2] // 8, image.shape[3] // 8)
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layers:
                outs.append(x if x.shape[2:] == size else F.interpolate(x, size, mode="bilinear", align_corners=False))
        return torch.cat(outs, 1)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, (k - 1) // 2 if stride == 1 else 1)


class Down(nn.Sequential):
    """Stride-2 4x4 conv, instance norm, ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 4, 2, 1), nn.InstanceNorm2d(cout), nn.ReLU(inplace=True))


class Up(nn.Sequential):
    """Nearest x2, 3x3 conv, instance norm, ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), _conv(cin, cout), nn.InstanceNorm2d(cout),
                         nn.ReLU(inplace=True))


class ResidualDenseBlock(nn.Module):
    """Three densely connected 3x3 convs (growth ``g``), a 1x1 fusion, and a residual connection."""

    def __init__(self, c: int, g: int = 16, n: int = 3):
        super().__init__()
        self.convs = nn.ModuleList(_conv(c + i * g, g) for i in range(n))
        self.fuse = nn.Conv2d(c + n * g, c, 1)

    def forward(self, x):
        feats = [x]
        for conv in self.convs:
            feats.append(F.relu(conv(torch.cat(feats, 1))))
        return x + self.fuse(torch.cat(feats, 1))


class SemanticLearner(nn.Module):
    """Masked crop + mask (4 ch) -> semantic priors (P ch, stride 8)."""

    def __init__(self, cfg: InpaintCfg):
        super().__init__()
        w = cfg.widths
        self.body = nn.Sequential(Down(4, w[0]), ResidualDenseBlock(w[0]), Down(w[0], w[1]), ResidualDenseBlock(w[1]),
                                  Down(w[1], w[2]), ResidualDenseBlock(w[2]))
        self.out = nn.Conv2d(w[2], prior_channels(cfg), 1)

    def forward(self, x):
        return self.out(self.body(x))


class SPADE(nn.Module):
    """Spatially-adaptive normalization: parameter-free instance norm, scaled and shifted per pixel by the priors."""

    def __init__(self, c: int, prior: int, hidden: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(c, affine=False)
        self.shared = nn.Sequential(_conv(prior, hidden), nn.ReLU(inplace=True))
        self.gamma = _conv(hidden, c)
        self.beta = _conv(hidden, c)

    def forward(self, x, p):
        h = self.shared(p)
        return self.norm(x) * (1 + self.gamma(h)) + self.beta(h)


class SPADEResBlock(nn.Module):
    def __init__(self, c: int, prior: int, hidden: int):
        super().__init__()
        self.n1, self.c1 = SPADE(c, prior, hidden), _conv(c, c)
        self.n2, self.c2 = SPADE(c, prior, hidden), _conv(c, c)

    def forward(self, x, p):
        h = self.c1(F.relu(self.n1(x, p)))
        return x + self.c2(F.relu(self.n2(h, p)))


class ResBlock(nn.Module):
    """The ``concat`` ablation's block: the same, with plain instance norm."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.InstanceNorm2d(c), nn.ReLU(inplace=True), _conv(c, c), nn.InstanceNorm2d(c),
                                  nn.ReLU(inplace=True), _conv(c, c))

    def forward(self, x, p=None):
        return x + self.body(x)


class SPLNet(nn.Module):
    """The generator (semantic learner, image encoder, decoder). See the module docstring."""

    def __init__(self, cfg: InpaintCfg | None = None):
        super().__init__()
        self.cfg = cfg = cfg or InpaintCfg()
        w, pc = cfg.widths, prior_channels(cfg)
        self.learner = SemanticLearner(cfg)
        self.encoder = nn.Sequential(nn.Conv2d(4, 16, 5, 1, 2), nn.ReLU(inplace=True), Down(16, w[0]), Down(w[0], w[1]),
                                     Down(w[1], w[2]))
        if cfg.variant == "spade":
            self.fuse = None
            self.blocks = nn.ModuleList(SPADEResBlock(w[2], pc, cfg.spade_hidden) for _ in range(cfg.blocks))
        else:
            self.fuse = _conv(w[2] + pc, w[2])
            self.blocks = nn.ModuleList(ResBlock(w[2]) for _ in range(cfg.blocks))
        self.decoder = nn.Sequential(Up(w[2], w[1]), Up(w[1], w[0]), Up(w[0], 16), _conv(16, 3), nn.Tanh())

    def forward(self, image: torch.Tensor, mask: torch.Tensor):
        keep = 1 - mask
        # init "telea": the hole arrives pre-filled by OpenCV's Telea and the decoder adds a correction
        x = torch.cat([image if self.cfg.init == "telea" else image * keep, mask], 1)
        priors = self.learner(x)
        h = self.encoder(x)
        if self.fuse is not None:
            h = self.fuse(torch.cat([h, priors], 1))
        for block in self.blocks:
            h = block(h, priors)
        raw = self.decoder(h)
        if self.cfg.init == "telea":
            raw = image + raw
        return image * keep + raw * mask, raw, priors
