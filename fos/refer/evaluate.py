"""``python -m fos.refer evaluate --weights W [--weights ABLATION ...] [--data ROOT ...] [--split test|dev|train]``:
referring segmentation on the test photos (or the dev split: the train photos the first weights were not
trained on, by their ``--holdout``), beside four baselines. The first weights are also scored with their
other mask source (segmenter or response), as the row "NAME (segmenter masks)" or "NAME (response masks)".

Scored phrases: every phrase of a test instance that names it alone among the instances of its
category in the photo (:func:`fos.refer.phrases.referents`; an ambiguous phrase has several right
answers and is left out, and counted). Metrics (:mod:`fos.refer.metrics`): PointM, mIoU, overall IoU
and, on photos with two or more instances of the category, instance accuracy. Three subsets: all
phrases; phrases on multi-instance photos; and those of them with a left or right location word
(the issue's target subset).

Baselines, on the same phrases:

* **category only**: the first model given the category name alone (which instance does it pick?);
* **DA-WSOL**: the shipped localizer for the category (its CAM is the response; its cutout's mask,
  by its default mask method inside its box, the mask); phrases whose category it does not know are
  left out of its row, and the model's row on the same phrases is printed next to it;
* **random instance**: the true mask of an instance of the category drawn at random, as an
  expectation over the draw (its PointM counts the drawn instance being the referred one);
* **location words only**: a rule with no pixels: the mask is the part of the photo the phrase's
  location words name (its third across for "on the left"/"in the middle"/"on the right", its third
  down for "at the top"/"at the bottom", the whole extent without a word) and the point is that
  part's centre (the photo's centre for a phrase without location words).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

import numpy as np
from PIL import Image
from tqdm import tqdm

from fos import cli
from fos.preprocess import InputError, load_image
from fos.refer.config import MASK_FROM, PROMPT_METHODS
from fos.refer.masks import named_region
from fos.vocab import class_of_word
from fos.refer.metrics import Record, instance_hit, intersection_union, record, summarize
from fos.refer.phrases import Phrase, PhotoPhrases, is_dev, referents

SUBSETS = ("all", "multi-instance", "multi-instance, left/right")
LR = ("on the left", "on the right")


def scored_phrases(pp: PhotoPhrases, categories: list[str]) -> tuple[list[tuple], int]:
    """([(phrase, referred position, positions of its category)], ambiguous phrases left out)."""
    out, ambiguous = [], 0
    for k, inst in enumerate(pp.instances):
        if inst.category not in categories:
            continue
        same = [j for j, o in enumerate(pp.instances) if o.category == inst.category]
        from fos.refer.phrases import instance_phrases

        for p in instance_phrases(inst, pp.path):
            r = referents(p, pp.instances)
            if r == [k]:
                out.append((p, k, same))
            elif k == min(r):  # count an ambiguous phrase once
                ambiguous += 1
    return out, ambiguous


def read_masks(pp: PhotoPhrases) -> list[np.ndarray]:
    out = []
    for m in pp.masks:
        with Image.open(m) as im:
            out.append(np.asarray(im.convert("L")) > 127)
    return out


def random_record(masks: list[np.ndarray], referred: int, same: list[int], lr: bool) -> Record:
    pts, ii, uu, inst = [], [], [], []
    for k in same:
        i, u = intersection_union(masks[k], masks[referred])
        ii.append(i)
        uu.append(u)
        pts.append(float(k == referred))
        inst.append(float(instance_hit(masks[k], [masks[j] for j in same], same.index(referred))))
    return Record(float(np.mean(pts)), float(np.mean(ii)), float(np.mean(uu)),
                  float(np.mean(inst)) if len(same) >= 2 else None, lr)


def location_record(phrase: Phrase, masks: list[np.ndarray], referred: int, same: list[int], lr: bool) -> Record:
    """The no-pixel baseline: the region the phrase's location words name, and its centre as the point."""
    h, w = masks[referred].shape
    region = named_region(dict(phrase.attrs), w, h)
    ys, xs = np.nonzero(region)
    point = np.zeros((h, w), np.float32)
    point[(int(ys.min()) + int(ys.max())) // 2, (int(xs.min()) + int(xs.max())) // 2] = 1.0
    return record(region, point, masks, referred, same, lr)


def dev_share(referrer) -> float:
    """The dev share (``--holdout``) a loaded referrer's weights were trained with, from their saved
    training config (0 when they predate it: every train photo was trained on)."""
    return float(getattr(referrer.model, "checkpoint_info", {}).get("train_cfg", {}).get("holdout", 0.0))


def localizer_class(category: str, classes: list[str]) -> str | None:
    c = class_of_word(category)
    return c if c in classes else None


def evaluate(referrers: dict, photos: list[PhotoPhrases], localizer=None, progress: bool = True) -> dict:
    """Records per method name: the referrers' (their rows), the first one's with its other mask source
    ("NAME (response masks)" or "NAME (segmenter masks)"), "category only" (of the first referrer),
    "DA-WSOL" (when ``localizer``), "random instance" and "location words only"; plus the count of ambiguous phrases."""
    first = next(iter(referrers.values()))
    cats = first.categories
    alt = "segmenter" if first.cfg.mask_from == "response" else "response"
    alt_name = f"{next(iter(referrers))} ({alt} masks)"
    recs: dict[str, list[tuple[Record, bool]]] = {n: [] for n in [*referrers, alt_name, "category only",
                                                                  "random instance", "location words only"]}
    if localizer is not None:
        recs["DA-WSOL"] = []
    ambiguous = 0
    for pp in tqdm(photos, desc="evaluate refer", unit="photo", disable=not progress):
        items, amb = scored_phrases(pp, cats)
        ambiguous += amb
        if not items:
            continue
        img = load_image(pp.path, "RGB", what="photo")
        arr = np.asarray(img)
        masks = read_masks(pp)
        feats = {n: r.features(img) for n, r in referrers.items()}
        cat_cache: dict[str, tuple] = {}
        loc_cache: dict[str, tuple | None] = {}
        for p, k, same in items:
            lr = dict(p.attrs).get("h") in LR
            known = localizer is not None and localizer_class(p.category, localizer.classes) is not None
            for j, (n, r) in enumerate(referrers.items()):
                full, prob, _, _ = r.predict(img, p.text, feats[n])
                attrs = dict(p.attrs)
                recs[n].append((record(r.mask_of(prob, full, photo=arr, attrs=attrs), full, masks, k, same, lr), known))
                if j == 0:
                    m = r.mask_of(prob, full, alt, photo=arr, attrs=attrs)
                    recs[alt_name].append((record(m, full, masks, k, same, lr), known))
            if p.category not in cat_cache:
                full, prob, _, _ = first.predict(img, p.category, feats[next(iter(referrers))])
                cat_cache[p.category] = (first.mask_of(prob, full, photo=arr, attrs={}), full)
            m, full = cat_cache[p.category]
            recs["category only"].append((record(m, full, masks, k, same, lr), known))
            recs["random instance"].append((random_record(masks, k, same, lr), known))
            recs["location words only"].append((location_record(p, masks, k, same, lr), known))
            if known:
                if p.category not in loc_cache:
                    c = localizer.cut(img, localizer_class(p.category, localizer.classes))
                    loc_cache[p.category] = (c.mask, c.loc.cam)
                m, cam = loc_cache[p.category]
                recs["DA-WSOL"].append((record(m, cam, masks, k, same, lr), True))
    return {"records": recs, "ambiguous": ambiguous}


def subsets(recs: list[tuple[Record, bool]], only_known: bool = False) -> dict:
    rs = [r for r, known in recs if known or not only_known]
    return {"all": summarize(rs), "multi-instance": summarize([r for r in rs if r.instance is not None]),
            "multi-instance, left/right": summarize([r for r in rs if r.instance is not None and r.lr])}


def fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def run(a) -> int:
    from fos.refer.infer import Referrer
    from fos.refer.train import load_phrases

    t0 = time.time()
    refs = {}
    for w in a.weights:
        name = os.path.splitext(os.path.basename(w))[0]
        r = Referrer(w, backend="torch")
        given = {"mask_from": a.mask_from, "peak_fraction": a.peak_fraction, "prompt_method": a.prompt_method,
                 "region_margin": a.region_margin, "box_pad": a.box_pad}
        r.cfg = replace(r.cfg, **{k: v for k, v in given.items() if v is not None})
        refs[name if name not in refs else w] = r
    photos = load_phrases(a.data, "train" if a.split == "dev" else a.split, a.limit)
    if a.split in ("dev", "train"):
        holdout = dev_share(next(iter(refs.values())))
        photos = [p for p in photos if is_dev(p.path, holdout) == (a.split == "dev")]
    if not photos:
        raise InputError(f"no {a.split} photos with instances in {a.data}")
    localizer = None
    if a.localizer:
        from fos.localize.infer import Localizer

        localizer = Localizer(a.localizer)
    res = evaluate(refs, photos, localizer)
    rows = {}
    for n, recs in res["records"].items():
        rows[n] = subsets(recs)
    first = next(iter(refs))
    if localizer is not None:
        rows[f"{first} (DA-WSOL's categories)"] = subsets(res["records"][first], only_known=True)
        rows["category only (DA-WSOL's categories)"] = subsets(res["records"]["category only"], only_known=True)
    print(f"\nReferring segmentation on {len(photos)} {a.split} photos of {', '.join(a.data)}; "
          f"{res['ambiguous']} ambiguous phrases left out\n")
    for s in SUBSETS:
        n = rows[first][s]["phrases"]
        print(f"### {s} ({n} phrases)\n")
        print("| method | phrases | PointM | mIoU | oIoU | instance acc |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, r in rows.items():
            x = r[s]
            print(f"| {name} | {x['phrases']} | {fmt(x['PointM'])} | {fmt(x['mIoU'])} | {fmt(x['oIoU'])} | "
                  f"{fmt(x['instance_acc'])} |")
        print()
    out = {"data": a.data, "split": a.split, "photos": len(photos), "ambiguous": res["ambiguous"], "rows": rows,
           "weights": a.weights, "mask_from": {n: r.cfg.mask_from for n, r in refs.items()},
           "peak_fraction": {n: r.cfg.peak_fraction for n, r in refs.items()},
           "prompt": {n: [r.cfg.prompt_method, r.cfg.region_margin, r.cfg.box_pad] for n, r in refs.items()}, "localizer": a.localizer,
           "seconds": round(time.time() - t0, 1),
           "command": "python -m fos.refer evaluate " + " ".join(a.argv)}
    if a.json:
        cli.write_json(a.json, out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fos.localize.infer import DEFAULT_WEIGHTS as LOCALIZER

    p = argparse.ArgumentParser(prog="python -m fos.refer evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", action="append", required=True, help="referring weights; repeat to compare (ablations)")
    p.add_argument("--data", action="append", default=None, help="FOSD root(s) with photos/ (default msrc-fos)")
    p.add_argument("--split", choices=["test", "dev", "train"], default="test",
                   help="test; dev: the train photos the first --weights were not trained on (their --holdout); "
                   "train: the ones they were")
    p.add_argument("--localizer", default=LOCALIZER, help=f"DA-WSOL weights for its baseline (default {LOCALIZER}; "
                   "empty to skip)")
    p.add_argument("--mask-from", choices=list(MASK_FROM), default=None,
                   help="score every --weights with this mask source (default: the one each was saved with)")
    p.add_argument("--peak-fraction", type=float, default=None,
                   help="with response masks: the share of the response's peak kept, for every --weights "
                   "(default: each one's own)")
    p.add_argument("--prompt-method", choices=list(PROMPT_METHODS), default=None,
                   help="with prompted masks: u2netp or grabcut inside the response's box (default: each one's own)")
    p.add_argument("--region-margin", type=float, default=None,
                   help="with prompted masks: the named third widened by this share of the side (default: each one's own)")
    p.add_argument("--box-pad", type=float, default=None,
                   help="with prompted masks: the response box grown by this share (default: each one's own)")
    p.add_argument("--limit", type=cli.nonneg_int, default=0, help="only the first N photos of each root (0: all)")
    p.add_argument("--json", default=None, help="write every number here")
    cli.add_threads(p)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def go(a) -> int:
        a.data = a.data or ["../shared/data/msrc-fos"]
        a.argv = argv
        return run(a)

    return cli.run(go, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
