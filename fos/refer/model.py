"""The TRIS network (Liu et al., ICCV 2023), on the encoders of :mod:`fos.refer.encoders`.

Stage 1, the text-to-image response (:meth:`ReferNet.respond`):

* pixel features of the frozen image encoder, with two coordinate channels (x, y), projected to
  ``dim`` (1x1 convs) and channel-normalized; the phrase embedding projected to ``dim`` and
  normalized;
* the bidirectional prompt (:class:`BidirectionalPrompt`, as the paper's): pixels attend to the phrases
  and the phrases to the pixels; each refinement is added with a learned weight (0.1 at start);
* the response of pixel i to phrase t is ``exp(s) * <v_i, l_t>``, with a learned temperature ``s``,
  plus (``spatial_gate``) the phrase's location gate (:meth:`ReferNet.gate`);
* calibration (:func:`calibrate`): a softmax over a constant background channel and every phrase
  present, so a pixel that all phrases light up answers none of them strongly.

Training is classification: a photo must respond more to phrases that hold in it than to phrases
that do not (:func:`class_logits`: mean + max of the response over pixels, plus the focal penalty on
the calibrated share, as the authors' code adds).

Stage 2, :class:`SegHead`: a light conv head on the prompted pixel features times the phrase embedding,
the response and the calibrated response, trained on pseudo masks (:mod:`fos.refer.train`); it serves
inference.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fos.refer.config import ReferCfg
from fos.refer.encoders import build_encoders, coords, l2n

GATE_BASIS = 9  # 1, x, y, x^2, y^2, xy, sin(pi x), sin(pi y), |x|: enough for left/right/middle and top/bottom
BACKGROUND = 1.0  # the calibration's constant background logit (the authors' code uses ones)


def _vproj(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(d, d, 1), nn.InstanceNorm2d(d, affine=True), nn.ReLU())


class BidirectionalPrompt(nn.Module):
    """Cross-attention both ways between pixels (B, D, h, w) and phrases (B, T, D)."""

    def __init__(self, d: int):
        super().__init__()
        self.vq, self.vk, self.vv = _vproj(d), _vproj(d), _vproj(d)
        self.tq, self.tk, self.tv = (nn.Sequential(nn.Linear(d, d), nn.ReLU()) for _ in range(3))
        self.v_out = nn.Sequential(nn.Conv2d(d, d, 1), nn.InstanceNorm2d(d, affine=True))
        self.t_out = nn.Linear(d, d)

    def forward(self, vis: torch.Tensor, lan: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, d, h, w = vis.shape
        qv = self.vq(vis).flatten(2).transpose(1, 2)  # (B, hw, D)
        kv = self.vk(vis).flatten(2)  # (B, D, hw)
        vv = self.vv(vis).flatten(2).transpose(1, 2)
        qt, kt, vt = self.tq(lan), self.tk(lan), self.tv(lan)  # (B, T, D)
        new_vis = torch.softmax(qv @ kt.transpose(1, 2) / math.sqrt(d), -1) @ vt  # pixels read the phrases
        new_lan = torch.softmax(qt @ kv / math.sqrt(d), -1) @ vv  # phrases read the pixels
        return self.v_out(new_vis.transpose(1, 2).reshape(b, d, h, w)), self.t_out(new_lan)


class SegHead(nn.Module):
    """Stage 2: mask logits (B, 1, h, w) of one phrase per photo, from the response, the calibrated
    response and the cell's position, and (``features``) the prompted pixels times the phrase."""

    def __init__(self, d: int, hidden: int = 64, features: bool = True):
        super().__init__()
        self.features = features
        self.net = nn.Sequential(nn.Conv2d(d * features + 4, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, 1, 1))

    def forward(self, vis: torch.Tensor, lan: torch.Tensor, score: torch.Tensor, calibrated: torch.Tensor):
        h, w = vis.shape[2:]
        x = [score, calibrated, coords(h, w, vis).expand(len(vis), -1, -1, -1)]
        return self.net(torch.cat(([vis * lan[:, :, None, None]] if self.features else []) + x, 1))


def gate_basis(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(GATE_BASIS, h, w): the functions of the cell centre (x, y in [-1, 1]) the location gate mixes."""
    x, y = coords(h, w, like)[0]
    return torch.stack([torch.ones_like(x), x, y, x * x, y * y, x * y, torch.sin(math.pi * x),
                        torch.sin(math.pi * y), x.abs()])


def calibrate(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over [background, phrases] of responses (B, T, h, w) -> (B, T, h, w); ``valid`` (B, T)
    leaves phrases out (their share is 0)."""
    if valid is not None:
        scores = scores.masked_fill(~valid[:, :, None, None], -1e4)
    bg = torch.full_like(scores[:, :1], BACKGROUND)
    return torch.softmax(torch.cat([bg, scores], 1), 1)[:, 1:]


def focal_penalty(x: torch.Tensor, p: float, lam: float) -> torch.Tensor:
    return (1 - x).pow(p) * torch.log(lam + x)


def class_logits(scores: torch.Tensor, calibration: bool, p: float = 3.0, lam: float = 0.01,
                 pooling: str = "mean+max") -> torch.Tensor:
    """(B, T) photo-phrase logits from responses (B, T, h, w): mean + max over pixels, as the authors'
    code (or ``max`` alone), plus the focal penalty of the calibrated share."""
    flat = scores.flatten(2)
    out = flat.max(-1).values + (flat.mean(-1) if pooling == "mean+max" else 0)
    if calibration:
        out = out + focal_penalty(calibrate(scores).flatten(2).mean(-1), p, lam)
    return out


class ReferNet(nn.Module):
    def __init__(self, cfg: ReferCfg):
        super().__init__()
        if not cfg.categories or not cfg.vocab:
            raise ValueError("a referring model needs categories and a vocabulary")
        self.cfg = cfg
        self.image, self.text = build_encoders(cfg)
        d = cfg.dim
        # 1x1 convs only: a 3x3 conv's zero padding gives the border cells features of their own, and
        # the max over pixels learned to pick them instead of the object
        self.vis_proj = nn.Sequential(nn.Conv2d(self.image.out_channels + 2 * cfg.coords, d, 1), nn.ReLU(),
                                      nn.Conv2d(d, d, 1))
        self.lan_proj = nn.Linear(self.text.out_dim, d)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.prompt = BidirectionalPrompt(d) if cfg.prompt else None
        self.alpha = nn.Parameter(torch.tensor([0.1, 0.1]))
        if cfg.spatial_gate:
            self.gate_proj = nn.Linear(d, GATE_BASIS)
            with torch.no_grad():  # start half open (log sigmoid(1) = -0.31), where its gradient is not small
                self.gate_proj.weight.mul_(1 / cfg.gate_gain)
                self.gate_proj.bias.zero_()
                self.gate_proj.bias[0] = 1.0 / cfg.gate_gain
        self.seg = SegHead(d, features=cfg.seg_features)
        self.eval()

    def trainable(self, stage: int) -> list[nn.Parameter]:
        if stage == 2:
            return list(self.seg.parameters())
        return [p for n, p in self.named_parameters() if not n.startswith(("image.", "seg."))]

    def phrases(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (T, L) -> normalized phrase embeddings (T, dim)."""
        return l2n(self.lan_proj(self.text(tokens)), -1)

    def respond(self, feats: torch.Tensor, lan: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frozen pixel features (B, C, h, w) and phrase embeddings (B, T, dim) or (T, dim) ->
        (responses (B, T, h, w), prompted pixels (B, dim, h, w), prompted phrases (B, T, dim))."""
        b, _, h, w = feats.shape
        if lan.dim() == 2:
            lan = lan.unsqueeze(0).expand(b, -1, -1)
        if self.cfg.coords:
            feats = torch.cat([feats, coords(h, w, feats).expand(b, -1, -1, -1)], 1)
        vis = l2n(self.vis_proj(feats), 1)
        if self.prompt is not None:
            nv, nl = self.prompt(vis, lan)
            # each refinement is normalized as its input is, then added with its learned weight: the
            # instance-normalized refinement would otherwise outweigh the unit-norm pixel embedding
            # about tenfold, and every pixel would answer with the phrases' own vectors
            vis = l2n(vis + self.alpha[0] * l2n(nv, 1), 1)
            lan = l2n(lan + self.alpha[1] * l2n(nl, -1), -1)
        scores = self.logit_scale.exp() * torch.einsum("bdhw,btd->bthw", vis, lan)
        if self.cfg.spatial_gate:
            scores = scores + self.gate(lan, h, w)
        return scores, vis, lan

    def gate(self, lan: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The location gate (B, T, h, w) <= 0 of phrases (B, T, dim): log sigmoid of a low-frequency
        function of the cell's position whose coefficients the phrase gives. Added to the response, it
        multiplies the response's exponent by a number in (0, 1], so a phrase saying "on the left" can
        shut the right side without lighting up whatever lies on the left: the response still has to
        come from the content term. Without it (``spatial_gate`` off), location words can act only
        through the coordinate channels beside the pixel features, which mix position into the
        content term itself."""
        basis = gate_basis(h, w, lan)  # (P, h, w)
        return F.logsigmoid(self.cfg.gate_gain * torch.einsum("btp,phw->bthw", self.gate_proj(lan), basis))

    def maps(self, scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """What a user sees as the response (B, T, h, w) in [0, 1]: calibrated, or (ablation) the
        rectified response over its peak."""
        if self.cfg.calibration:
            return calibrate(scores, valid)
        r = F.relu(scores)
        return r / r.flatten(2).max(-1).values.clamp_min(1e-6)[:, :, None, None]

    def segment(self, vis, lan, scores, maps, index: torch.Tensor) -> torch.Tensor:
        """Mask logits (B, 1, h, w) of phrase ``index[b]`` of each photo b."""
        ar = torch.arange(len(vis))
        return self.seg(vis, lan[ar, index], (scores[ar, index] / self.logit_scale.exp())[:, None], maps[ar, index][:, None])

    def forward(self, image: torch.Tensor, tokens: torch.Tensor):
        """One photo (1, 3, S, S) and its phrases (T, L), the query first -> (responses (1, T, h, w),
        maps (1, T, h, w), query mask logits (1, 1, h, w), photo-phrase logits (1, T)). The exported graph."""
        return self.forward_features(self.image(image), tokens)

    def forward_features(self, feats: torch.Tensor, tokens: torch.Tensor):
        """:meth:`forward` from the image encoder's features (1, C, h, w)."""
        scores, vis, lan = self.respond(feats, self.phrases(tokens))
        maps = self.maps(scores)
        seg = self.segment(vis, lan, scores, maps, torch.zeros(len(feats), dtype=torch.long))
        return scores, maps, seg, class_logits(scores, self.cfg.calibration, pooling=self.cfg.pooling)
