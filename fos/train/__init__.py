"""Training: ``python -m fos.train teacher ...`` and ``python -m fos.train student ...``.

Seeded, resumable (``<out>/last.pt`` every ``--ckpt-every`` steps and at each epoch end; a rerun with
the same ``--out`` continues where it stopped), with a progress bar and ``<out>/log.jsonl``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from fos.checkpoint import atomic_torch_save, load_checkpoint, save_checkpoint
from fos.config import PreprocessCfg, TrainCfg
from fos.data import DatasetError, TrainRecord, load_train_roots
from fos.photometric import apply as apply_change, outside_box, random_change
from fos.preprocess import (
    foreground_colour, foreground_input, foreground_mask, geometry_batch, jitter_box, load_image, norm_to_pixel_box,
    prepare_background, teacher_input,
)
from fos.threads import set_threads
from fos.models.discofos import geometry_term
from fos.registry import build_model

log = logging.getLogger("fos.train")


# --------------------------------------------------------------------------- data
def pair_vector(prep, fg: Image.Image) -> np.ndarray:
    """The pair vector (geometry and colour statistics, :func:`fos.preprocess.geometry_batch`) of one
    cutout in one prepared background, as the scoring path computes it."""
    return geometry_batch(prep.box, [fg.size], prep.ring_colour, [foreground_colour(fg)])[0]


class PairDataset(Dataset):
    """One item per training background: its inputs with 1 positive and ``num_neg`` negatives.

    Positives: the background's own foreground and its ``similars``. Negatives: ``dissimilars`` and
    the other foregrounds of the same class; with ``neg_bg`` > 0 also the positive on ``neg_bg`` other
    backgrounds of the class, so that a cutout cannot score high whatever the background. Randomness
    is seeded by (seed, epoch, index), so a resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, records: list[TrainRecord], cfg: TrainCfg, pcfg: PreprocessCfg, student_inputs: bool):
        self.records, self.cfg, self.pcfg, self.student_inputs = records, cfg, pcfg, student_inputs
        self.by_name = {r.name: r for r in records}
        by_cat: dict[str, list[str]] = {}
        for r in records:
            by_cat.setdefault(r.category, []).append(r.name)
        self.neg_pool, self.bg_pool = [], []
        for r in records:
            excluded = {r.name, *r.similars}
            self.bg_pool.append([n for n in by_cat[r.category] if n not in excluded])
            pool = sorted({*r.dissimilars, *by_cat[r.category]} - excluded)
            self.neg_pool.append([n for n in pool if n in self.by_name])
        self.fg_size = {}
        if cfg.hard_neg > 0:  # sizes of all cutouts (image headers only)
            for r in records:
                with Image.open(r.fg_path) as im:
                    self.fg_size[r.name] = im.size
        self.epoch = 0

    def __len__(self):
        return len(self.records)

    def _augment(self, img: Image.Image, rng: random.Random) -> Image.Image:
        """Colour jitter or Gaussian blur (the paper's R-FOSD positive augmentation); blur alone with
        ``neg_relight``, where a lighting mismatch is what the negatives teach."""
        if rng.random() < 0.5 and not self.cfg.neg_relight:
            for enh in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                img = enh(img).enhance(rng.uniform(0.7, 1.3))
            return img
        return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))

    def __getitem__(self, i: int):
        rng = random.Random((self.cfg.seed * 1_000_003 + self.epoch) * 1_000_003 + i)
        r = self.records[i]
        shared = nrng = None
        if self.cfg.neg_relight:  # one change for the background and its positive, others for the relit negatives
            nrng = np.random.default_rng(rng.getrandbits(63))
            shared = random_change(nrng) if rng.random() < self.cfg.relight_prob else None
        prep = self._background(r, rng, shared)
        pos_name = rng.choice([r.name, *r.similars])
        pool = self.neg_pool[i]
        negs = [pool[j % len(pool)] for j in rng.sample(range(max(len(pool), self.cfg.num_neg)), self.cfg.num_neg)] if pool else []
        if self.cfg.hard_neg > 0 and pool:  # aspect-matched negatives: shape alone cannot tell them apart
            mismatch = geometry_batch(prep.box, [self.fg_size[n] for n in pool])[:, 2]
            close = [pool[j] for j in np.argsort(mismatch, kind="stable")[: 2 * self.cfg.num_neg]]
            negs = [rng.choice(close) if rng.random() < self.cfg.hard_neg else n for n in negs]
        if len(negs) < self.cfg.num_neg:
            raise DatasetError(f"training background {r.name!r} has no negatives (no dissimilars, no other foreground of {r.category!r})")
        fgs, comps, geoms = [], [], []
        for j, name in enumerate([pos_name, *negs]):
            fg = self._rescale(load_image(self.by_name[name].fg_path, what="foreground"), rng)
            if j == 0 and rng.random() < self.cfg.aug_prob:
                fg = self._augment(fg, rng)
            if j == 0 and self.cfg.neg_relight:
                plain, mask = fg, foreground_mask(fg)
                fg = apply_change(fg, shared, mask) if shared is not None else fg
            if j == 0:
                pos_img = fg
            comps.append(teacher_input(prep, fg, self.pcfg))
            geoms.append(torch.from_numpy(pair_vector(prep, fg)))
            if self.student_inputs:
                fgs.append(foreground_input(fg, self.pcfg))
        for _ in range(self.cfg.neg_relight):  # the positive under another change: only its fit tells it apart
            fg = apply_change(plain, random_change(nrng), mask)
            comps.append(teacher_input(prep, fg, self.pcfg))
            geoms.append(torch.from_numpy(pair_vector(prep, fg)))
            if self.student_inputs:
                fgs.append(foreground_input(fg, self.pcfg))
        labels = [1.0] + [0.0] * (len(negs) + self.cfg.neg_relight)
        others = self._other_backgrounds(i, rng) if self.cfg.neg_bg > 0 else []
        if not self.student_inputs:  # teacher: composites of the positive on other backgrounds, negatives
            for oprep in others:
                comps.append(teacher_input(oprep, pos_img, self.pcfg))
                geoms.append(torch.from_numpy(pair_vector(oprep, pos_img)))
                labels.append(0.0)
        item = {"comp": torch.stack(comps), "geom": torch.stack(geoms), "label": torch.tensor(labels)}
        if self.student_inputs:
            item.update(bg=prep.tensor, crop_box=prep.crop_box_net, fg=torch.stack(fgs))
            if others:  # student: the positive cutout on other backgrounds, negatives (see step_losses)
                item.update(nbg=torch.stack([o.tensor for o in others]),
                            ncrop_box=torch.stack([o.crop_box_net for o in others]),
                            ngeom=torch.stack([torch.from_numpy(pair_vector(o, pos_img)) for o in others]))
        return item

    def _rescale(self, img: Image.Image, rng: random.Random) -> Image.Image:
        """``fg_rescale``: the cutout at a random scale in [1/(1+r), 1+r] (aspect kept), so that its pixel
        size no longer tells which box it was cut from."""
        r = self.cfg.fg_rescale
        if r <= 0:
            return img
        f = math.exp(rng.uniform(-math.log1p(r), math.log1p(r)))
        return img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.BILINEAR)

    def _other_backgrounds(self, i: int, rng: random.Random) -> list:
        """``neg_bg`` other backgrounds of record ``i``'s class (not its similars), boxes jittered alike."""
        r, pool = self.records[i], self.bg_pool[i]
        if not pool:
            raise DatasetError(f"training background {r.name!r}: --neg-bg needs another background of class {r.category!r}")
        return [self._background(self.by_name[pool[j % len(pool)]], rng)
                for j in rng.sample(range(max(len(pool), self.cfg.neg_bg)), self.cfg.neg_bg)]

    def _background(self, r: TrainRecord, rng: random.Random, change=None):
        """``r``'s background with its box jittered (``box_jitter``) and, given a photometric ``change``,
        its pixels outside the box changed, prepared for both models."""
        bg = load_image(r.bg_path, what="background")
        w, h = bg.size
        box = jitter_box(norm_to_pixel_box(r.bbox, w, h), w, h, self.cfg.box_jitter, rng)
        if change is not None:
            bg = apply_change(bg, change, outside_box(bg.size, box))
        return prepare_background(bg, box, self.pcfg)


class ResumableSampler(Sampler):
    """A seeded permutation per epoch that can start part-way through. With ``world`` > 1 (several
    processes) each rank takes every ``world``-th index of the same permutation, the tail cut so that
    every rank gets as many; ``start`` counts samples of the whole permutation."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0
        self.rank, self.world = rank, world

    def order(self) -> list[int]:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch)).tolist()

    def _mine(self) -> list[int]:
        rest = self.order()[self.start:]
        rest = rest[: len(rest) // self.world * self.world]
        return rest[self.rank::self.world]

    def __iter__(self):
        return iter(self._mine())

    def __len__(self):
        return len(self._mine())


# --------------------------------------------------------------------------- losses
def triplet_loss(anchor: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, margin: float) -> torch.Tensor:
    """Cosine triplet loss with a background anchor. anchor (B, E), pos (B, E), neg (B, M, E)."""
    d_ap = 1 - F.cosine_similarity(anchor, pos, dim=-1)  # (B,)
    d_an = 1 - F.cosine_similarity(anchor.unsqueeze(1), neg, dim=-1)  # (B, M)
    return F.relu(d_ap.unsqueeze(1) - d_an + margin).mean()


def bce(logit: torch.Tensor, label: torch.Tensor, num_neg: int) -> torch.Tensor:
    """BCE with positives weighted by the number of negatives per positive (balanced classes)."""
    return F.binary_cross_entropy_with_logits(logit, label, pos_weight=torch.tensor(float(max(num_neg, 1))))


# --------------------------------------------------------------------------- loop
def _freeze_bn(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def _prepare(kind: str, cfg: TrainCfg):
    model = build_model(cfg.model or kind)
    if model.cfg.kind != kind:
        raise ValueError(f"--model {cfg.model} is a {model.cfg.kind}, not a {kind}")
    geom = model.geom_fc if kind == "teacher" else model.head.geom_fc
    if geom is not None:  # start from the geometry ranking: -prior * aspect mismatch - scale_prior * scale mismatch
        with torch.no_grad():
            geom.weight.copy_(torch.tensor([[0.0, 0.0, -cfg.geom_prior, 0.0, -cfg.scale_prior][: geom.in_features]]))
    if kind == "teacher":
        model.backbone.freeze_all_but(cfg.trainable_blocks)
        return model, None
    model.bg_encoder.freeze_all_but(cfg.trainable_blocks)
    model.fg_encoder.freeze_all_but(cfg.trainable_blocks)
    teacher = load_checkpoint(cfg.teacher)
    if teacher.cfg.kind != "teacher":
        raise ValueError(f"--teacher {cfg.teacher} is a {teacher.cfg.kind}, not a teacher")
    for p in teacher.parameters():
        p.requires_grad_(False)
    if teacher.dim != model.dim:
        raise ValueError(f"teacher feature width {teacher.dim} != student head width {model.dim}")
    return model, teacher


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


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; starts the process group when world > 1
    (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, local


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def fit(kind: str, cfg: TrainCfg, save: str, restart: bool = False, command: str = "") -> str:
    """Train ``kind`` ("teacher" or "student"); returns the path of the saved safetensors.

    Under ``torchrun --nproc_per_node N`` every process trains on its share of each batch with
    DistributedDataParallel; rank 0 alone writes checkpoints, logs and the final weights.
    """
    rank, world, local = _distributed()
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    set_threads(cfg.threads)
    pcfg = PreprocessCfg(student_view=cfg.student_view)
    records = load_train_roots(cfg.data, cfg.labels)
    if cfg.limit:
        records = records[: cfg.limit]
    model, teacher = _prepare(kind, cfg)
    model.to(device)
    if teacher is not None:
        teacher.to(device)
    backbone = {id(p) for n, p in model.named_parameters() if "encoder." in n or n.startswith("backbone.")}
    groups = [
        {"params": [p for p in model.parameters() if p.requires_grad and id(p) in backbone], "lr": cfg.lr},
        {"params": [p for p in model.parameters() if p.requires_grad and id(p) not in backbone],
         "lr": cfg.lr * cfg.head_lr_mult},
    ]
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    ds = PairDataset(records, cfg, pcfg, student_inputs=(kind == "student"))
    sampler = ResumableSampler(len(ds), cfg.seed, rank, world)
    per_step = cfg.batch_size * world  # samples of the permutation consumed by one step of all ranks
    steps_per_epoch = (len(ds) // world * world + per_step - 1) // per_step
    if steps_per_epoch < 1:
        raise DatasetError(f"{len(ds)} training backgrounds are too few for {world} processes")
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    os.makedirs(cfg.out, exist_ok=True)
    ckpt_path = os.path.join(cfg.out, "last.pt")
    step, epoch, elapsed = 0, 0, 0.0
    if os.path.exists(ckpt_path) and not restart:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state["cfg"] != asdict(cfg) or state["kind"] != kind or state.get("world", 1) != world:
            raise ValueError(f"{ckpt_path} was made with other settings; pass --restart to start over, or use another --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, elapsed = state["step"], state["elapsed"]
        log.info("resumed from %s at step %d/%d", ckpt_path, step, total)
    log_path = os.path.join(cfg.out, "log.jsonl")
    runner = TrainStep(kind, model, teacher, cfg)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(runner, device_ids=[local] if device.type == "cuda" else None)
    amp = cfg.amp and device.type == "cuda"

    def checkpoint():
        if rank == 0:
            atomic_torch_save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                               "step": step, "elapsed": elapsed, "cfg": asdict(cfg), "kind": kind, "world": world},
                              ckpt_path)
        if world > 1:
            torch.distributed.barrier()

    bar = tqdm(total=total, initial=step, desc=f"train {kind}", unit="step", dynamic_ncols=True, disable=rank != 0)
    while step < total:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        ds.epoch = sampler.epoch = epoch
        sampler.start = in_epoch * per_step
        loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                            pin_memory=device.type == "cuda")
        model.train()
        _freeze_bn(model)
        t0 = time.time()
        for batch in loader:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                parts = runner(_to(batch, device))
            opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            opt.step()
            sched.step()
            step += 1
            now = time.time()
            elapsed += now - t0
            t0 = now
            vals = torch.stack([v.detach().float() for v in parts.values()])
            if world > 1:  # the log shows the mean over the ranks
                torch.distributed.all_reduce(vals)
                vals /= world
            vals = {k: round(float(v), 5) for k, v in zip(parts, vals)}
            if rank == 0:
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": step, "epoch": epoch, "lr": sched.get_last_lr()[0], **vals}) + "\n")
            bar.set_postfix(vals)
            bar.update(1)
            if step % cfg.ckpt_every == 0 or step % steps_per_epoch == 0 or step >= total:
                checkpoint()
            if step >= total:
                break
    bar.close()
    model.eval()
    model.to("cpu")
    meta = {"model_name": cfg.model or kind, "train_cfg": asdict(cfg), "train_seconds": round(elapsed, 1),
            "steps": step, "command": command, "torch_threads": torch.get_num_threads(), "world_size": world}
    if world > 1:  # every rank's weights, by sha256: DDP keeps them identical
        from fos.checkpoint import weights_sha256

        shas = [None] * world
        torch.distributed.all_gather_object(shas, weights_sha256(model))
        meta["rank_weights_sha256"] = shas
    if rank == 0:
        save_checkpoint(model, save, pcfg, **meta)
        log.info("saved %s (and %s) after %d steps, %.1f min of training; checkpoints and log.jsonl in %s",
                 save, os.path.splitext(save)[0] + ".json", step, elapsed / 60, cfg.out)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return save
