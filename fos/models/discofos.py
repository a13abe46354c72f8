"""DiscoFOS teacher (composite discriminator) and student (two encoders + distillation head)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fos.config import ModelCfg
from fos.models.backbones import Backbone
from fos.models.roi_align import roi_align

STRIDE = 32  # both backbones downsample by 32: a 224 input gives a 7x7 map


def _projection(cin: int, dim: int | None, linear: bool) -> nn.Module:
    """1x1 channel reduction; ``linear`` drops the ReLU (same parameter names either way)."""
    if dim is None:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, dim, 1)) if linear else nn.Sequential(nn.Conv2d(cin, dim, 1), nn.ReLU(inplace=True))


def geometry_term(fc: nn.Linear, geom: torch.Tensor) -> torch.Tensor:
    """``fc`` on the first ``fc.in_features`` geometry columns: (B, >= n) -> (B,).

    Callers always pass the full vector of :func:`fos.preprocess.geometry_batch`; a model made with
    fewer columns (aspect terms only) reads just those.
    """
    n = fc.in_features
    if geom.shape[-1] < n:
        raise ValueError(f"geometry has {geom.shape[-1]} columns, this model reads {n}")
    return fc(geom[..., :n]).flatten()


SHAPE_COLUMNS = 5  # fos.preprocess.SHAPE_DIM: the pair vector's geometry columns, then ring and cutout colour


class PhotometricTerm(nn.Module):
    """How well the cutout's lighting fits the photo around the box: an MLP on the colour statistics
    of the pair vector (columns 5-10: the context ring's CIELAB mean and spread, 11-16: the cutout's),
    given also their differences. ``(N, >= 17) -> (N,)``. :mod:`fos.scoring` refuses NaN statistics (not computed)."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(18, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    @staticmethod
    def features(geom: torch.Tensor) -> torch.Tensor:
        s = SHAPE_COLUMNS
        if geom.shape[-1] < s + 12:
            raise ValueError(f"the photometric term needs the {s + 12}-column pair vector, got {geom.shape[-1]} columns")
        ring, fg = geom[..., s:s + 6], geom[..., s + 6:s + 12]
        return torch.cat([ring, fg, fg - ring], -1)

    def forward(self, geom: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(geom)).flatten()


class Teacher(nn.Module):
    """Scores a composite crop. ``forward(x, geom) -> (feature map (B, D, 7, 7), logit (B,))``.

    The feature map is the distillation target of the student.
    """

    def __init__(self, cfg: ModelCfg):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg.backbone, cfg.pretrained, cfg.backbone_relu_out)
        self.proj = _projection(self.backbone.out_channels, cfg.proj_dim, cfg.linear_features)
        self.dim = cfg.proj_dim or self.backbone.out_channels
        self.fc = nn.Linear(self.dim, 1)
        self.geom_fc = nn.Linear(cfg.geometry_dims, 1, bias=False) if cfg.geometry else None
        self.photo = PhotometricTerm(cfg.photometric_hidden) if cfg.photometric else None

    def forward(self, x: torch.Tensor, geom: torch.Tensor | None = None):
        return self.from_trunk(self.backbone(x), geom)

    def from_trunk(self, trunk_map: torch.Tensor, geom: torch.Tensor | None = None):
        """The teacher above its backbone: the backbone's map (B, C, 7, 7) -> (feature map, logit). What
        :mod:`fos.train.cached` trains on cached maps of a frozen backbone."""
        feat = self.proj(trunk_map)  # (B, D, 7, 7)
        logit = self.fc(feat.mean((2, 3))).flatten()
        if self.geom_fc is not None:
            if geom is None:
                raise ValueError("this teacher uses geometry features: pass geom (B, 17), fos.preprocess.geometry_batch")
            logit = logit + geometry_term(self.geom_fc, geom)
        if self.photo is not None:
            if geom is None:
                raise ValueError("this teacher has a photometric term: pass the pair vector, fos.preprocess.geometry_batch")
            logit = logit + self.photo(geom)
        return feat, logit

    @torch.no_grad()
    def score(self, x: torch.Tensor, geom: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self(x, geom)[1])


class DistillHead(nn.Module):
    """RoI feature of the background + foreground map -> two 3x3 convs -> pooled score.

    ``conv1`` sees the concatenation [bg RoI, fg map]; it is applied as two halves so that either
    half can be computed once and reused (the concatenation never needs to exist).

    With ``interaction`` each half also carries a 1x1 projection (``bg_q`` of the RoI, ``fg_k`` of
    the cutout's map), and the first layer adds their product, position by position and channel by
    channel: ``act(conv1_bg(roi) + conv1_fg(fmap) + bg_q(roi) * fg_k(fmap))``. The halves are then
    2D channels wide (still computed once each, and what a library caches); the product is what lets
    the score of a cutout depend on the background it is put in, beyond a sum of the two.
    """

    def __init__(self, dim: int, geometry: bool, linear_feature: bool = False, geometry_dims: int = 3,
                 act: str = "relu", interaction: bool = False, photometric: bool = False, photometric_hidden: int = 32):
        super().__init__()
        self.photo = PhotometricTerm(photometric_hidden) if photometric else None
        if act not in ("relu", "leaky"):
            raise ValueError(f"unknown head activation {act!r}; use relu or leaky")
        self.act = act
        self.linear_feature = linear_feature  # no ReLU on conv2: the feature matches a linear teacher map
        self.conv1 = nn.Conv2d(2 * dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        self.classifier = nn.Conv2d(dim, 1, 1)
        self.geom_fc = nn.Linear(geometry_dims, 1, bias=False) if geometry else None
        self.interaction = interaction
        if interaction:
            self.bg_q = nn.Conv2d(dim, dim, 1)
            self.fg_k = nn.Conv2d(dim, dim, 1)
        self.dim = dim
        self.part_dim = 2 * dim if interaction else dim  # channels of bg_part / fg_part

    def bg_part(self, roi: torch.Tensor) -> torch.Tensor:
        """conv1 on the background half, bias included: (B, D, a, a) -> (B, part_dim, a, a)."""
        part = F.conv2d(roi, self.conv1.weight[:, : self.dim], self.conv1.bias, padding=1)
        return torch.cat([part, self.bg_q(roi)], 1) if self.interaction else part

    def fg_part(self, fmap: torch.Tensor) -> torch.Tensor:
        """conv1 on the foreground half: (N, D, a, a) -> (N, part_dim, a, a). Cacheable per foreground."""
        part = F.conv2d(fmap, self.conv1.weight[:, self.dim:], None, padding=1)
        return torch.cat([part, self.fg_k(fmap)], 1) if self.interaction else part

    def pre_activation(self, bg_part: torch.Tensor, fg_part: torch.Tensor) -> torch.Tensor:
        """The first layer's output before its activation, from the two halves: (N, D, a, a)."""
        if not self.interaction:
            return bg_part + fg_part
        d = self.dim
        return bg_part[:, :d] + fg_part[:, :d] + bg_part[:, d:] * fg_part[:, d:]

    def finish(self, bg_part: torch.Tensor, fg_part: torch.Tensor, geom: torch.Tensor | None = None):
        """The halves -> (distillation feature (N, D, a, a), logit (N,))."""
        pre = self.pre_activation(bg_part, fg_part)
        h = F.leaky_relu(pre, 0.1) if self.act == "leaky" else F.relu(pre)
        feat = self.conv2(h) if self.linear_feature else F.relu(self.conv2(h))
        logit = self.classifier(feat.mean((2, 3), keepdim=True)).flatten()
        return feat, self._pair_terms(logit, geom)

    def forward(self, roi, fmap, geom=None):
        return self.finish(self.bg_part(roi), self.fg_part(fmap), geom)

    @property
    def foldable(self) -> bool:
        """True when the score is linear in the first layer's activations (no ReLU after ``conv2``), so
        ``conv2``, the spatial mean and the classifier fold into one map (:meth:`score_map`)."""
        return self.linear_feature

    def score_map(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``conv2`` -> mean over the ``size`` x ``size`` map -> ``classifier``, folded: (A (D, size, size), c)
        with ``classifier(mean(conv2(h))) == (A * h).sum() + c`` for every h, exactly (up to float
        rounding). A is the adjoint of conv2 (a transposed conv, same padding) applied to the classifier's
        weights spread evenly over the map; border cells get fewer taps, so A is not constant."""
        if not self.foldable:
            raise ValueError("the head has a ReLU after conv2: its score does not fold into one map")
        w = self.classifier.weight.reshape(1, self.dim, 1, 1).expand(1, self.dim, size, size) / (size * size)
        a = F.conv_transpose2d(w, self.conv2.weight, padding=1)[0]
        c = (self.classifier.weight.flatten() * self.conv2.bias).sum() + self.classifier.bias[0]
        return a, c

    def score(self, bg_part: torch.Tensor, fg_part: torch.Tensor, geom: torch.Tensor | None = None) -> torch.Tensor:
        """The logit of :meth:`finish` without the distillation feature: with a foldable head one
        elementwise product per candidate (D * a * a multiply-adds) instead of ``conv2``'s
        D * D * 9 * a * a. What search scores with; training uses :meth:`finish`."""
        if not self.foldable:
            return self.finish(bg_part, fg_part, geom)[1]
        pre = self.pre_activation(bg_part, fg_part)
        h = F.leaky_relu(pre, 0.1) if self.act == "leaky" else F.relu(pre)
        a, c = self.score_map(h.shape[-1])
        logit = (h * a).sum((1, 2, 3)) + c
        return self._pair_terms(logit, geom)

    def _pair_terms(self, logit: torch.Tensor, geom: torch.Tensor | None) -> torch.Tensor:
        """``logit`` plus the geometry and photometric terms of the pair vector ``geom``."""
        if self.geom_fc is not None:
            if geom is None:
                raise ValueError("this head uses geometry features: pass geom (N, 17), fos.preprocess.geometry_batch")
            logit = logit + geometry_term(self.geom_fc, geom)
        if self.photo is not None:
            if geom is None:
                raise ValueError("this head has a photometric term: pass the pair vector, fos.preprocess.geometry_batch")
            logit = logit + self.photo(geom)
        return logit


class Student(nn.Module):
    """Two encoders and the light distillation head.

    * ``encode_background(bg (B,3,S,S), crop_box (B,4)) -> (roi (B,D,a,a), emb (B,E))``
    * ``encode_foreground(fg (N,3,S,S)) -> (fmap (N,D,a,a), emb (N,E))``
    * ``fuse(roi, fmap, geom) -> (feat (N,D,a,a), logit (N,))``; a single RoI broadcasts over N.
    """

    def __init__(self, cfg: ModelCfg):
        super().__init__()
        self.cfg = cfg
        self.bg_encoder = Backbone(cfg.backbone, cfg.pretrained, cfg.backbone_relu_out)
        self.fg_encoder = Backbone(cfg.backbone, cfg.pretrained, cfg.backbone_relu_out)
        cin = self.bg_encoder.out_channels
        self.dim = cfg.proj_dim or cin
        self.bg_proj = _projection(cin, cfg.proj_dim, cfg.linear_features)
        self.fg_proj = _projection(cin, cfg.proj_dim, cfg.linear_features)
        self.head = DistillHead(self.dim, cfg.geometry, cfg.linear_features, cfg.geometry_dims, cfg.head_act,
                                cfg.interaction, cfg.photometric, cfg.photometric_hidden)
        e = cfg.embed_dim
        self.bg_embed = nn.Linear(self.dim, e) if e else nn.Identity()
        self.fg_embed = nn.Linear(self.dim, e) if e else nn.Identity()

    def encode_background(self, bg: torch.Tensor, crop_box: torch.Tensor):
        return self.background_from_trunk(self.bg_encoder(bg), crop_box)

    def background_from_trunk(self, trunk_map: torch.Tensor, crop_box: torch.Tensor):
        """:meth:`encode_background` above the backbone (its map (B, C, 7, 7)), for cached maps."""
        fmap = self.bg_proj(trunk_map)  # (B, D, 7, 7)
        idx = torch.arange(fmap.shape[0], device=fmap.device, dtype=torch.float32).view(-1, 1)
        rois = torch.cat([idx, crop_box.float()], dim=1)
        roi = roi_align(fmap, rois, self.cfg.align_size, 1.0 / STRIDE, self.cfg.sampling_ratio)
        emb = F.normalize(self.bg_embed(roi.mean((2, 3))), dim=-1)
        return roi, emb

    def encode_foreground(self, fg: torch.Tensor):
        return self.foreground_from_trunk(self.fg_encoder(fg))

    def foreground_from_trunk(self, trunk_map: torch.Tensor):
        """:meth:`encode_foreground` above the backbone (its map (N, C, 7, 7)), for cached maps."""
        fmap = self.fg_proj(trunk_map)
        a = self.cfg.align_size
        if fmap.shape[-2:] != (a, a):
            fmap = F.interpolate(fmap, (a, a))
        emb = F.normalize(self.fg_embed(fmap.mean((2, 3))), dim=-1)
        return fmap, emb

    def fuse(self, roi: torch.Tensor, fmap: torch.Tensor, geom: torch.Tensor | None = None):
        return self.head.finish(self.head.bg_part(roi), self.head.fg_part(fmap), geom)

    def forward(self, bg, crop_box, fg, geom=None):
        """One background per foreground (B == N) or one background for all: returns sigmoid scores."""
        roi, _ = self.encode_background(bg, crop_box)
        fmap, _ = self.encode_foreground(fg)
        return torch.sigmoid(self.fuse(roi, fmap, geom)[1])
