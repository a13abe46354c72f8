"""The image and text encoders of :mod:`fos.refer`, behind one interface.

An encoder pair is what :data:`ENCODERS` maps a name to: a function of the :class:`ReferCfg` that
returns ``(image_encoder, text_encoder)``:

* an image encoder is an ``nn.Module`` with ``out_channels``, ``stride`` and ``forward(x)`` mapping a
  batch of photos (B, 3, S, S, ImageNet-normalized, :func:`fos.preprocess.photo_input`) to pixel
  features (B, out_channels, S / stride, S / stride). It is frozen: training caches its output.
* a text encoder is an ``nn.Module`` with ``out_dim``, ``tokenize(texts) -> LongTensor (T, L)`` and
  ``forward(tokens) -> (T, out_dim)``, one embedding per phrase. It trains.

The default pair, ``mobilenet-transformer``, is the ImageNet MobileNetV2 we ship (output stride 16,
as the localizer's) and a 2-layer transformer over word tokens trained from scratch: no pretrained
vision-language model is reachable here. A CLIP-like pair plugs in with :func:`register` (its image
side must give a spatial map, as CLIP's ResNets do before their attention pool); ``clip`` is reserved
for it and says what to do while none is registered.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fos.errors import WeightsError
from fos.refer.phrases import words

PAD, UNK = 0, 1


class MobileNetImage(nn.Module):
    """ImageNet MobileNetV2 ``features`` at output stride 16 (1280 channels), frozen, batch norm in eval."""

    stride = 16

    def __init__(self, pretrained: bool = True):
        super().__init__()
        from fos.localize.model import _dilate_tail
        from fos.models.backbones import MobileNetV2, load_imagenet_mobilenet_v2

        net = load_imagenet_mobilenet_v2() if pretrained else MobileNetV2()
        self.features = net.features
        _dilate_tail(self.features, 14)
        self.out_channels = MobileNetV2.out_channels
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class _Block(nn.Module):
    """Pre-norm transformer block with a padding mask (plain matmuls: exports to ONNX as is)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        t, n, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.n1(x)).reshape(t, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        att = q @ k.transpose(-1, -2) / math.sqrt(d // h)  # (T, H, L, L)
        att = att.masked_fill(~keep[:, None, None, :], -1e4).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(t, n, d))
        return x + self.mlp(self.n2(x))


class WordTransformer(nn.Module):
    """Word tokens -> a 2-layer transformer -> the mean of the non-padding outputs."""

    def __init__(self, vocab: list[str], dim: int, layers: int = 2, heads: int = 4, max_tokens: int = 12):
        super().__init__()
        self.vocab = {w: i + 2 for i, w in enumerate(vocab)}
        self.max_tokens = max_tokens
        self.out_dim = dim
        self.emb = nn.Embedding(len(vocab) + 2, dim, padding_idx=PAD)
        self.pos = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        ids = [[self.vocab.get(w, UNK) for w in words(t)][: self.max_tokens] for t in texts]
        out = torch.zeros(len(texts), max(1, max((len(i) for i in ids), default=1)), dtype=torch.long)
        for r, i in enumerate(ids):
            out[r, :len(i)] = torch.tensor(i, dtype=torch.long)
        return out

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        keep = tokens > PAD
        x = self.emb(tokens) + self.pos[: tokens.shape[1]]
        for b in self.blocks:
            x = b(x, keep)
        x = self.norm(x)
        w = keep.unsqueeze(-1).to(x.dtype)
        return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


def _default(cfg) -> tuple[nn.Module, nn.Module]:
    return (MobileNetImage(cfg.pretrained),
            WordTransformer(cfg.vocab, cfg.dim, cfg.text_layers, cfg.text_heads, cfg.max_tokens))


def _clip(cfg):
    raise WeightsError("no CLIP-like encoder pair is registered: none ships with fos and none can be downloaded "
                       "here. Register yours with fos.refer.encoders.register('clip', factory) (see its "
                       "docstring), or use encoders 'mobilenet-transformer'")


ENCODERS: dict[str, Callable] = {"mobilenet-transformer": _default, "clip": _clip}


def register(name: str, factory: Callable) -> None:
    """Make ``factory(cfg) -> (image_encoder, text_encoder)`` available as ``ReferCfg(encoders=name)``."""
    ENCODERS[name] = factory


def build_encoders(cfg) -> tuple[nn.Module, nn.Module]:
    if cfg.encoders not in ENCODERS:
        raise WeightsError(f"unknown encoder pair {cfg.encoders!r}; known: {sorted(ENCODERS)}")
    img, txt = ENCODERS[cfg.encoders](cfg)
    for attr in ("out_channels", "stride"):
        if not hasattr(img, attr):
            raise WeightsError(f"the image encoder of {cfg.encoders!r} has no {attr}")
    for attr in ("out_dim", "tokenize"):
        if not hasattr(txt, attr):
            raise WeightsError(f"the text encoder of {cfg.encoders!r} has no {attr}")
    return img, txt


def coords(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(1, 2, h, w): x and y of each cell centre in [-1, 1]."""
    ys = (torch.arange(h, dtype=like.dtype, device=like.device) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=like.dtype, device=like.device) + 0.5) / w * 2 - 1
    return torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)])[None]


def l2n(x: torch.Tensor, dim: int) -> torch.Tensor:
    return F.normalize(x, dim=dim, eps=1e-6)
