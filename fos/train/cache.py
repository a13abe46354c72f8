"""``python -m fos.train.cache --data ROOT [--data ROOT ...] --cache DIR``: the frozen trunk's features of
every training view, computed once, for :mod:`fos.train.cached` to train the tops of a teacher and a
student on for many epochs.

Fine-tuning a whole MobileNetV2 on 2 cores and a few thousand instances killed its last stage (2% of
units alive). Here the ImageNet trunk (``Backbone(relu_out=False)``: up to the last inverted residual,
linear, 320 x 7 x 7 at 224) never moves, so its features are a pure function of the input pixels and
are cached. Per training record (background + its own cutout), with ``V`` seeded views, each a
photometric change (:func:`fos.photometric.random_change`, with ``relight_prob``) and a loose box
(``box_jitter``):

* ``bg[v]``: the background under change v (outside the box), box v, prepared for the student
  (:func:`fos.preprocess.prepare_background`), its trunk map, crop box and ring colour statistics;
* ``fg[v]``: the own cutout under change v (object pixels), its trunk map and colour statistics;
  for view v, ``fg[v']`` (v' != v) is the **relit** negative: same cutout, lighting that does not fit;
* ``low``: the own cutout under change 0 at the **wrong resolution** (downscaled by ``low_scale``);
* ``idf``: one same-category cutout of another photo under change 0 (the **identity** negative with
  the lighting held equal), with its index;
* ``obg``: the index of another same-category record whose view-0 background is the **other
  background** negative of the own cutout;
* ``tc``: the teacher's five view-0 composites (``rule``: the one the app shows and reranks), own,
  relit, low, identity and other background, their trunk maps and pair vectors: the fixed pairs on
  which the teacher's distillation target is computed once it is trained.

Everything goes through :mod:`fos.preprocess` and :mod:`fos.composite`, the paths the app serves.
The cache is written in chunks (``chunk_NNNNN.safetensors``, atomically), so an interrupted build
resumes at the first missing chunk; ``manifest.json`` holds the recipe and the trunk's hash, and a
cache made with other trunk weights or another recipe is refused with what to do.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fos import cli
from fos.checkpoint import atomic_write_bytes, atomic_write_json
from fos.composite import teacher_input
from fos.config import Cfg, PreprocessCfg
from fos.data import DatasetError, TrainRecord, load_train_roots, photo_of
from fos.errors import InputError
from fos.models.backbones import Backbone
from fos.photometric import apply as apply_change, outside_box, random_change
from fos.preprocess import (
    GEOMETRY_DIM, foreground_colour, foreground_input, foreground_mask, geometry_batch, jitter_box, load_image,
    norm_to_pixel_box, prepare_background,
)

log = logging.getLogger("fos.train.cache")
CACHE_VERSION = 1
TEACHER_PAIRS = ("own", "relit", "low", "identity", "other_bg")  # the order of ``tc``


@dataclass
class CacheCfg(Cfg):
    """The recipe of a feature cache: what views are made of each training record."""

    data: list[str] = field(default_factory=lambda: ["../shared/data/msrc-fos"])
    backbone: str = "mobilenet_v2"  # the frozen trunk: mobilenet_v2 or efficientnet_lite0 (ImageNet)
    views: int = 2  # seeded views per record (photometric change + loose box)
    relight_prob: float = 0.8  # chance that a view's change is not the identity
    box_jitter: float = 0.5  # loose boxes, as the evaluation's
    low_scale: tuple[float, float] = (0.25, 0.5)  # the wrong-resolution negative: downscaled by this factor
    rule: str = "fit"  # how the teacher's composites are made (fos.composite: what the app shows and reranks)
    preprocess: PreprocessCfg = field(default_factory=PreprocessCfg)
    seed: int = 0
    chunk: int = 64  # records per chunk file
    limit: int = 0  # only the first N records (0 = all); for tests

    def __post_init__(self):
        self.data = [self.data] if isinstance(self.data, str) else list(self.data)
        self.low_scale = tuple(float(v) for v in self.low_scale)
        self.preprocess = PreprocessCfg.from_dict(self.preprocess)
        if self.views < 2:
            raise ValueError(f"--views must be at least 2 (view 1 gives view 0 its relit negative), got {self.views}")
        lo, hi = self.low_scale
        if not 0 < lo <= hi < 1:
            raise ValueError(f"--low-scale must be two factors 0 < lo <= hi < 1, got {self.low_scale}")


def trunk_sha256(trunk: torch.nn.Module) -> str:
    """A hash of the trunk's tensors (names, shapes and bytes): which weights made a cache."""
    h = hashlib.sha256()
    for k, v in sorted(trunk.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def recipe(cfg: CacheCfg, records: list[TrainRecord], sha: str) -> dict:
    """What must match for a cache to be reused: the recipe (less chunking), the trunk and the records."""
    c = json.loads(json.dumps(asdict(cfg)))  # as the manifest stores it (tuples become lists)
    c.pop("chunk")
    names = hashlib.sha256("\n".join(r.name for r in records).encode()).hexdigest()
    return {"version": CACHE_VERSION, "cfg": c, "trunk_sha256": sha, "records": len(records), "records_sha256": names}


def check_manifest(path: str, want: dict) -> None:
    """Refuse a cache whose manifest differs from ``want``, naming what differs."""
    try:
        with open(path) as f:
            have = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{path} could not be read ({e}); delete the cache folder and build it again") from None
    diff = [k for k in want if have.get(k) != want[k]]
    if "cfg" in diff:
        diff = [f"cfg.{k}" for k in want["cfg"] if have.get("cfg", {}).get(k) != want["cfg"][k]] + \
               [d for d in diff if d != "cfg"]
    if diff:
        what = "other trunk weights" if "trunk_sha256" in diff else "another recipe or other records"
        raise InputError(f"the cache in {os.path.dirname(path)} was made with {what} (differs in {', '.join(diff)}); "
                         "pass another --cache folder, or delete this one to rebuild it")


def view_params(cfg: CacheCfg, r: TrainRecord, v: int, size: tuple[int, int]):
    """(photometric change or None, loose pixel box) of view ``v`` of record ``r``: seeded by the record's
    name, so any record's view can be made again in any process."""
    rng = np.random.default_rng([cfg.seed, v, int(hashlib.md5(r.name.encode()).hexdigest()[:8], 16)])
    change = random_change(rng) if rng.random() < cfg.relight_prob else None
    w, h = size
    box = jitter_box(norm_to_pixel_box(r.bbox, w, h), w, h, cfg.box_jitter, random.Random(f"{cfg.seed}:{r.name}:{v}"))
    return change, box


def background_view(cfg: CacheCfg, r: TrainRecord, v: int):
    bg = load_image(r.bg_path, what="background")
    change, box = view_params(cfg, r, v, bg.size)
    if change is not None:
        bg = apply_change(bg, change, outside_box(bg.size, box))
    return prepare_background(bg, box, cfg.preprocess), change


def relit(fg: Image.Image, change) -> Image.Image:
    return fg if change is None else apply_change(fg, change, foreground_mask(fg))


def partners(records: list[TrainRecord], seed: int) -> tuple[list[int], list[int]]:
    """For each record, a same-category record of another photo for the identity negative and one for the
    other-background negative (-1 where the category has no other photo); seeded."""
    by_cat: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_cat.setdefault(r.category, []).append(i)
    ident, other = [], []
    for i, r in enumerate(records):
        pool = [j for j in by_cat[r.category] if photo_of(records[j].name) != photo_of(r.name)]
        rng = random.Random(f"{seed}:partners:{r.name}")
        ident.append(rng.choice(pool) if pool else -1)
        other.append(rng.choice(pool) if pool else -1)
    return ident, other


class Trunk:
    """The frozen trunk in eval mode, in batches."""

    def __init__(self, name: str, pretrained: bool = True):
        self.net = Backbone(name, pretrained, relu_out=False).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.sha256 = trunk_sha256(self.net)

    @torch.no_grad()
    def __call__(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.net(torch.stack(x[s:s + 32])) for s in range(0, len(x), 32)]).half()


def build_chunk(cfg: CacheCfg, trunk: Trunk, records: list[TrainRecord], idx: list[int], ident: list[int],
                other: list[int]) -> dict[str, torch.Tensor]:
    """The cache tensors of records ``idx`` (see the module docstring)."""
    pcfg, V = cfg.preprocess, cfg.views
    n = len(idx)
    bg_x, fg_x, low_x, id_x, tc_x = [], [], [], [], []
    out = {k: [] for k in ("crop", "box", "ring", "fg_size", "fg_colour", "low_size", "low_colour", "id_size",
                           "id_colour", "tgeom", "valid")}
    blank = torch.zeros(3, pcfg.image_size, pcfg.image_size)
    for i in idx:
        r = records[i]
        try:
            fg = load_image(r.fg_path, "RGB", what="foreground")
            if not foreground_mask(fg).any():
                raise InputError("no object pixels")
            views = [background_view(cfg, r, v) for v in range(V)]
            fgs = [relit(fg, ch) for _, ch in views]
            rng = random.Random(f"{cfg.seed}:low:{r.name}")
            f = rng.uniform(*cfg.low_scale)
            low = fgs[0].resize((max(2, round(fg.width * f)), max(2, round(fg.height * f))), Image.BOX)
            j, k = ident[i], other[i]
            idf = relit(load_image(records[j].fg_path, "RGB", what="foreground"), views[0][1]) if j >= 0 else fgs[0]
            obg = background_view(cfg, records[k], 0)[0] if k >= 0 else views[0][0]
            ok = True
        except (InputError, OSError) as e:
            log.warning("skipped %s: %s", r.name, e)
            ok = False
        if not ok:
            bg_x += [blank] * V
            fg_x += [blank] * V
            low_x.append(blank)
            id_x.append(blank)
            tc_x += [blank] * len(TEACHER_PAIRS)
            out["crop"].append(np.zeros((V, 4), np.float32))
            out["box"].append(np.zeros((V, 4), np.int64))
            for key, shape in (("ring", (V, 6)), ("fg_colour", (V, 6)), ("low_colour", (6,)), ("id_colour", (6,)),
                               ("tgeom", (len(TEACHER_PAIRS), GEOMETRY_DIM))):
                out[key].append(np.zeros(shape, np.float32))
            for key in ("fg_size", "low_size", "id_size"):
                out[key].append(np.ones(2, np.float32))
            out["valid"].append(False)
            continue
        p0 = views[0][0]
        bg_x += [p.tensor for p, _ in views]
        fg_x += [foreground_input(im, pcfg) for im in fgs]
        low_x.append(foreground_input(low, pcfg))
        id_x.append(foreground_input(idf, pcfg))
        pairs = [(p0, fgs[0]), (p0, fgs[1]), (p0, low), (p0, idf), (obg, fgs[0])]
        tc_x += [teacher_input(p, im, pcfg, cfg.rule) for p, im in pairs]
        out["tgeom"].append(np.concatenate([geometry_batch(p.box, [im.size], p.ring_colour, [foreground_colour(im)])
                                            for p, im in pairs]))
        out["crop"].append(np.stack([p.crop_box_net.numpy() for p, _ in views]))
        out["box"].append(np.array([p.box for p, _ in views], np.int64))
        out["ring"].append(np.stack([p.ring_colour for p, _ in views]))
        out["fg_size"].append(np.array(fg.size, np.float32))
        out["fg_colour"].append(np.stack([foreground_colour(im) for im in fgs]))
        out["low_size"].append(np.array(low.size, np.float32))
        out["low_colour"].append(foreground_colour(low))
        out["id_size"].append(np.array(idf.size, np.float32))
        out["id_colour"].append(foreground_colour(idf))
        out["valid"].append(True)
    t = {k: torch.from_numpy(np.stack(v)) for k, v in out.items()}
    t["bg"] = trunk(bg_x).view(n, V, *trunk_shape(trunk, pcfg))
    t["fg"] = trunk(fg_x).view(n, V, *trunk_shape(trunk, pcfg))
    t["low"], t["idf"] = trunk(low_x), trunk(id_x)
    t["tc"] = trunk(tc_x).view(n, len(TEACHER_PAIRS), *trunk_shape(trunk, pcfg))
    t["index"] = torch.tensor(idx, dtype=torch.int64)
    t["ident"] = torch.tensor([ident[i] for i in idx], dtype=torch.int64)
    t["other"] = torch.tensor([other[i] for i in idx], dtype=torch.int64)
    return t


def trunk_shape(trunk: Trunk, pcfg: PreprocessCfg) -> tuple[int, int, int]:
    a = pcfg.image_size // 32
    return trunk.net.out_channels, a, a


def chunk_path(cache: str, c: int) -> str:
    return os.path.join(cache, f"chunk_{c:05d}.safetensors")


def build(cfg: CacheCfg, cache: str, shard: tuple[int, int] = (0, 1), progress: bool = True) -> dict:
    """Build (or resume) the cache in ``cache``; this process does the chunks ``c`` with
    ``c % shard[1] == shard[0]``. Returns the manifest."""
    from safetensors.torch import save

    records = load_train_roots(cfg.data)
    if cfg.limit:
        records = records[: cfg.limit]
    if len(records) < 2:
        raise DatasetError(f"{len(records)} training records in {cfg.data}: too few to train on")
    trunk = Trunk(cfg.backbone)
    want = recipe(cfg, records, trunk.sha256)
    os.makedirs(cache, exist_ok=True)
    mpath = os.path.join(cache, "manifest.json")
    if os.path.exists(mpath):
        check_manifest(mpath, want)
        with open(mpath) as f:
            cfg.chunk = json.load(f)["chunk"]  # the chunks already written decide the chunking
    else:
        atomic_write_json(mpath, {**want, "chunk": cfg.chunk, "names": [r.name for r in records], "categories": [r.category for r in records]})
    ident, other = partners(records, cfg.seed)
    n_chunks = (len(records) + cfg.chunk - 1) // cfg.chunk
    mine = [c for c in range(n_chunks) if c % shard[1] == shard[0]]
    todo = [c for c in mine if not os.path.exists(chunk_path(cache, c))]
    if len(todo) < len(mine):
        print(f"resuming: {len(mine) - len(todo)} of {len(mine)} chunks already in {cache}")
    t0 = time.time()
    for c in tqdm(todo, desc="cache trunk features", unit="chunk", disable=not progress):
        idx = list(range(c * cfg.chunk, min(len(records), (c + 1) * cfg.chunk)))
        atomic_write_bytes(chunk_path(cache, c), save(build_chunk(cfg, trunk, records, idx, ident, other)))
    print(f"cache: {len(todo)} chunks written in {time.time() - t0:.0f} s to {os.path.abspath(cache)} "
          f"({n_chunks} chunks, {len(records)} records)")
    return want


def load(cache: str, cfg: CacheCfg | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(manifest, tensors of every chunk concatenated); refuses an incomplete cache, and one whose recipe
    differs from ``cfg`` when given."""
    from safetensors.torch import load_file

    mpath = os.path.join(cache, "manifest.json")
    if not os.path.isfile(mpath):
        raise InputError(f"no feature cache in {cache} (no manifest.json); build it with python -m fos.train.cache")
    with open(mpath) as f:
        man = json.load(f)
    if man.get("version") != CACHE_VERSION:
        raise InputError(f"the cache in {cache} has format {man.get('version')}, this fos reads {CACHE_VERSION}; "
                         "delete it and build it again")
    if cfg is not None:
        records = load_train_roots(cfg.data)[: cfg.limit or None]
        check_manifest(mpath, recipe(cfg, records, Trunk(cfg.backbone).sha256))
    chunk = man["chunk"]
    n_chunks = (man["records"] + chunk - 1) // chunk
    missing = [c for c in range(n_chunks) if not os.path.exists(chunk_path(cache, c))]
    if missing:
        raise InputError(f"the cache in {cache} is incomplete ({len(missing)} of {n_chunks} chunks missing); "
                         "run the same python -m fos.train.cache command again to finish it")
    parts = [load_file(chunk_path(cache, c)) for c in range(n_chunks)]
    return man, {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def unit_spread(maps: torch.Tensor) -> dict:
    """How alive the trunk's last stage is over cutouts: per channel, the spread (std) of its spatial mean
    over the cutouts ``maps`` (N, C, a, a); the share of channels whose spread is over 1e-3."""
    m = maps.float().mean((2, 3))
    s = m.std(0)
    return {"channels": int(m.shape[1]), "cutouts": int(m.shape[0]), "mean_spread": round(float(s.mean()), 4),
            "alive_share": round(float((s > 1e-3).float().mean()), 4)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fos.train.cache", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_args(p, CacheCfg(), ("data", "low_scale", "preprocess"))
    p.add_argument("--data", action="append", default=None, help="FOSD root; repeat for several (their train splits)")
    p.add_argument("--low-scale", type=float, nargs=2, default=CacheCfg().low_scale, metavar=("LO", "HI"))
    p.add_argument("--cache", required=True, help="the cache folder (made, or resumed)")
    p.add_argument("--shard", default="0/1", help="K/N: build only the chunks c with c %% N == K (run N at once)")
    cli.add_threads(p)

    def run(a) -> int:
        try:
            k, n = (int(v) for v in a.shard.split("/"))
            if not 0 <= k < n:
                raise ValueError
        except ValueError:
            raise InputError(f"--shard takes K/N with 0 <= K < N, got {a.shard!r}") from None
        vals = {f: getattr(a, f) for f in asdict(CacheCfg()) if f not in ("data", "preprocess")}
        try:
            cfg = CacheCfg(**{**vals, "data": a.data or CacheCfg().data})
        except ValueError as e:
            raise InputError(str(e)) from None
        build(cfg, a.cache, (k, n))
        return 0

    return cli.run(run, p, argv)


if __name__ == "__main__":
    sys.exit(main())
