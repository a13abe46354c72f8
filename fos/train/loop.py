"""The training loop: seeded, resumable, with a progress bar, ``<out>/log.jsonl`` and, under torchrun,
DistributedDataParallel."""
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
from torch.utils.data import DataLoader
from tqdm import tqdm

from fos.checkpoint import resume, save_checkpoint, save_resumable
from fos.config import TrainCfg
from fos.data import DatasetError, load_train_roots
from fos.registry import build_model, load_checkpoint
from fos.threads import set_threads
from fos.train.data import PairDataset, ResumableSampler
from fos.train.losses import TrainStep

log = logging.getLogger("fos.train")


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
    pcfg = cfg.preprocess
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
    key = {"cfg": asdict(cfg), "kind": kind, "world": world}
    stateful = {"model": model, "opt": opt, "sched": sched}
    state = resume(ckpt_path, key, stateful, restart)
    step, elapsed = state.get("step", 0), state.get("elapsed", 0.0)
    if state:
        log.info("resumed from %s at step %d/%d", ckpt_path, step, total)
    log_path = os.path.join(cfg.out, "log.jsonl")
    runner = TrainStep(kind, model, teacher, cfg)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(runner, device_ids=[local] if device.type == "cuda" else None)
    amp = cfg.amp and device.type == "cuda"

    def checkpoint():
        if rank == 0:
            save_resumable(ckpt_path, key, stateful, step=step, elapsed=elapsed)
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
