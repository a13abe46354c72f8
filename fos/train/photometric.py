"""``python -m fos.train.photometric --student FILE --data ROOT [--data ROOT ...] --save FILE``: give a trained
student a photometric term (:class:`fos.models.discofos.PhotometricTerm`) and train that term alone.

The student's encoders and head stay frozen: its background and cutout halves are computed once per
training record (the "frozen encoders, features cached once" route, which lets 2 CPU cores see many
more pairs), and only the small MLP on colour statistics learns. Each step, per training background:

* a **lighting group**: the background and its own cutout share one random photometric change
  (:func:`fos.photometric.random_change`, with ``relight_prob``; else none), against the same cutout
  under other changes, or moved to another training photo's cast and then changed alike: candidates
  that differ only in how their lighting fits the photo. Softmax cross-entropy to the own cutout over
  the term's logits (the frozen student's logit is the same for all of them and cancels);
* an **identity group**: the own cutout against other cutouts of its category from other photos, all
  unchanged; the logit is the frozen student's plus the term, so the term learns on the scale of the
  student's score, adding to it rather than replacing it.

Colour statistics go through :func:`fos.preprocess.colour_stats` on 8-bit pixels, as at inference.
Seeded; the weights are written as a student checkpoint (safetensors + JSON, ``photometric`` on) that
every path (export, library, search, app, evaluation) serves as it serves any student.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fos import cli
from fos.checkpoint import save_checkpoint
from fos.registry import load_checkpoint
from fos.config import Cfg, ModelCfg
from fos.data import DatasetError, load_train_roots
from fos.photometric import cast_gains, photo_cast, random_change
from fos.preprocess import (
    COLOUR_DIM, GEOMETRY_DIM, SHAPE_DIM, InputError, colour_stats, foreground_mask, geometry_batch, jitter_box,
    load_image, norm_to_pixel_box, prepare_background, ring_pixels,
)
from fos.registry import build_from_cfg
from fos.threads import set_threads

log = logging.getLogger("fos.train.photometric")
MAX_PIXELS = 3000  # pixels kept per region for the statistics (a fixed stride through them)


@dataclass
class PhotometricCfg(Cfg):
    """Hyper-parameters of ``python -m fos.train.photometric`` (fixed before any test number was seen)."""

    student: str = "weights/student.safetensors"
    data: list[str] = field(default_factory=lambda: ["../shared/data/msrc-fos"])
    epochs: int = 30
    batch_size: int = 64  # backgrounds per step
    lr: float = 3e-3
    weight_decay: float = 1e-4
    group: int = 5  # candidates per group (the own cutout and group - 1 others)
    relight_prob: float = 0.8  # chance that a background and its own cutout share a random change
    box_jitter: float = 0.5  # the loose boxes of training and of the evaluation
    hidden: int = 32
    seed: int = 0
    threads: int = 0
    limit: int = 0  # use only the first N training records (0 = all); for smoke tests


def _thin(px: np.ndarray) -> np.ndarray:
    return px[:: max(1, len(px) // MAX_PIXELS)] if len(px) else px


def _stats(px01: np.ndarray) -> np.ndarray:
    """Statistics of float pixels in 0..1, quantised to 8 bits first as an image would be."""
    return colour_stats(np.round(np.clip(px01, 0, 1) * 255).astype(np.uint8))


def cache_records(student, records, cfg: PhotometricCfg) -> dict:
    """Per training record: its context-ring and object pixels (thinned), the student's two head halves,
    the box, the cutout size and the photo's cast; one encoder pass over everything."""
    pcfg = student.preprocess_cfg
    out = {"ring": [], "obj": [], "bg_part": [], "fg_part": [], "box": [], "size": [], "cast": []}
    keep = []
    batch_bg, batch_fg, batch_box = [], [], []

    def flush():
        with torch.no_grad():
            roi, _ = student.encode_background(torch.stack(batch_bg), torch.stack(batch_box))
            fmap, _ = student.encode_foreground(torch.stack(batch_fg))
            out["bg_part"].append(student.head.bg_part(roi).half())
            out["fg_part"].append(student.head.fg_part(fmap).half())
        batch_bg.clear(), batch_fg.clear(), batch_box.clear()

    from fos.preprocess import foreground_input

    skipped = 0
    for r in tqdm(records, desc="cache features", unit="record"):
        try:
            bg = load_image(r.bg_path, what="background")
            fg = load_image(r.fg_path, what="foreground")
        except (InputError, OSError) as e:  # counted and skipped, as the converter does
            log.warning("skipped %s: %s", r.name, e)
            skipped += 1
            continue
        w, h = bg.size
        box = jitter_box(norm_to_pixel_box(r.bbox, w, h), w, h, cfg.box_jitter, random.Random(f"{cfg.seed}:{r.name}"))
        prep = prepare_background(bg, box, pcfg)
        mask = foreground_mask(fg)
        if not mask.any():
            skipped += 1
            continue
        out["ring"].append(_thin(ring_pixels(prep.filled, prep.box, prep.crop_box)).astype(np.float32) / 255)
        out["obj"].append(_thin(np.asarray(fg.convert("RGB"))[mask]).astype(np.float32) / 255)
        out["box"].append(prep.box)
        out["size"].append(fg.size)
        out["cast"].append(photo_cast(bg, norm_to_pixel_box(r.bbox, w, h)))
        keep.append(r)
        batch_bg.append(prep.tensor)
        batch_box.append(prep.crop_box_net)
        batch_fg.append(foreground_input(fg, pcfg))
        if len(batch_bg) == 32:
            flush()
    if batch_bg:
        flush()
    if skipped:
        print(f"{skipped} training records skipped (unreadable photo or cutout, or a cutout without object pixels)")
    out["bg_part"], out["fg_part"] = torch.cat(out["bg_part"]), torch.cat(out["fg_part"])
    out["records"] = keep
    return out


def pair_tensor(ring: np.ndarray, fgs: list[np.ndarray]) -> torch.Tensor:
    """(N, GEOMETRY_DIM) with the colour columns filled (the geometry columns are not read by the term)."""
    g = np.zeros((len(fgs), GEOMETRY_DIM), np.float32)
    g[:, SHAPE_DIM:SHAPE_DIM + COLOUR_DIM] = ring
    g[:, SHAPE_DIM + COLOUR_DIM:] = np.stack(fgs)
    return torch.from_numpy(g)


def lighting_group(c: dict, i: int, rng: np.random.Generator, cfg: PhotometricCfg) -> torch.Tensor:
    """The pair vectors of one lighting group, the own cutout first."""
    ring, obj = c["ring"][i], c["obj"][i]
    shared = random_change(rng) if rng.random() < cfg.relight_prob else (lambda x: x)
    cands = [shared(obj[None])[0]]
    n = len(c["records"])
    while len(cands) < cfg.group:
        if rng.random() < 0.5:
            cands.append(random_change(rng)(obj[None])[0])
        else:  # moved to another training photo's cast, then changed as the background was
            j = int(rng.integers(n))
            g = cast_gains(c["cast"][i], c["cast"][j]).astype(np.float32)
            cands.append(shared((obj * g)[None])[0])
    return pair_tensor(_stats(shared(ring[None])[0]), [_stats(x) for x in cands])


def fit(cfg: PhotometricCfg, save: str, command: str = "") -> str:
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    base = load_checkpoint(cfg.student, model_name="student")
    if base.cfg.kind != "student":
        raise ValueError(f"--student {cfg.student} holds a {base.cfg.kind}, not a student")
    records = load_train_roots(cfg.data)
    if cfg.limit:
        records = records[: cfg.limit]
    t0 = time.time()
    c = cache_records(base, records, cfg)
    recs = c["records"]
    if len(recs) < 2:
        raise DatasetError(f"{len(recs)} usable training records in {cfg.data}: too few to train on")
    by_cat: dict[str, list[int]] = {}
    for k, r in enumerate(recs):
        by_cat.setdefault(r.category, []).append(k)
    photo = [r.name.rsplit(".", 1)[0].rsplit("_", 1)[0] for r in recs]
    model = build_from_cfg(ModelCfg.from_dict({**asdict(base.cfg), "photometric": True,
                                               "photometric_hidden": cfg.hidden, "pretrained": False}))
    missing = model.load_state_dict(base.state_dict(), strict=False)
    if missing.unexpected_keys or any(not k.startswith("head.photo.") for k in missing.missing_keys):
        raise ValueError(f"the student's weights do not fit a photometric student: {missing}")
    model.eval()
    term = model.head.photo
    opt = torch.optim.AdamW(term.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    head = base.head
    history = []
    bar = tqdm(range(cfg.epochs), desc="train photometric term", unit="epoch")
    for epoch in bar:
        order = torch.randperm(len(recs), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch)).tolist()
        losses, hits = [], []
        for s in range(0, len(order), cfg.batch_size):
            light, ident_vec, ident_base, ident_n = [], [], [], []
            for i in order[s:s + cfg.batch_size]:
                rng = np.random.default_rng([cfg.seed, epoch, i])
                light.append(lighting_group(c, i, rng, cfg))
                others = [k for k in by_cat[recs[i].category] if photo[k] != photo[i]]
                if others:
                    pick = [int(v) for v in rng.choice(others, min(cfg.group - 1, len(others)), replace=False)]
                    js = [i, *pick]
                    ring = colour_stats(np.round(c["ring"][i] * 255).astype(np.uint8))
                    vec = pair_tensor(ring, [colour_stats(np.round(c["obj"][j] * 255).astype(np.uint8)) for j in js])
                    geo = geometry_batch(c["box"][i], [c["size"][j] for j in js])[:, :SHAPE_DIM]
                    vec[:, :SHAPE_DIM] = torch.from_numpy(geo)
                    with torch.no_grad():
                        _, sl = head.finish(c["bg_part"][i:i + 1].float().expand(len(js), -1, -1, -1),
                                            c["fg_part"][js].float(), vec)
                    ident_vec.append(vec)
                    ident_base.append(sl)
                    ident_n.append(len(js))
            lv = torch.stack(light)  # (B, group, 17)
            l_logit = term(lv.flatten(0, 1)).view(len(light), -1)
            loss = F.cross_entropy(l_logit, torch.zeros(len(light), dtype=torch.long))
            hits.append((l_logit.argmax(1) == 0).float().mean().item())
            if ident_vec:
                i_logit = term(torch.cat(ident_vec)) + torch.cat(ident_base)
                parts = torch.split(i_logit, ident_n)
                target = torch.zeros(1, dtype=torch.long)  # the own cutout is first in each group
                loss = loss + torch.stack([F.cross_entropy(p[None], target) for p in parts]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "lighting_top1": float(np.mean(hits))})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", top1=f"{history[-1]['lighting_top1']:.3f}")
    model.model_name = getattr(base, "model_name", "student")
    save_checkpoint(model, save, base.preprocess_cfg, train_cfg=asdict(cfg),
                    base_student=os.path.abspath(cfg.student), base_student_sha256=base.weights_sha256,
                    train_records=len(recs), history=history, train_seconds=round(time.time() - t0, 1),
                    command=command)
    print(f"wrote {os.path.abspath(save)} and its JSON ({len(recs)} training records, "
          f"{time.time() - t0:.0f} s; last epoch: lighting top-1 {history[-1]['lighting_top1']:.3f} "
          "on training groups)")
    return save


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fos.train.photometric", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_args(p, PhotometricCfg(), ("data", "threads"))
    p.add_argument("--data", action="append", default=None, help="FOSD root; repeat for several (their train splits)")
    p.add_argument("--save", required=True, help="the new student's safetensors (JSON beside it)")
    cli.add_threads(p)

    def run(a) -> int:
        vals = {f: getattr(a, f) for f in asdict(PhotometricCfg()) if f not in ("data",)}
        cfg = PhotometricCfg(**{**vals, "data": a.data or PhotometricCfg().data})
        fit(cfg, a.save, "python -m fos.train.photometric " + " ".join(argv if argv is not None else sys.argv[1:]))
        return 0

    return cli.run(run, p, argv)


if __name__ == "__main__":
    sys.exit(main())
