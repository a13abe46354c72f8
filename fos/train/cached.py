"""``python -m fos.train.cached --cache DIR --out DIR``: a teacher and a student trained on a frozen trunk's
cached features (:mod:`fos.train.cache`), the top only, for many epochs.

Both models keep the ImageNet trunk as it is (it is what the cache was made with; the weights written
hold it, so every path serves them as any checkpoint). What trains:

* the **teacher**'s projection, classifier, geometry and photometric terms, on the five fixed view-0
  composites of each record (own cutout, relit, wrong resolution, another identity, the own cutout on
  another background): a softmax over the four on the own background (own first), BCE on all five,
  and a margin between the own pair and the own cutout on the other background;
* then, with the teacher fixed, its composite feature on those pairs is computed once: the
  **distillation target**;
* the **student**'s projections, embeddings and head (product interaction, geometry and photometric
  terms), on groups drawn anew each epoch from the cache: per record, a random view of its background
  against the own cutout in that view, the relit cutout (another view's lighting), the wrong
  resolution, the fixed identity and ``n_ident`` more same-category cutouts of other photos, and the
  own cutout on another background. Losses: the same softmax, BCE and margin, the DiscoFOS triplet on
  the embeddings, and L1 to the teacher's feature on the pairs that have one (view 0).

Geometry, lighting and appearance train together on loose boxes, so no term is fitted to a protocol
alone. A tenth of the photos (by a hash of the photo name, :func:`is_dev`) is held out: its group
top-1 is printed each epoch, the only number the recipe was watched on; no test split is read.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import zlib
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fos import cli
from fos.checkpoint import save_checkpoint
from fos.config import Cfg, ModelCfg, PreprocessCfg
from fos.data import photo_of
from fos.errors import InputError
from fos.preprocess import geometry_batch
from fos.registry import build_from_cfg
from fos.threads import set_threads
from fos.train import cache as fcache

log = logging.getLogger("fos.train.cached")


@dataclass
class CachedCfg(Cfg):
    """The recipe of ``python -m fos.train.cached`` (fixed before any test number was seen)."""

    cache: str = "runs/cache/mnv2"
    out: str = "runs/cached"
    teacher_epochs: int = 60
    student_epochs: int = 30
    batch_size: int = 64  # records per step
    lr: float = 1e-3
    weight_decay: float = 1e-4
    n_ident: int = 2  # same-category cutouts of other photos per group, besides the fixed identity negative
    margin: float = 1.0  # own pair above the own cutout on another background, in logits
    triplet_margin: float = 0.1  # the embeddings' triplet (DiscoFOS)
    w_rank: float = 1.0
    w_bce: float = 1.0
    w_margin: float = 0.5
    w_triplet: float = 1.0
    w_distill: float = 1.0
    geom_prior: float = 4.0  # the geometry terms start from the aspect + resolution ranking (as fos.train)
    scale_prior: float = 2.0
    proj_dim: int = 128
    photometric_hidden: int = 32
    dev_share: float = 0.1  # photos held out for the dev number
    seed: int = 0
    threads: int = 0


def is_dev(name: str, share: float, seed: int = 0) -> bool:
    """Whether the photo of instance ``name`` is held out (a hash of the photo name, not of the order)."""
    return zlib.crc32(f"{seed}:dev:{photo_of(name)}".encode()) % 10000 < share * 10000


def model_cfgs(cfg: CachedCfg, backbone: str) -> tuple[ModelCfg, ModelCfg]:
    base = ModelCfg(backbone=backbone, pretrained=True, backbone_relu_out=False, proj_dim=cfg.proj_dim,
                    geometry=True, geometry_dims=5, linear_features=True, head_act="leaky", interaction=True,
                    photometric=True, photometric_hidden=cfg.photometric_hidden)
    return replace(base, kind="teacher", embed_dim=None), replace(base, kind="student", embed_dim=128)


def init_geometry(fc: torch.nn.Linear, cfg: CachedCfg) -> None:
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[0.0, 0.0, -cfg.geom_prior, 0.0, -cfg.scale_prior][: fc.in_features]]))


def top_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Everything but the backbones (which stay as the cache saw them)."""
    return [p for n, p in model.named_parameters() if not n.split(".")[0].endswith(("backbone", "encoder"))]


def group_losses(logits: torch.Tensor, n_same: int, cfg: CachedCfg) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits`` (B, n_same + 1): the own pair first, then ``n_same - 1`` negatives on the own
    background, then the own cutout on another background. Returns (loss, top-1 hits)."""
    same = logits[:, :n_same]
    target = torch.zeros(len(logits), dtype=torch.long)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1
    loss = cfg.w_rank * F.cross_entropy(same, target) + cfg.w_bce * F.binary_cross_entropy_with_logits(logits, labels) \
        + cfg.w_margin * F.relu(cfg.margin - (logits[:, 0] - logits[:, -1])).mean()
    return loss, (same.argmax(1) == 0).float()


# --------------------------------------------------------------------------- teacher
def train_teacher(teacher, t: dict, train_idx: np.ndarray, dev_idx: np.ndarray, cfg: CachedCfg, history: list) -> None:
    opt = torch.optim.AdamW(top_parameters(teacher), lr=cfg.lr, weight_decay=cfg.weight_decay)
    k = len(fcache.TEACHER_PAIRS)

    def logits(idx):
        x = t["tc"][idx].float().flatten(0, 1)
        g = t["tgeom"][idx].flatten(0, 1)
        return teacher.from_trunk(x, g)[1].view(len(idx), k)

    bar = tqdm(range(cfg.teacher_epochs), desc="train teacher top", unit="epoch")
    for ep in bar:
        teacher.train()
        rng = np.random.default_rng([cfg.seed, 1, ep])
        order = rng.permutation(train_idx)
        losses, hits = [], []
        for s in range(0, len(order), cfg.batch_size):
            idx = torch.from_numpy(order[s:s + cfg.batch_size])
            loss, hit = group_losses(logits(idx), k - 1, cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            hits.append(hit)
        teacher.eval()
        with torch.no_grad():
            dev = group_losses(logits(torch.from_numpy(dev_idx)), k - 1, cfg)[1].mean().item() if len(dev_idx) else float("nan")
        history.append({"model": "teacher", "epoch": ep, "loss": round(float(np.mean(losses)), 4),
                        "train_top1": round(float(torch.cat(hits).mean()), 4), "dev_top1": round(dev, 4)})
        bar.set_postfix(loss=history[-1]["loss"], train=history[-1]["train_top1"], dev=history[-1]["dev_top1"])


# --------------------------------------------------------------------------- student
class Groups:
    """The student's training groups, drawn from the cache (see the module docstring)."""

    def __init__(self, t: dict, categories: list[str], names: list[str], cfg: CachedCfg):
        self.t, self.cfg = t, cfg
        self.V = t["bg"].shape[1]
        valid = t["valid"].numpy()
        self.pool: list[np.ndarray] = []
        by_cat: dict[str, list[int]] = {}
        for i, c in enumerate(categories):
            if valid[i]:
                by_cat.setdefault(c, []).append(i)
        photos = [photo_of(n) for n in names]
        for i, c in enumerate(categories):
            self.pool.append(np.array([j for j in by_cat.get(c, []) if photos[j] != photos[i]], dtype=np.int64))

    def draw(self, idx: np.ndarray, rng: np.random.Generator, view0: bool = False) -> dict:
        """Tensors of the groups of records ``idx``: cands (B, G, C, a, a) with the own cutout first and the
        own cutout on another background last, their pair vectors, the backgrounds, and the teacher's
        target where one exists."""
        t, V, cfg = self.t, self.V, self.cfg
        B = len(idx)
        views = np.zeros(B, np.int64) if view0 else rng.integers(0, V, B)
        fg, sizes, colours = [], [], []
        for b, i in enumerate(idx):
            v = views[b]
            vr = 1 if v == 0 else (v + 1 + rng.integers(0, V - 1)) % V  # another view's lighting (view 0's: the teacher's pair)
            pool = self.pool[i]
            ids = rng.choice(pool, cfg.n_ident, replace=len(pool) < cfg.n_ident) if len(pool) else np.full(cfg.n_ident, i)
            iw = rng.integers(0, V, cfg.n_ident)
            fg.append(torch.stack([t["fg"][i, v], t["fg"][i, vr], t["low"][i], t["idf"][i],
                                   *[t["fg"][j, w] for j, w in zip(ids, iw)], t["fg"][i, v]]))
            sz = [t["fg_size"][i], t["fg_size"][i], t["low_size"][i], t["id_size"][i], *[t["fg_size"][j] for j in ids],
                  t["fg_size"][i]]
            col = [t["fg_colour"][i, v], t["fg_colour"][i, vr], t["low_colour"][i], t["id_colour"][i],
                   *[t["fg_colour"][j, w] for j, w in zip(ids, iw)], t["fg_colour"][i, v]]
            sizes.append(torch.stack(sz).numpy())
            colours.append(torch.stack(col).numpy())
        other = t["other"][idx].numpy()
        other = np.where(other >= 0, other, idx)
        geom = []
        for b, i in enumerate(idx):
            v = views[b]
            g = geometry_batch(tuple(t["box"][i, v].tolist()), sizes[b][:-1], t["ring"][i, v].numpy(), colours[b][:-1])
            k = other[b]
            go = geometry_batch(tuple(t["box"][k, 0].tolist()), sizes[b][-1:], t["ring"][k, 0].numpy(), colours[b][-1:])
            geom.append(np.concatenate([g, go]))
        ii = torch.from_numpy(idx)
        return {"bg": t["bg"][ii, torch.from_numpy(views)].float(), "crop": t["crop"][ii, torch.from_numpy(views)],
                "obg": t["bg"][torch.from_numpy(other), 0].float(), "ocrop": t["crop"][torch.from_numpy(other), 0],
                "fg": torch.stack(fg).float(), "geom": torch.from_numpy(np.stack(geom)),
                "view0": torch.from_numpy(views == 0), "index": ii}


def student_logits(student, g: dict):
    """(logits (B, G), features (B, G, D, a, a), bg emb (B, E), fg emb (B, G, E)) of drawn groups."""
    B, G = g["fg"].shape[:2]
    roi, bemb = student.background_from_trunk(g["bg"], g["crop"])
    oroi, _ = student.background_from_trunk(g["obg"], g["ocrop"])
    fmap, femb = student.foreground_from_trunk(g["fg"].flatten(0, 1))
    fmap = fmap.view(B, G, *fmap.shape[1:])
    rois = torch.cat([roi[:, None].expand(-1, G - 1, -1, -1, -1), oroi[:, None]], 1).flatten(0, 1)
    feat, lg = student.fuse(rois, fmap.flatten(0, 1), g["geom"].flatten(0, 1))
    return lg.view(B, G), feat.view(B, G, *feat.shape[1:]), bemb, femb.view(B, G, -1)


def train_student(student, groups: Groups, target: torch.Tensor, train_idx, dev_idx, cfg: CachedCfg, history) -> None:
    """``target`` (N, 5, D, a, a): the teacher's feature of each record's five view-0 pairs
    (:data:`fos.train.cache.TEACHER_PAIRS`), which are the student's group slots 0, 1, 2, 3 and last."""
    opt = torch.optim.AdamW(top_parameters(student), lr=cfg.lr, weight_decay=cfg.weight_decay)
    slots = [0, 1, 2, 3, -1]
    n_same = 4 + cfg.n_ident
    bar = tqdm(range(cfg.student_epochs), desc="train student top", unit="epoch")
    for ep in bar:
        student.train()
        rng = np.random.default_rng([cfg.seed, 2, ep])
        order = rng.permutation(train_idx)
        losses, hits = [], []
        for s in range(0, len(order), cfg.batch_size):
            g = groups.draw(order[s:s + cfg.batch_size], rng)
            lg, feat, bemb, femb = student_logits(student, g)
            loss, hit = group_losses(lg, n_same, cfg)
            pos = (bemb * femb[:, 0]).sum(-1, keepdim=True)
            negs = (bemb[:, None] * femb[:, 3:n_same]).sum(-1)  # other identities: the embedding ranks identities
            loss = loss + cfg.w_triplet * F.relu(cfg.triplet_margin - pos + negs).mean()
            m = g["view0"]
            if m.any() and cfg.w_distill > 0:
                loss = loss + cfg.w_distill * F.l1_loss(feat[m][:, slots], target[g["index"][m]])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            hits.append(hit)
        student.eval()
        with torch.no_grad():
            dev = float("nan")
            if len(dev_idx):
                gd = groups.draw(dev_idx, np.random.default_rng([cfg.seed, 3]), view0=True)
                dev = group_losses(student_logits(student, gd)[0], n_same, cfg)[1].mean().item()
        history.append({"model": "student", "epoch": ep, "loss": round(float(np.mean(losses)), 4),
                        "train_top1": round(float(torch.cat(hits).mean()), 4), "dev_top1": round(dev, 4)})
        bar.set_postfix(loss=history[-1]["loss"], train=history[-1]["train_top1"], dev=history[-1]["dev_top1"])


def fit(cfg: CachedCfg, command: str = "") -> tuple[str, str]:
    """Train both tops on ``cfg.cache``; writes ``teacher.safetensors`` and ``student.safetensors`` (JSON
    beside each) in ``cfg.out``, a weights folder. Returns their paths."""
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    man, t = fcache.load(cfg.cache)
    ccfg = fcache.CacheCfg.from_dict({**man["cfg"], "chunk": man["chunk"]})
    pcfg = PreprocessCfg.from_dict(ccfg.preprocess) if isinstance(ccfg.preprocess, dict) else ccfg.preprocess
    tcfg, scfg = model_cfgs(cfg, ccfg.backbone)
    teacher, student = build_from_cfg(tcfg), build_from_cfg(scfg)
    for net in (teacher.backbone, student.bg_encoder, student.fg_encoder):
        if fcache.trunk_sha256(net) != man["trunk_sha256"]:
            raise InputError(f"the cache in {cfg.cache} was made with other trunk weights than the installed "
                             f"ImageNet {ccfg.backbone}; build the cache again (python -m fos.train.cache)")
        net.eval()
    for m in (teacher.geom_fc, student.head.geom_fc):
        init_geometry(m, cfg)
    names, cats = man["names"], man["categories"]
    valid = t["valid"].numpy()
    dev = np.array([is_dev(n, cfg.dev_share, cfg.seed) for n in names])
    train_idx = np.flatnonzero(valid & ~dev)
    dev_idx = np.flatnonzero(valid & dev)
    print(f"cache {cfg.cache}: {len(names)} records ({int((~valid).sum())} unusable), {len(train_idx)} train, "
          f"{len(dev_idx)} dev (held-out photos)")
    spread = fcache.unit_spread(t["fg"][torch.from_numpy(np.flatnonzero(valid)), 0])
    print(f"trunk last stage over {spread['cutouts']} cutouts: {spread['alive_share']:.0%} of {spread['channels']} "
          f"channels alive, mean spread {spread['mean_spread']}")
    history: list = []
    train_teacher(teacher, t, train_idx, dev_idx, cfg, history)
    with torch.no_grad():
        target = torch.cat([teacher.from_trunk(t["tc"][s:s + 256].float().flatten(0, 1),
                                               t["tgeom"][s:s + 256].flatten(0, 1))[0]
                            for s in range(0, len(names), 256)]).view(len(names), len(fcache.TEACHER_PAIRS), cfg.proj_dim, 7, 7)
    groups = Groups(t, cats, names, cfg)
    train_student(student, groups, target, train_idx, dev_idx, cfg, history)
    os.makedirs(cfg.out, exist_ok=True)
    meta = dict(train_cfg=asdict(cfg), cache_recipe={k: man[k] for k in ("cfg", "trunk_sha256", "records", "records_sha256")},
                trunk_unit_spread=spread, history=history, train_records=int(len(train_idx)),
                train_seconds=round(time.time() - t0, 1), command=command)
    paths = []
    for model, name in ((teacher, "teacher"), (student, "student")):
        model.model_name = name
        path = os.path.join(cfg.out, f"{name}.safetensors")
        save_checkpoint(model, path, pcfg, **meta)
        paths.append(path)
    last = {h["model"]: h for h in history}
    print(f"wrote {', '.join(os.path.abspath(p) for p in paths)} (and their JSON) in {time.time() - t0:.0f} s; "
          f"dev group top-1: teacher {last['teacher']['dev_top1']:.3f}, student {last['student']['dev_top1']:.3f} "
          f"(chance {1 / 4:.3f} and {1 / (4 + cfg.n_ident):.3f})")
    return paths[0], paths[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fos.train.cached", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_args(p, CachedCfg(), ("threads",))
    cli.add_threads(p)

    def run(a) -> int:
        cfg = CachedCfg(**{f: getattr(a, f) for f in asdict(CachedCfg())})
        fit(cfg, "python -m fos.train.cached " + " ".join(argv if argv is not None else sys.argv[1:]))
        return 0

    return cli.run(run, p, argv)


if __name__ == "__main__":
    sys.exit(main())
