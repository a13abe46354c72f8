"""``python -m fos.inpaint.train [--data ROOT ...] [--variant spade|concat] [--no-prior]``: train the SPL
inpainting generator on the train-split photos of FOSD roots that have ``photos/`` (msrc-fos, and the
output of ``python -m fos.data from-coco``). Test photos are never read.

Each step draws ``--batch-size`` random square crops (0.4-1.0 of the photo's shorter side, mirrored at
random) at ``cfg.size``, and one hole per crop, of the kinds and shares of ``--holes``: a random box or the
instance mask of *another* training photo anywhere, or a hole a user makes (an object's box, its mask
dilated, a box on background) in the crop serving takes around it; inside an erased object the true
background is unknown and those pixels weigh 0. Adam with a cosine learning-rate decay. Loss: L1 on the generator's raw
output (hole pixels weigh ``--w-hole``,
the rest 1) + ``--w-prior`` * L1 between the semantic learner's priors and the frozen ImageNet
MobileNetV2's features of the complete crop (``--no-prior``: that term is off, the paper's ablation).
The batches depend only on ``--seed`` and the step, so a resumed run sees the batches it would have
seen. A checkpoint is written to ``--out`` every ``--checkpoint-every`` steps; rerunning resumes.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fos import cli
from fos.checkpoint import resume, save_resumable
from fos.config import to_dict
from fos.inpaint.config import InpaintCfg, InpaintTrainCfg
from fos.data import DatasetError
from fos.inpaint.infer import DEFAULT_WEIGHTS, save_inpainter
from fos.inpaint.masks import (RANDOM_KINDS, background_box_hole, box_hole, crop_to_content, crop_window, hole_bbox,
                               load_masks, object_box_hole, object_hole, object_mask_hole, union)
from fos.inpaint.model import PriorNet, SPLNet
from fos.data.photos import load_photo_roots
from fos.preprocess import RESAMPLE, load_image

log = logging.getLogger("fos.inpaint.train")


class HoleBatches:
    """Training batches from photos held in memory; ``batch(step)`` is a pure function of (seed, step).

    ``objects_per_photo``: each photo's instance masks (bool, photo-sized), the source of the holes users
    make (``object-box``, ``object-mask``, ``background-box``: the crop is the one serving takes around
    the hole, :func:`crop_window`) and of the object shapes that ``object`` holes place elsewhere. Random
    kinds (``box``, ``object``) take a random square crop (0.4-1.0 of the shorter side). Every sample has
    ``known``: the pixels whose true value is background (inside an erased object it is unknown)."""

    def __init__(self, photo_paths: list[str], objects_per_photo: list[list[np.ndarray]], size: int,
                 mix: dict[str, float], seed: int, init: str = "gray"):
        self.init = init
        self.photos = [np.asarray(load_image(p, "RGB", what="photo")) for p in photo_paths]
        if not self.photos:
            raise DatasetError("no training photos")
        self.objects = [[o for o in os_ if o.any()] for os_ in objects_per_photo]
        self.unions = [union(os_, a.shape[:2]) for os_, a in zip(self.objects, self.photos)]
        self.shapes = [(i, crop_to_content(o)) for i, os_ in enumerate(self.objects) for o in os_]
        self.with_objects = [i for i, os_ in enumerate(self.objects) if os_]
        kinds = [k for k in mix if k in RANDOM_KINDS or self.with_objects]  # user kinds need instances
        if not kinds:
            raise DatasetError("the hole mix needs instance masks, and these photos have none")
        total = sum(mix[k] for k in kinds)
        self.kinds, self.weights = kinds, [mix[k] / total for k in kinds]
        self.size, self.seed = size, seed

    def resize(self, a: np.ndarray, hole: np.ndarray, known: np.ndarray, window) -> tuple:
        x1, y1, x2, y2 = window
        s = self.size
        crop = np.asarray(Image.fromarray(a[y1:y2, x1:x2]).resize((s, s), RESAMPLE))
        # the hole only grows and the known pixels only shrink in the resize
        h = np.asarray(Image.fromarray(hole[y1:y2, x1:x2].astype(np.uint8) * 255).resize((s, s), Image.BILINEAR)) > 0
        k = np.asarray(Image.fromarray(known[y1:y2, x1:x2].astype(np.uint8) * 255).resize((s, s), Image.BILINEAR)) == 255
        return crop, h, k

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        kind = self.kinds[int(rng.choice(len(self.kinds), p=self.weights))]
        if kind in RANDOM_KINDS:
            i = int(rng.integers(len(self.photos)))
            a = self.photos[i]
            h, w = a.shape[:2]
            side = max(8, int(round(rng.uniform(0.4, 1.0) * min(h, w))))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = np.asarray(Image.fromarray(a[y:y + side, x:x + side]).resize((self.size, self.size), RESAMPLE))
            others = [s for j, s in self.shapes if j != i]
            if kind == "box" or not others:
                hole = box_hole(self.size, self.size, rng)
            else:
                hole = object_hole(self.size, self.size, others[int(rng.integers(len(others)))], rng)
            known = np.ones_like(hole)
        else:
            i = self.with_objects[int(rng.integers(len(self.with_objects)))]
            a, objs, objects = self.photos[i], self.objects[i], self.unions[i]
            obj = objs[int(rng.integers(len(objs)))]
            if kind == "object-box":
                hole, known = object_box_hole(obj, objects)
            elif kind == "object-mask":
                hole, known = object_mask_hole(obj, objects, int(rng.integers(3, 10)))
            else:
                hole, known = background_box_hole(objects, rng)
            window = crop_window(hole_bbox(hole), a.shape[1], a.shape[0])
            crop, hole, known = self.resize(a, hole, known, window)
        if rng.random() < 0.5:
            crop, hole, known = crop[:, ::-1], hole[:, ::-1], known[:, ::-1]
        return crop, hole, known

    def batch(self, step: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image (n, 3, S, S) in [-1, 1], hole (n, 1, S, S), known (n, 1, S, S)), float32."""
        rng = np.random.default_rng([self.seed, step])
        crops, holes, known = zip(*(self.sample(rng) for _ in range(n)))
        img = torch.from_numpy(np.stack(crops).astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2).contiguous()
        mask = torch.from_numpy(np.stack(holes).astype(np.float32))[:, None]
        return img, mask, torch.from_numpy(np.stack(known).astype(np.float32))[:, None]

    def telea(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The batch with each hole pre-filled by OpenCV's Telea (radius scaled to the crop size)."""
        from fos.inpaint.infer import cv2_fill

        a = ((img.permute(0, 2, 3, 1).numpy() + 1) * 127.5 + 0.5).clip(0, 255).astype(np.uint8)
        r = max(1, round(5 * self.size / 128))
        out = np.stack([cv2_fill(x, m[0].numpy() > 0, "telea", r) for x, m in zip(a, mask)])
        return torch.from_numpy(out.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2).contiguous()


def losses(model: SPLNet, prior_net: PriorNet | None, img: torch.Tensor, mask: torch.Tensor,
           cfg: InpaintTrainCfg, start: torch.Tensor | None = None,
           known: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``start``: the network's input image when it is not ``img`` (the Telea-filled batch); ``known``:
    where the true value is background (1; default everywhere): an erased object's pixels weigh 0."""
    _, raw, priors = model(img if start is None else start, mask)
    known = torch.ones_like(mask) if known is None else known
    w = (1 + (cfg.w_hole - 1) * mask) * known
    hole = mask * known
    out = {"l1": (w * (raw - img).abs()).sum() / (w.sum() * 3).clamp(min=1),
           "l1_hole": ((raw - img).abs() * hole).sum() / (hole.sum() * 3).clamp(min=1)}
    total = out["l1"]
    if prior_net is not None:
        out["prior"] = (priors - prior_net(img)).abs().mean()
        total = total + cfg.w_prior * out["prior"]
    out["total"] = total
    return out


def fit(cfg: InpaintTrainCfg, save: str, restart: bool = False, command: str = "", pretrained: bool = True) -> str:
    torch.manual_seed(cfg.seed)
    photos = load_photo_roots(cfg.data, "train")
    if cfg.limit:
        photos = photos[: cfg.limit]
    if not photos:
        raise DatasetError(f"no training photos in {cfg.data}")
    objects = [load_masks([p for ps in ph.masks.values() for p in ps], (ph.height, ph.width))
               for ph in tqdm(photos, desc="instance masks", unit="photo", leave=False)]
    data = HoleBatches([ph.path for ph in photos], objects, cfg.size, cfg.hole_mix(), cfg.seed, cfg.init)
    log.info("%d training photos from %s, %d instances; holes %s", len(photos), cfg.data, len(data.shapes),
             ", ".join(f"{k} {w:.2f}" for k, w in zip(data.kinds, data.weights)))
    model = SPLNet(InpaintCfg(size=cfg.size, variant=cfg.variant, init=cfg.init))
    prior_net = PriorNet(model.cfg, pretrained=pretrained) if cfg.prior else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    os.makedirs(cfg.out, exist_ok=True)
    ckpt = os.path.join(cfg.out, "last.pt")
    key, stateful = {"cfg": to_dict(cfg)}, {"model": model, "opt": opt}
    state = resume(ckpt, key, stateful, restart)
    step, history, elapsed = state.get("step", 0), state.get("history", []), state.get("elapsed", 0.0)
    if state:
        log.info("resuming %s at step %d", ckpt, step)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train inpaint ({cfg.variant}{'' if cfg.prior else ', no prior'})",
               unit="step", dynamic_ncols=True)
    sums: dict[str, float] = {}
    n, t0 = 0, time.time()
    model.train()
    while step < cfg.steps:
        img, mask, known = data.batch(step, cfg.batch_size)
        for g in opt.param_groups:  # cosine decay, a function of the step (so a resumed run continues it)
            g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        ls = losses(model, prior_net, img, mask, cfg, data.telea(img, mask) if cfg.init == "telea" else None, known)
        opt.zero_grad()
        ls["total"].backward()
        opt.step()
        step += 1
        n += 1
        for k, v in ls.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        bar.update(1)
        bar.set_postfix({k: f"{v / n:.4f}" for k, v in sums.items() if k != "total"})
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            history.append({"step": step, **{k: round(v / n, 5) for k, v in sums.items()}})
            sums, n = {}, 0
            save_resumable(ckpt, key, stateful, step=step, history=history, elapsed=elapsed + time.time() - t0)
    bar.close()
    elapsed += time.time() - t0
    model.eval()
    save_inpainter(model, save, train_cfg=to_dict(cfg), history=history, train_photos=len(photos),
                   train_seconds=round(elapsed, 1), command=command)
    log.info("wrote %s and %s (%.1f min of training)", save, os.path.splitext(save)[0] + ".json", elapsed / 60)
    return save


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fos.inpaint.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_training_args(p, InpaintTrainCfg(), ("variant", "prior", "init"), "runs/inpaint-<variant>", DEFAULT_WEIGHTS)
    p.add_argument("--variant", choices=["spade", "concat"], default="spade",
                   help="spade: priors modulate the decoder (SPL); concat: the paper's ablation")
    p.add_argument("--init", choices=["gray", "telea"], default="gray",
                   help="gray: the paper's masked input; telea: the hole pre-filled by Telea, which the "
                        "generator corrects")
    p.add_argument("--no-prior", action="store_true", help="no semantic supervision (the paper's ablation)")
    return p


def main(argv=None) -> int:
    def tag(a) -> str:
        return a.variant + ("-noprior" if a.no_prior else "") + ("-telea" if a.init == "telea" else "")

    return cli.run_training("fos.inpaint.train", build_parser(), argv, InpaintTrainCfg, lambda a: fit,
                            out=lambda a: f"runs/inpaint-{tag(a)}", save=lambda a: DEFAULT_WEIGHTS,
                            skip=("variant", "prior", "init"), variant=lambda a: a.variant,
                            prior=lambda a: not a.no_prior, init=lambda a: a.init)


if __name__ == "__main__":
    sys.exit(main())
