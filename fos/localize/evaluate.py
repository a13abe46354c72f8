"""``python -m fos.localize.evaluate --weights CAM --weights DAWSOL [--data ROOT]``: WSOL metrics on the
test photos of ``--data`` (msrc-fos by default), side by side with a no-training baseline, and the
box-to-mask comparison.

Samples are (photo, class) pairs: every class with a test instance in the photo. Per sample the CAM of
that class is min-max normalized and upsampled to the photo. Metrics (:mod:`fos.localize.metrics`):
MaxBoxAccV2 (its max over the CAM threshold is the metric's own oracle choice, as Choe et al.
define it), BoxAcc at IoU 0.5 at the threshold chosen on the train split (what users get), PxAP,
top-1 classification and top-1 localization. The no-training baseline is a box centred in the
photo with the mean relative width and height of the train split's instance boxes.

Box to mask: mask IoU inside the box against the true class mask, for every mask method, given the
true instance boxes and given the localized box, on the train split (where the default is chosen)
and on the test split.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from PIL import Image

from fos import cli
from fos.data.photos import Photo, load_photo_roots, mean_relative_size
from fos.localize.infer import Localizer
from fos.localize.masks import METHODS, box_to_mask, u2netp_path
from fos.localize.metrics import (IOU_THRESHOLDS, best_iou, box_accuracy_curve, cam_box, mask_iou, max_box_acc_v2,
                                  pxap, top1_loc)
from fos.localize.model import upsample_cam
from fos.preprocess import InputError, load_image


def centre_box(ph: Photo, rel: tuple[float, float]) -> tuple[int, int, int, int]:
    w, h = rel[0] * ph.width, rel[1] * ph.height
    x1, y1 = int(round((ph.width - w) / 2)), int(round((ph.height - h) / 2))
    return x1, y1, int(round(x1 + w)), int(round(y1 + h))


def samples(photos: list[Photo], classes: list[str]) -> list[tuple[Photo, str]]:
    return [(ph, c) for ph in photos for c in ph.labels if c in classes]


def baseline_row(photos: list[Photo], rel: tuple[float, float]) -> dict:
    cams, gts, masks = [], [], []
    for ph in photos:
        for c in ph.labels:
            m = np.zeros((ph.height, ph.width), np.float32)
            x1, y1, x2, y2 = centre_box(ph, rel)
            m[y1:y2, x1:x2] = 1.0
            cams.append(m)
            gts.append(ph.boxes[c])
            masks.append(ph.gt_mask(c))
    curve = box_accuracy_curve(cams, gts)
    mba, per = max_box_acc_v2(curve)
    op = float(np.mean([best_iou([centre_box(ph, rel)], ph.boxes[c]) >= 0.5 for ph in photos for c in ph.labels]))
    return {"method": f"centre box ({rel[0]:.2f} x {rel[1]:.2f} of the photo, no training)", "MaxBoxAccV2": mba,
            **{f"MaxBoxAcc@{d}": v for d, v in zip(IOU_THRESHOLDS, per)}, "BoxAcc@0.5 (train tau)": op,
            "PxAP": pxap(cams, masks), "top1_cls": None, "top1_loc": None, "samples": len(cams)}


def model_row(loc: Localizer, photos: list[Photo]) -> tuple[dict, dict]:
    classes = loc.classes
    cams, gts, masks, op_hits = [], [], [], []
    pred_cls, labels, pred_boxes, gt_boxes = [], [], [], []
    per_sample = {}
    for ph in photos:
        img = load_image(ph.path, "RGB", what="photo")
        probs, ncams = loc.predict(img)
        top = classes[int(np.argmax(probs))]
        full = {}
        for c in set(ph.labels + [top]):
            if c in classes:
                full[c] = upsample_cam(ncams[classes.index(c)], ph.width, ph.height)
        for c in ph.labels:
            if c not in classes:
                continue
            cams.append(full[c])
            gts.append(ph.boxes[c])
            masks.append(ph.gt_mask(c))
            b = cam_box(full[c], loc.cfg.box_threshold)
            op_hits.append(b is not None and best_iou([b], ph.boxes[c]) >= 0.5)
            per_sample[(ph.path, c)] = (full[c], b, float(probs[classes.index(c)]))
        pred_cls.append(top)
        labels.append(ph.labels)
        pred_boxes.append(cam_box(full[top], loc.cfg.box_threshold))
        gt_boxes.append(ph.boxes)
    curve = box_accuracy_curve(cams, gts)
    mba, per = max_box_acc_v2(curve)
    row = {"method": loc.cfg.method, "MaxBoxAccV2": mba, **{f"MaxBoxAcc@{d}": v for d, v in zip(IOU_THRESHOLDS, per)},
           "BoxAcc@0.5 (train tau)": float(np.mean(op_hits)), "PxAP": pxap(cams, masks),
           "top1_cls": float(np.mean([c in labs for c, labs in zip(pred_cls, labels)])),
           "top1_loc": top1_loc(pred_cls, labels, pred_boxes, gt_boxes), "samples": len(cams),
           "box_threshold": loc.cfg.box_threshold}
    return row, per_sample


def mask_table(loc: Localizer, photos: list[Photo], methods: list[str], per_sample: dict | None = None) -> dict:
    """Mean mask IoU inside the box, per method, given the true boxes and given the localized box."""
    out = {m: {"true box": [], "localized box": []} for m in methods}
    if per_sample is None:
        _, per_sample = model_row(loc, photos)
    for ph in photos:
        arr = np.asarray(load_image(ph.path, "RGB", what="photo"))
        for c in ph.labels:
            if (ph.path, c) not in per_sample:
                continue
            cam, lbox, _ = per_sample[(ph.path, c)]
            gt = ph.gt_mask(c)
            for m in methods:
                ious = [mask_iou(box_to_mask(m, arr, gb, cam, loc.cfg.mask_threshold), gt, gb) for gb in ph.boxes[c]]
                out[m]["true box"].append(float(np.mean(ious)))
                if lbox is not None:
                    out[m]["localized box"].append(
                        mask_iou(box_to_mask(m, arr, lbox, cam, loc.cfg.mask_threshold), gt, lbox))
    return {m: {k: float(np.mean(v)) if v else None for k, v in d.items()} | {"samples": len(d["true box"])}
            for m, d in out.items()}


def figure(locs: list[Localizer], names: list[str], photos: list[Photo], path: str, n: int = 6) -> None:
    """One row per photo: the photo with its true boxes, then each localizer's CAM (box at its train
    threshold), then the cutout of the last one with its default mask method."""
    from PIL import ImageDraw

    from fos.checkpoint import atomic_write
    from fos.localize.infer import draw_localization

    cell, row = 200, 140
    # photos of one class that every localizer knows (a root may hold classes it was not trained on)
    single = [ph for ph in photos if len(ph.labels) == 1 and all(ph.labels[0] in loc.classes for loc in locs)]
    chosen = single[:: max(1, len(single) // n)][:n]
    cols = 2 + len(locs)
    sheet = Image.new("RGB", (cols * cell, len(chosen) * row + 20), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for j, title in enumerate(["photo, true box", *names, f"cutout ({locs[-1].mask_method})"]):
        d.text((j * cell + 4, 4), title, fill=(0, 0, 0))
    for i, ph in enumerate(chosen):
        img = load_image(ph.path, "RGB", what="photo")
        c = ph.labels[0]
        tiles = [draw_localization(img, ph.boxes[c][0])]
        for loc in locs:
            res = loc.localize(img, c)
            heat = np.asarray(img, np.float32) * 0.45 + np.stack([res.cam * 255, res.cam * 80, 0 * res.cam], -1) * 0.55
            tiles.append(draw_localization(Image.fromarray(heat.clip(0, 255).astype(np.uint8)), res.box))
        tiles.append(locs[-1].cut(img, c).rgba())
        for j, t in enumerate(tiles):
            t = t.copy()
            t.thumbnail((cell - 6, row - 6))
            bgc = Image.new("RGB", t.size, (255, 255, 255))
            bgc.paste(t, mask=t.split()[3] if t.mode == "RGBA" else None)
            sheet.paste(bgc, (j * cell + 3, 20 + i * row + 3))
        d.text((6, 20 + i * row + row - 20), c, fill=(255, 255, 255))
    atomic_write(path, lambda f: sheet.save(f, format="PNG"))
    print(f"wrote {os.path.abspath(path)}")


def fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def run(a) -> int:
    t0 = time.time()
    limit = (lambda phs: phs[:a.limit]) if a.limit else (lambda phs: phs)
    test = limit(load_photo_roots(a.data, a.split))
    train = limit(load_photo_roots(a.data, "train"))
    if not test:
        raise InputError(f"no {a.split} photos in {a.data}")
    rel = mean_relative_size(train)
    locs = [Localizer(w) for w in a.weights]
    rows = [baseline_row(test, rel)]
    per_sample = None
    for w, loc in zip(a.weights, locs):
        row, per_sample = model_row(loc, test)
        rows.append({**row, "weights": w, "name": os.path.splitext(os.path.basename(w))[0]})
    cols = ["MaxBoxAccV2", *[f"MaxBoxAcc@{d}" for d in IOU_THRESHOLDS], "BoxAcc@0.5 (train tau)", "PxAP",
            "top1_cls", "top1_loc"]
    print(f"\nWSOL on {len(test)} {a.split} photos of {', '.join(a.data)} ({rows[0]['samples']} photo-class samples)\n")
    print("| method | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for r in rows:
        print(f"| {r.get('name', r['method'])} | " + " | ".join(fmt(r[c]) for c in cols) + " |")
    methods = list(a.mask_methods)
    if "u2netp" in methods:
        try:
            u2netp_path()
        except InputError as e:
            print(f"\nnote: u2netp left out: {e}")
            methods.remove("u2netp")
    masks = {}
    if methods and locs:
        loc = locs[-1]
        masks["train"] = mask_table(loc, train, methods, per_sample if a.split == "train" else None)
        masks["test"] = mask_table(loc, limit(load_photo_roots(a.data, "test")), methods,
                                   per_sample if a.split == "test" else None)
        print(f"\nBox to mask (mean mask IoU inside the box; boxes and CAM of {a.weights[-1]})\n")
        print("| method | train, true box | train, localized box | test, true box | test, localized box |")
        print("|---|---:|---:|---:|---:|")
        for m in methods:
            tr, te = masks["train"][m], masks["test"][m]
            print(f"| {m} | {fmt(tr['true box'])} | {fmt(tr['localized box'])} | {fmt(te['true box'])} | "
                  f"{fmt(te['localized box'])} |")
        best = max(methods, key=lambda m: masks["train"][m]["localized box"] or 0)
        print(f"\nbest on the train split (localized box): {best}")
        masks["best_on_train"] = best
    if a.figure and locs:  # the first and the last localizer side by side
        pick = [0, len(locs) - 1] if len(locs) > 1 else [0]
        figure([locs[i] for i in pick], [rows[1 + i]["name"] for i in pick], test, a.figure)
    out = {"data": a.data, "split": a.split, "photos": len(test), "baseline_rel_size": rel, "rows": rows,
           "masks": masks,
           "seconds": round(time.time() - t0, 1), "command": "python -m fos.localize.evaluate " + " ".join(a.argv)}
    if a.json:
        cli.write_json(a.json, out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fos.localize.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", action="append", required=True, help="localizer weights; repeat to compare")
    p.add_argument("--data", action="append", default=None, help="FOSD root(s) with photos/ (default msrc-fos)")
    p.add_argument("--mask-methods", type=lambda s: [m for m in s.split(",") if m], default=list(METHODS),
                   help=f"box-to-mask methods to compare (default {','.join(METHODS)}; empty to skip)")
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="photos to score (train: for choosing among variants without looking at test)")
    p.add_argument("--limit", type=cli.nonneg_int, default=0, help="only the first N photos of each split (0: all)")
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument("--figure", default=None, help="also draw photos, CAMs, boxes and cutouts into this PNG")
    cli.add_threads(p)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def go(a) -> int:
        a.data = a.data or ["../shared/data/msrc-fos"]
        a.argv = argv
        for m in a.mask_methods:
            if m not in METHODS:
                raise InputError(f"unknown mask method {m!r}; choose from {list(METHODS)}")
        return run(a)

    return cli.run(go, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
