"""``python -m fos.localize.train --method cam|dawsol [--data ROOT ...]``: train the localizer from
image-level labels only (the photos of each root's train split and the classes of their instances).

Stages 0-13 of the ImageNet MobileNetV2 are frozen, so their output is computed once per photo (and
its mirror image) and cached; the later stages and the classifier train with Adam on the multi-label
soft-margin loss L_c, plus, for ``dawsol``, beta * L_d + lambda * L_u from epoch ``--start-epoch`` on.
After training, the CAM thresholds are chosen on the train split (boxes and masks are used there and
only there): ``box_threshold`` maximizes BoxAcc at IoU 0.5 with the single box a user gets, and
``mask_threshold`` maximizes the mask IoU inside the true box. A checkpoint is written at every epoch
end to ``--out``; rerunning the same command resumes from it.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fos import cli
from fos.checkpoint import resume, save_resumable
from fos.config import to_dict
from fos.localize.config import WsolCfg, WsolTrainCfg
from fos.data import DatasetError
from fos.data.photos import Photo, load_photo_roots, vocabulary
from fos.localize.infer import DEFAULT_WEIGHTS, save_localizer
from fos.localize.masks import cam_mask
from fos.localize.metrics import CAM_THRESHOLDS, best_iou, cam_box, mask_iou
from fos.localize.model import TargetSampleAssigner, WsolNet, dal_loss, normalize_cams, upsample_cam
from fos.preprocess import load_image, photo_input

log = logging.getLogger("fos.localize.train")


def label_matrix(photos: list[Photo], classes: list[str]) -> torch.Tensor:
    y = torch.zeros(len(photos), len(classes))
    for i, ph in enumerate(photos):
        for c in ph.labels:
            if c in classes:
                y[i, classes.index(c)] = 1
    return y


@torch.no_grad()
def frozen_features(model: WsolNet, photos: list[Photo], batch: int = 16, progress: bool = True) -> torch.Tensor:
    """Stage 0-13 features of every photo and of its mirror image: (2N, 96, S/16, S/16), mirrors second.
    Batch norm uses its ImageNet running statistics, as at inference (and never updates them)."""
    was_training = model.training
    model.eval()
    out = []
    for s in tqdm(range(0, len(photos), batch), desc="frozen features", unit="batch", disable=not progress):
        x = torch.stack([photo_input(load_image(ph.path, "RGB", what="photo"), model.cfg.input_size)
                         for ph in photos[s:s + batch]])
        out.append((model.frozen(x), model.frozen(x.flip(3))))
    model.train(was_training)
    return torch.cat([o[0] for o in out] + [o[1] for o in out])


def train_step(model: WsolNet, tsa: TargetSampleAssigner | None, h: torch.Tensor, y: torch.Tensor,
               cfg: WsolTrainCfg, use_dal: bool) -> dict[str, torch.Tensor]:
    pix = model.tail(h)
    logits, _ = model.head(pix)
    losses = {"cls": F.multilabel_soft_margin_loss(logits, y)}
    if use_dal and tsa is not None:
        ld, lu = dal_loss(tsa, pix, y)
        losses["mmd"], losses["universum"] = ld, lu
        losses["total"] = losses["cls"] + cfg.w_mmd * ld + cfg.w_universum * lu
    else:
        losses["total"] = losses["cls"]
    return losses


@torch.no_grad()
def photo_cams(model: WsolNet, photos: list[Photo], progress: bool = False):
    """Per photo: (probabilities (K,), normalized CAMs (K, h, w))."""
    out = []
    for ph in tqdm(photos, desc="CAMs", unit="photo", disable=not progress):
        logits, cams = model(photo_input(load_image(ph.path, "RGB", what="photo"), model.cfg.input_size)[None])
        out.append((torch.sigmoid(logits[0]).numpy(), normalize_cams(cams[0])))
    return out


def choose_thresholds(model: WsolNet, photos: list[Photo]) -> dict:
    """Box and mask thresholds on (train) photos with their true classes, boxes and masks."""
    classes = model.cfg.classes
    box_hits = np.zeros(len(CAM_THRESHOLDS))
    mask_ious = np.zeros(len(CAM_THRESHOLDS))
    n = 0
    for ph, (_, cams) in zip(photos, photo_cams(model, photos, progress=True)):
        for c in ph.labels:
            if c not in classes:
                continue
            cam = upsample_cam(cams[classes.index(c)], ph.width, ph.height)
            gt = ph.gt_mask(c)
            for i, t in enumerate(CAM_THRESHOLDS):
                b = cam_box(cam, t)
                box_hits[i] += b is not None and best_iou([b], ph.boxes[c]) >= 0.5
                mask_ious[i] += np.mean([mask_iou(cam_mask(cam, gb, t), gt, gb) for gb in ph.boxes[c]])
            n += 1
    bi, mi = int(np.argmax(box_hits)), int(np.argmax(mask_ious))
    return {"box_threshold": float(CAM_THRESHOLDS[bi]), "train_box_acc_0.5": float(box_hits[bi] / max(n, 1)),
            "mask_threshold": float(CAM_THRESHOLDS[mi]), "train_cam_mask_iou": float(mask_ious[mi] / max(n, 1)),
            "samples": n}


def fit(cfg: WsolTrainCfg, save: str, restart: bool = False, command: str = "") -> str:
    torch.manual_seed(cfg.seed)
    photos = load_photo_roots(cfg.data, "train")
    if cfg.limit:
        photos = photos[: cfg.limit]
    classes = vocabulary(photos, cfg.min_photos)
    photos = [ph for ph in photos if any(c in classes for c in ph.labels)]
    if not photos or not classes:
        raise DatasetError(f"no training photos with a class of at least {cfg.min_photos} photos in {cfg.data}")
    log.info("%d training photos, %d classes (%d with one label, which DA-WSOL's assigner uses)", len(photos),
             len(classes), sum(len([c for c in ph.labels if c in classes]) == 1 for ph in photos))
    model = WsolNet(WsolCfg(classes=classes, method=cfg.method, input_size=cfg.input_size))
    tsa = TargetSampleAssigner(len(classes), model.classifier.in_features, cfg.samples, cfg.seed) \
        if cfg.method == "dawsol" else None
    params = [{"params": [p for p in model.features.parameters() if p.requires_grad], "lr": cfg.lr},
              {"params": model.classifier.parameters(), "lr": cfg.lr * cfg.head_lr_mult}]
    opt = torch.optim.Adam(params, weight_decay=cfg.weight_decay)
    os.makedirs(cfg.out, exist_ok=True)
    ckpt = os.path.join(cfg.out, "last.pt")
    key, stateful = {"cfg": to_dict(cfg), "classes": classes}, {"model": model, "opt": opt}
    state = resume(ckpt, key, stateful, restart)
    start_epoch = state.get("epoch", 0)
    if state:
        if tsa is not None:
            tsa.load_state(state["tsa"])
        log.info("resuming %s after epoch %d", ckpt, start_epoch)
    y = label_matrix(photos, classes)
    feats = frozen_features(model, photos)
    y2 = torch.cat([y, y])
    steps_per_epoch = (len(feats) + cfg.batch_size - 1) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    step = start_epoch * steps_per_epoch
    bar = tqdm(total=total, initial=min(step, total), desc=f"train {cfg.method}", unit="step", dynamic_ncols=True)
    history = []
    t0 = time.time()
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        if step >= total:
            break
        order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        sums: dict[str, float] = {}
        nb = 0
        for s in range(0, len(order), cfg.batch_size):
            if step >= total:
                break
            idx = order[s:s + cfg.batch_size]
            losses = train_step(model, tsa, feats[idx], y2[idx], cfg, use_dal=epoch >= cfg.start_epoch)
            opt.zero_grad()
            losses["total"].backward()
            opt.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            nb += 1
            step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v / nb:.4f}" for k, v in sums.items()})
        history.append({"epoch": epoch + 1, **{k: v / max(nb, 1) for k, v in sums.items()}})
        save_resumable(ckpt, key, stateful, epoch=epoch + 1, tsa=tsa.state() if tsa else {})
    bar.close()
    model.eval()
    thresholds = choose_thresholds(model, photos)
    log.info("thresholds chosen on the train split: %s", thresholds)
    model.cfg = WsolCfg(**{**asdict(model.cfg), "box_threshold": thresholds["box_threshold"],
                           "mask_threshold": thresholds["mask_threshold"]})
    save_localizer(model, save, train_cfg=to_dict(cfg), thresholds=thresholds, history=history,
                   train_photos=len(photos), train_seconds=round(time.time() - t0, 1), command=command)
    log.info("wrote %s and %s", save, os.path.splitext(save)[0] + ".json")
    return save


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fos.localize.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_training_args(p, WsolTrainCfg(), ("method",), "runs/localize-<method>", DEFAULT_WEIGHTS)
    p.add_argument("--method", choices=["cam", "dawsol"], default="dawsol")
    return p


def main(argv=None) -> int:
    return cli.run_training("fos.localize.train", build_parser(), argv, WsolTrainCfg, lambda a: fit,
                            out=lambda a: f"runs/localize-{a.method}", save=lambda a: DEFAULT_WEIGHTS)


if __name__ == "__main__":
    sys.exit(main())
