"""The losses of DiscoFOS training: triplet (embeddings), L1 distillation (the head's feature against the
teacher's composite feature), BCE, and the optional listwise terms; :func:`step_losses` puts them together
for one batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fos.config import TrainCfg
from fos.models.discofos import geometry_term


def triplet_loss(anchor: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, margin: float) -> torch.Tensor:
    """Cosine triplet loss with a background anchor. anchor (B, E), pos (B, E), neg (B, M, E)."""
    d_ap = 1 - F.cosine_similarity(anchor, pos, dim=-1)  # (B,)
    d_an = 1 - F.cosine_similarity(anchor.unsqueeze(1), neg, dim=-1)  # (B, M)
    return F.relu(d_ap.unsqueeze(1) - d_an + margin).mean()


def bce(logit: torch.Tensor, label: torch.Tensor, num_neg: int) -> torch.Tensor:
    """BCE with positives weighted by the number of negatives per positive (balanced classes)."""
    return F.binary_cross_entropy_with_logits(logit, label, pos_weight=torch.tensor(float(max(num_neg, 1))))




def step_losses(kind, model, teacher, batch, cfg: TrainCfg) -> dict[str, torch.Tensor]:
    comp, geom, label = batch["comp"], batch["geom"], batch["label"]
    b, k = label.shape
    flat = lambda t: t.reshape(b * k, *t.shape[2:])  # noqa: E731
    if kind == "teacher":
        _, logit = model(flat(comp), flat(geom))
        loss = bce(logit, flat(label), cfg.num_neg + cfg.neg_bg + cfg.neg_relight)
        return {"loss": loss, "bce": loss}
    roi, bg_emb = model.encode_background(batch["bg"], batch["crop_box"])  # (B, D, a, a), (B, E)
    fmap, fg_emb = model.encode_foreground(flat(batch["fg"]))  # (B*K, D, a, a), (B*K, E)
    # the head's halves once: the background half per background (then repeated), the cutout half per cutout
    bg_half, fg_half = model.head.bg_part(roi).repeat_interleave(k, 0), model.head.fg_part(fmap)
    feat, logit = model.head.finish(bg_half, fg_half, flat(geom))
    with torch.no_grad():
        target, t_logit = teacher(flat(comp), flat(geom))
    fg_emb = fg_emb.view(b, k, -1)
    own_logit, label = logit, flat(label)
    if "nbg" in batch:  # the positive cutout scored on other backgrounds of its class: negatives too
        nb = batch["nbg"].shape[1]
        nroi, _ = model.encode_background(batch["nbg"].flatten(0, 1), batch["ncrop_box"].flatten(0, 1))
        pos_fmap = fmap.view(b, k, *fmap.shape[1:])[:, 0].repeat_interleave(nb, 0)
        _, nlogit = model.fuse(nroi, pos_fmap, batch["ngeom"].flatten(0, 1))
        logit, label = torch.cat([logit, nlogit]), torch.cat([label, torch.zeros_like(nlogit)])
    parts = {
        "triplet": triplet_loss(bg_emb, fg_emb[:, 0], fg_emb[:, 1:], cfg.triplet_margin),
        "distill": F.l1_loss(feat, target),
        "bce": bce(logit, label, cfg.num_neg + cfg.neg_bg + cfg.neg_relight),
    }
    parts["loss"] = cfg.w_triplet * parts["triplet"] + cfg.w_distill * parts["distill"] + cfg.w_bce * parts["bce"]
    with torch.no_grad():  # share of head units above zero on this batch's pairs (0: a dead head, see ModelCfg.head_act)
        parts["live"] = (model.head.pre_activation(bg_half, fg_half) > 0).float().mean()
    s_logit = own_logit.view(b, k)  # each background's candidates, own cutout first
    if cfg.w_rank:
        parts["rank"] = F.cross_entropy(s_logit, torch.zeros(b, dtype=torch.long))
        parts["loss"] = parts["loss"] + cfg.w_rank * parts["rank"]
    if cfg.w_kd:
        t_logit = t_logit.view(b, k)
        if cfg.kd_on == "appearance":  # what the networks see in the pixels, without the geometry cue
            g = geom.view(b * k, -1)
            if model.head.geom_fc is not None:
                s_logit = s_logit - geometry_term(model.head.geom_fc, g).view(b, k)
            if teacher.geom_fc is not None:
                t_logit = t_logit - geometry_term(teacher.geom_fc, g).view(b, k).detach()
        parts["kd"] = F.kl_div(F.log_softmax(s_logit, 1), F.log_softmax(t_logit, 1), log_target=True,
                               reduction="batchmean")
        parts["loss"] = parts["loss"] + cfg.w_kd * parts["kd"]
    return parts


class TrainStep(torch.nn.Module):
    """What DistributedDataParallel wraps: the model being trained (and, for the student, the frozen
    teacher, whose parameters need no gradients); ``forward(batch)`` returns the losses."""

    def __init__(self, kind: str, model, teacher, cfg: TrainCfg):
        super().__init__()
        self.kind, self.model, self.teacher, self.cfg = kind, model, teacher, cfg

    def forward(self, batch):
        return step_losses(self.kind, self.model, self.teacher, batch, self.cfg)
