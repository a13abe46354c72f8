"""``python -m fos.inpaint.evaluate``: PSNR, SSIM and L1 inside holes on held-out photos, every method side by side.

The test photos of each ``--data`` root (msrc-fos test; the coco128 test split of ``fos.data from-coco``)
get holes drawn from a generator seeded by (``--seed``, photo index), so every method sees the same
holes:

- **box**: a random box (sides 15-45% of the photo's); **object**: the instance mask of another test
  photo of the same root (its longer side 15-45% of the photo's shorter side, dilated 2 px), at random;
  both scored over the whole hole (the true photo is known there);
- **object-box**: the box of one of the photo's own instances, what the app's "erase" fills; the true
  background behind the object is unknown, so it is scored off every instance (dilated 2 px);
- **visible** (unless ``--no-paste``): the same fill once the top-ranked cutout (the shipped
  student, the app's default library) is pasted into the box as the app shows it, scored where the photo
  shows through; **visible-around**: the same, but only the box minus the cutout's matte (eroded 3 px)
  is filled.

Metrics: PSNR, SSIM and L1 over the scored pixels, and (unless ``--no-feature``) a deep-feature
distance from the shipped ImageNet MobileNetV2 (:class:`fos.inpaint.features.FeatureDistance`; no
downloaded LPIPS weights). Every method runs through the serving path
(:class:`fos.inpaint.infer.Inpainter`: crop around the hole, fill, paste back). Controls that learn
nothing: ``mean`` fills the hole with the mean colour of the crop's visible pixels; ``telea`` and ``ns``
are OpenCV's ``cv2.inpaint``, ``shiftmap``, ``fsr-fast`` and ``fsr-best`` OpenCV contrib's.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from fos import cli
from fos.data import DatasetError
from fos.inpaint.infer import CV2_METHODS, DEFAULT_WEIGHTS, XPHOTO_METHODS, Inpainter
from fos.inpaint.masks import (box_hole, crop_to_content, crop_window, hole_bbox, load_masks, object_box_hole,
                               object_hole, union)
from fos.inpaint.metrics import l1_in_hole, psnr_in_hole, ssim_in_hole, visible_region

CLASSICAL = (*CV2_METHODS, *XPHOTO_METHODS)
from fos.data.photos import load_photos
from fos.preprocess import load_image
from fos.weights import SHIPPED

log = logging.getLogger("fos.inpaint.evaluate")
# box, object: random holes (known truth everywhere); object-box: an instance's own box, as the app's
# "erase" fills it, scored off the instance; visible: the same fill once the top-ranked cutout is pasted
# into the box as the app shows it, scored where the photo shows through; visible-around: the same, but
# only the box minus the cutout's matte (eroded by AROUND_MARGIN) is filled
KINDS = ("box", "object", "object-box", "visible", "visible-around")
FIGURE_KINDS = ("visible", "object-box", "box")  # the figure's kind: the first with cases
AROUND_MARGIN = 3  # px inside the cutout's matte that are still filled in visible-around
MAX_OBJECT_BOX = 0.5  # object boxes over this share of the photo are left out (too little to fill from)
# the README's models: the paper's SPL and its two ablations (trained into runs/), and the shipped weights
# (the telea-init variant)
ABLATIONS = {"spl": "runs/inpaint/spl.safetensors", "spl-noprior": "runs/inpaint/spl-noprior.safetensors",
             "spl-concat": "runs/inpaint/spl-concat.safetensors", "spl-telea-init": DEFAULT_WEIGHTS}


def test_holes(root: str, seed: int = 0, split: str = "test") -> list[dict]:
    """The evaluation cases of a root: per photo of ``split``, a random box, another photo's object shape,
    and one instance's own box (the largest that covers at most ``MAX_OBJECT_BOX`` of the photo) with
    ``known``, the pixels off every instance. Each case: photo, kind, hole, region (scored pixels) and,
    for object boxes, category, box and known."""
    photos = load_photos(root, split)
    masks = [{cls: load_masks(ps, (ph.height, ph.width)) for cls, ps in ph.masks.items()} for ph in photos]
    shapes = [[crop_to_content(m) for ms in per.values() for m in ms] for per in masks]  # each mask file read once
    cases = []
    for i, ph in enumerate(photos):
        rng = np.random.default_rng([seed, i])
        w, h = ph.width, ph.height
        others = [s for j, ss in enumerate(shapes) if j != i for s in ss]
        box = box_hole(h, w, rng, 0.15, 0.45)
        cases.append({"photo": ph.path, "kind": "box", "hole": box, "region": box})
        if others:
            hole = object_hole(h, w, others[int(rng.integers(len(others)))], rng, 0.15, 0.45)
            cases.append({"photo": ph.path, "kind": "object", "hole": hole, "region": hole})
        insts = [(cls, m) for cls, ms in sorted(masks[i].items()) for m in ms]
        objects = union([m for _, m in insts], (h, w))
        best = None
        for cls, m in insts:
            hole, known = object_box_hole(m, objects)
            area = hole.mean()
            if area <= MAX_OBJECT_BOX and (hole & known).any() and (best is None or area > best[0]):
                best = (area, cls, m, hole, known)
        if best is not None:
            _, cls, m, hole, known = best
            cases.append({"photo": ph.path, "kind": "object-box", "hole": hole, "region": hole & known,
                          "known": known, "category": cls, "box": hole_bbox(hole)})
    return cases


class MeanFill:
    """The no-training control: the hole takes the mean colour of the visible pixels of its crop."""

    description = "mean (visible pixels of the crop)"

    def fill(self, photo, hole):
        arr = np.asarray(load_image(photo, "RGB", what="photo")).copy()
        x1, y1, x2, y2 = crop_window(hole_bbox(hole), arr.shape[1], arr.shape[0])
        crop, chole = arr[y1:y2, x1:x2], hole[y1:y2, x1:x2]
        vis = crop[~chole]
        crop[chole] = vis.mean(0).round().astype(np.uint8) if len(vis) else 128
        return Image.fromarray(arr)


class TopCutout:
    """The cutout the app would paste into a box: the top of the search (the shipped student, the app's
    default library) for the category, leaving out cutouts of the photo itself; None for a category the
    library lacks. The ranking does not depend on what is in the box (the student sees it gray)."""

    def __init__(self, weights: str = SHIPPED, library: str | None = None, backend: str = "auto"):
        from fos.bootstrap import prepare
        from fos.search import EngineCfg, SearchEngine, weights_prefilter

        lib, b = prepare(weights, library, backend)
        self.engine = SearchEngine(lib, b, EngineCfg(), prefilter=weights_prefilter(weights, b.student_sha256))
        self.categories = set(lib.categories)

    def __call__(self, photo: str, box, category: str):
        from fos.vocab import spellings

        cat = next((c for c in spellings(category) if c in self.categories), None)
        if cat is None:
            return None
        stem = os.path.splitext(os.path.basename(photo))[0]
        self.engine.set_background(load_image(photo, "RGB", what="photo"), box)
        for r in self.engine.search(cat, 10).results:
            if not r.id.startswith(stem + "_"):
                return self.engine.cutout(r), r.mask
        return None


def visible_cases(cases: list[dict], paster, limit: int = 0, margin: int = AROUND_MARGIN) -> list[dict]:
    """For each object-box case whose category ``paster`` (a :class:`TopCutout`) has (the first ``limit``
    such cases when > 0), the two visible cases: the box filled (``visible``) or the box minus the
    cutout's matte eroded by ``margin`` (``visible-around``), both scored where the photo shows through
    the pasted cutout."""
    from fos.composite import fit_coverage
    from fos.inpaint.masks import dilate

    out = []
    for c in cases:
        if c["kind"] != "object-box" or (limit and len(out) >= 2 * limit):
            continue
        got = paster(c["photo"], c["box"], c["category"])
        if got is None:
            continue
        fg, mask = got
        h, w = c["hole"].shape
        cover = fit_coverage(c["box"], (w, h), fg, mask)
        region = visible_region(c["hole"], c["known"], cover)
        if not region.any():
            continue
        around = c["hole"] & dilate(cover == 0, margin)  # the box less the matte eroded by margin
        for kind, hole in (("visible", c["hole"]), ("visible-around", around)):
            out.append({**c, "kind": kind, "hole": hole, "region": region, "cover": cover})
    return out


def reference(pred: np.ndarray, true: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The truth where it is scored, the fill elsewhere: metrics that look at neighbourhoods (SSIM, the
    feature distance) then see differences inside ``region`` only, not an erased object's pixels."""
    out = pred.copy()
    out[region] = true[region]
    return out


def methods(weights: dict[str, str], backend: str = "torch", classical: tuple[str, ...] = CLASSICAL) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, path in weights.items():
        out[name] = Inpainter("spl", path, backend=backend)
    for m in classical:
        out[m] = Inpainter(m)
    out["mean"] = MeanFill()
    return out


def evaluate(roots: list[str], ms: dict[str, object], seed: int = 0, figure: str | None = None,
             figure_rows: int = 4, progress: bool = True, limit: int = 0, split: str = "test",
             paster=None, feature=None, slow: dict[str, int] | None = None,
             kinds: tuple[str, ...] = KINDS) -> dict:
    """Every method on every case of every root (the first ``limit`` of each kind per root when > 0).
    ``paster`` (a :class:`TopCutout`) adds the visible kinds; ``feature`` (a :class:`FeatureDistance`)
    adds the deep-feature distance; ``slow``: method -> how many cases of each kind per root it gets
    (the first ones), for methods too slow for all; ``kinds``: the kinds of hole scored."""
    rows: dict[tuple[str, str, str], list[tuple[float, ...]]] = {}
    timing: dict[str, list[float]] = {m: [] for m in ms}
    examples: dict[str, list] = {}  # kind -> figure rows
    slow = slow or {}
    for root in roots:
        name = os.path.basename(os.path.normpath(root))
        cases = test_holes(root, seed, split)
        if paster is not None and {"visible", "visible-around"} & set(kinds):
            cases += visible_cases(cases, paster, limit)
        by_kind: dict[str, list[dict]] = {}
        for c in cases:
            by_kind.setdefault(c["kind"], []).append(c)
        if limit:
            by_kind = {k: v[:limit] for k, v in by_kind.items()}
        cases = [c for k in KINDS if k in kinds for c in by_kind.get(k, [])]
        for group in by_kind.values():
            for rank, c in enumerate(group):
                c["rank"] = rank  # its place among its kind: --slow methods take the first ones
        if not cases:
            raise DatasetError(f"{root} has no {split} photos")
        for ci, c in enumerate(tqdm(cases, desc=f"inpaint {name}", unit="hole", disable=not progress)):
            true = np.asarray(load_image(c["photo"], "RGB", what="photo"))
            outs = {}
            window = crop_window(hole_bbox(c["hole"]), true.shape[1], true.shape[0])
            for m, inp in ms.items():
                if m in slow and c["rank"] >= slow[m]:
                    continue
                t0 = time.perf_counter()
                pred = np.asarray(inp.fill(true, c["hole"]))
                timing[m].append(time.perf_counter() - t0)
                outs[m] = pred
                ref = reference(pred, true, c["region"])
                scores = (psnr_in_hole(pred, ref, c["region"]), ssim_in_hole(pred, ref, c["region"]),
                          l1_in_hole(pred, ref, c["region"]))
                if feature is not None:
                    scores += (feature(pred, ref, c["region"], window),)
                for key in ((name, c["kind"], m), ("all", c["kind"], m)):
                    rows.setdefault(key, []).append(scores)
            shown = examples.setdefault(c["kind"], [])
            if figure and c["kind"] in FIGURE_KINDS and len(outs) == len(ms) and len(shown) < 2 * figure_rows:
                shown.append((true, c["hole"], outs))
    table = {}
    for (d, k, m), v in rows.items():
        a = np.array(v)
        table[f"{d}/{k}/{m}"] = {"n": len(v), "psnr": float(a[:, 0].mean()), "ssim": float(a[:, 1].mean()),
                                 "l1": float(a[:, 2].mean()), **({"feature": float(a[:, 3].mean())}
                                                                if a.shape[1] > 3 else {})}
    result = {"seed": seed, "split": split, "roots": roots,
              "methods": {m: getattr(i, "description", m) for m, i in ms.items()},
              "results": table, "ms_per_fill": {m: 1e3 * float(np.mean(t)) for m, t in timing.items() if t},
              "fills": {m: len(t) for m, t in timing.items()},
              "feature_distance": "MobileNetV2 (ImageNet, shipped) stages 1/3/6/13/17, unit-normalized, "
                                  "squared difference, no learned weights" if feature is not None else None}
    # the figure shows fills as the app shows them (visible) when there are any, else object boxes, else boxes
    kind = next((k for k in FIGURE_KINDS if examples.get(k)), None)
    if figure and kind:
        save_figure(examples[kind], list(ms), figure)
        result["figure"], result["figure_kind"] = figure, kind
    return result


def save_figure(examples, names: list[str], path: str, cell: int = 160) -> None:
    """Rows: cases; columns: input (hole in red), each method, ground truth; each cell the crop around the hole."""
    cols = ["input"] + names + ["true"]
    head = 18
    fig = Image.new("RGB", (cell * len(cols), head + cell * len(examples)), "white")
    d = ImageDraw.Draw(fig)
    for j, c in enumerate(cols):
        d.text((j * cell + 4, 3), c, fill="black")
    for i, (true, hole, outs) in enumerate(examples):
        x1, y1, x2, y2 = crop_window(hole_bbox(hole), true.shape[1], true.shape[0])
        shown = true.copy()
        shown[hole] = (shown[hole] * 0.4 + np.array([255, 0, 0]) * 0.6).astype(np.uint8)
        imgs = [shown] + [outs[n] for n in names] + [true]
        for j, a in enumerate(imgs):
            tile = Image.fromarray(a[y1:y2, x1:x2]).resize((cell, cell), Image.BILINEAR)
            fig.paste(tile, (j * cell, head + i * cell))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.save(path)
    log.info("figure written to %s", path)


def format_table(res: dict) -> str:
    lines = ["| data | hole | method | n | PSNR (dB) | SSIM | L1 | feature distance |", "|---|---|---|---|---|---|---|---|"]
    for key, v in res["results"].items():
        d, k, m = key.split("/")
        feat = f"{v['feature']:.4f}" if "feature" in v else "-"
        lines.append(f"| {d} | {k} | {m} | {v['n']} | {v['psnr']:.2f} | {v['ssim']:.3f} | {v['l1']:.4f} | {feat} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fos.inpaint.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", default=None,
                   help="FOSD root with photos/ (its test split is used); repeat (default ../shared/data/msrc-fos)")
    p.add_argument("--weights", action="append", default=None, metavar="NAME=PATH",
                   help="an SPL model to evaluate; repeat (default: those of ABLATIONS that exist: the README's "
                        "runs/inpaint/ models and spl-telea-init=weights/inpaint.safetensors)")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "auto"], default="torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="whose photos get the holes (train: for choosing a model without looking at test)")
    p.add_argument("--limit", type=int, default=0, help="only the first N holes of each kind per root (0: all)")
    p.add_argument("--methods", default=",".join((*CLASSICAL, "mean")),
                   help="the classical methods and controls to run beside the SPL models (comma list)")
    p.add_argument("--slow", action="append", default=None, metavar="METHOD=N",
                   help="give METHOD only the first N holes of each kind per root (for fsr-best); repeat")
    p.add_argument("--kinds", default=",".join(KINDS), help="the kinds of hole to score (comma list)")
    p.add_argument("--no-paste", action="store_true", help="leave out the visible-region kinds (no search)")
    p.add_argument("--no-feature", action="store_true", help="leave out the deep-feature distance")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--figure", default=None, help="write the figure (PNG) here")
    cli.add_threads(p)
    return p


def main(argv=None) -> int:
    def run(a) -> int:
        if a.weights:
            bad = [w for w in a.weights if "=" not in w]
            if bad:
                raise ValueError(f"--weights takes NAME=PATH, got {bad[0]!r}")
            weights = dict(w.split("=", 1) for w in a.weights)
        else:
            weights = {k: v for k, v in ABLATIONS.items() if os.path.isfile(v)}
        known = (*CLASSICAL, "mean")
        wanted = [m for m in a.methods.split(",") if m]
        if [m for m in wanted if m not in known]:
            raise ValueError(f"--methods takes some of {', '.join(known)}, got {a.methods!r}")
        kinds = tuple(k for k in a.kinds.split(",") if k)
        if not kinds or [k for k in kinds if k not in KINDS]:
            raise ValueError(f"--kinds takes some of {', '.join(KINDS)}, got {a.kinds!r}")
        slow = {}
        for item in a.slow or []:
            m, _, n = item.partition("=")
            if not n.isdigit():
                raise ValueError(f"--slow takes METHOD=N, got {item!r}")
            slow[m] = int(n)
        ms = methods(weights, a.backend, tuple(m for m in wanted if m != "mean"))
        if "mean" not in wanted:
            ms.pop("mean")
        from fos.inpaint.features import FeatureDistance

        res = evaluate(a.data or ["../shared/data/msrc-fos"], ms, a.seed, a.figure, limit=a.limit, split=a.split,
                       paster=None if a.no_paste else TopCutout(), feature=None if a.no_feature else FeatureDistance(),
                       slow=slow, kinds=kinds)
        print(format_table(res))
        print("ms per fill: " + ", ".join(f"{m} {t:.1f}" for m, t in res["ms_per_fill"].items()))
        if a.json:
            cli.write_json(a.json, res)
            log.info("results written to %s", a.json)
        return 0

    return cli.run(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
