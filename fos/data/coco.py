"""COCO instance segmentation -> the FOSD layout that training and evaluation read.

``python -m fos.data from-coco --images DIR --annotations instances.json --out ROOT`` (see
:func:`convert`). Every kept instance becomes, as in FOSD and msrc-fos, one name ``<photo stem>_<ann id>.jpg``
that is both a query background (the photo with the instance's pixel box filled gray 128) and a
cutout (the photo cropped to that box, pixels outside the mask white), plus its mask at photo size.

Split by photo (every instance of a photo lands in the same split): a photo is in ``test`` when
``crc32("<seed>:<file name>") % 10000 < test_fraction * 10000``, so the split of a photo never depends
on which other photos are in the file. Crowd, tiny, degenerate and unusable instances are skipped and
counted by reason. The output folder is written beside ``ROOT`` and renamed into place at the end: a
failed conversion leaves no half-written dataset.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import zlib
from collections import Counter

import numpy as np
from PIL import Image
from tqdm import tqdm

from fos.data.fosd import DatasetError, mask_path, read_json

log = logging.getLogger("fos.data.coco")
MAX_DISSIMILARS = 20
MIN_PER_CLASS = 2  # a class needs this many instances in a split (a query and at least one other cutout)


def norm_coord(v: int, size: int) -> float:
    """``v / size`` raised by at most a few ulps so that FOSD's ``int(x * size)`` gives back ``v`` exactly."""
    x = v / size
    while int(x * size) < v:
        x = float(np.nextafter(x, 2.0))
    return min(x, 1.0) if v == size else x


def decode_mask(seg, h: int, w: int) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) -> bool (h, w)."""
    import warnings

    from pycocotools import mask as mask_utils

    with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword deprecation, once per call
        warnings.simplefilter("ignore", DeprecationWarning)
        return _decode(mask_utils, seg, h, w)


def _decode(mask_utils, seg, h: int, w: int) -> np.ndarray:
    if isinstance(seg, list):  # polygons
        polys = [p for p in seg if isinstance(p, list) and len(p) >= 6]
        if not polys:
            raise ValueError("no polygon with at least 3 points")
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [h, w]:
            raise ValueError(f"mask size {seg['size']} is not the photo's {[h, w]}")
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
    else:
        raise ValueError("segmentation is neither polygons nor RLE")
    return mask_utils.decode(rle).astype(bool)


def photo_split(file_name: str, test_fraction: float, seed: int) -> str:
    return "test" if zlib.crc32(f"{seed}:{file_name}".encode()) % 10000 < test_fraction * 10000 else "train"


def convert(images: str, annotations: str, out: str, split: str | None = None, test_fraction: float = 0.25,
            min_area_frac: float = 0.02, min_side: int = 24, seed: int = 0, progress: bool = True) -> dict:
    """Convert; returns {"train": n, "test": n, "skipped": {reason: n}, "classes": {...}}."""
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise DatasetError(f"{out} exists and is not empty; choose a new --out (nothing there is overwritten)")
    if split not in (None, "train", "test"):
        raise DatasetError(f"--split must be train or test, got {split!r}")
    if not 0 <= test_fraction <= 1:
        raise DatasetError(f"--test-fraction must be in [0, 1], got {test_fraction}")
    if not os.path.isdir(images):
        raise DatasetError(f"{images}: images folder not found")
    coco = read_json(annotations)
    try:
        cats = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
        photos = {int(im["id"]): im for im in coco["images"]}
        anns = list(coco["annotations"])
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{annotations}: not a COCO instances file (needs images, annotations and categories "
                           f"with ids; {type(e).__name__}: {e})") from e
    skipped: Counter = Counter()
    kept: dict[str, list[dict]] = {"train": [], "test": []}
    by_photo: dict[int, list[dict]] = {}
    for a in anns:
        try:
            by_photo.setdefault(int(a["image_id"]), []).append(a)
        except (KeyError, TypeError, ValueError):
            skipped["malformed annotation"] += 1
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)  # a fresh clone has no runs/ yet
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(os.path.abspath(out)) + "-",
                           dir=os.path.dirname(os.path.abspath(out)) or ".")
    try:
        for image_id in tqdm(sorted(by_photo), desc="convert photos", unit="photo", disable=not progress):
            im = photos.get(image_id)
            if im is None:
                skipped["unknown image id"] += len(by_photo[image_id])
                continue
            path = os.path.join(images, str(im.get("file_name", "")))
            try:
                photo = Image.open(path)
                photo.load()
                photo = photo.convert("RGB")
            except (OSError, ValueError):
                skipped["missing or unreadable photo"] += len(by_photo[image_id])
                continue
            w, h = photo.size
            part = split or photo_split(os.path.basename(path), test_fraction, seed)
            stem = os.path.splitext(os.path.basename(path))[0]
            used = False
            for a in by_photo[image_id]:
                cat = cats.get(a.get("category_id"))
                if cat is None:
                    skipped["unknown category id"] += 1
                    continue
                if a.get("iscrowd"):
                    skipped["crowd"] += 1
                    continue
                try:
                    m = decode_mask(a.get("segmentation"), h, w)
                except (ValueError, TypeError, KeyError) as e:
                    skipped["unusable segmentation"] += 1
                    log.debug("annotation %s: %s", a.get("id"), e)
                    continue
                if not m.any():
                    skipped["empty mask"] += 1
                    continue
                ys, xs = np.nonzero(m)
                x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
                if m.sum() < min_area_frac * w * h or min(x2 - x1, y2 - y1) < min_side:
                    skipped["tiny"] += 1
                    continue
                if (x2 - x1) * (y2 - y1) >= 0.98 * w * h:
                    skipped["box covers the photo"] += 1
                    continue
                name = f"{stem}_{a.get('id')}.jpg"
                _write_instance(tmp, part, name, photo, m, (x1, y1, x2, y2))
                kept[part].append({"name": name, "class": cat, "photo": stem,
                                   "bbox": [norm_coord(x1, w), norm_coord(y1, h), norm_coord(x2, w), norm_coord(y2, h)]})
                used = True
            if used:
                os.makedirs(os.path.join(tmp, "photos"), exist_ok=True)
                photo.save(os.path.join(tmp, "photos", stem + ".jpg"), quality=92)
        for part in ("train", "test"):
            counts = Counter(k["class"] for k in kept[part])
            rare = [k for k in kept[part] if counts[k["class"]] < MIN_PER_CLASS]
            for k in rare:
                skipped[f"class with fewer than {MIN_PER_CLASS} instances in {part}"] += 1
                for sub in ("bg" if part == "train" else "bg_set1", "fg"):
                    os.unlink(os.path.join(tmp, part, sub, k["name"]))
                os.unlink(mask_path(tmp, part, k["name"]))
            kept[part] = [k for k in kept[part] if counts[k["class"]] >= MIN_PER_CLASS]
        if not kept["train"] and not kept["test"]:
            raise DatasetError(f"no instance of {annotations} was kept (skipped: {dict(skipped)}); "
                               "lower --min-area-frac or --min-side")
        _write_labels(tmp, kept, seed)
        with open(os.path.join(tmp, "SOURCE.json"), "w", encoding="utf-8") as f:
            json.dump({"annotations": os.path.abspath(annotations), "images": os.path.abspath(images),
                       "split": split or f"by photo, test fraction {test_fraction}, seed {seed}",
                       "min_area_frac": min_area_frac, "min_side": min_side, "skipped": dict(skipped)}, f, indent=1)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"train": len(kept["train"]), "test": len(kept["test"]), "skipped": dict(skipped),
            "classes": {p: dict(Counter(k["class"] for k in kept[p])) for p in kept}}


def _write_instance(root: str, part: str, name: str, photo: Image.Image, m: np.ndarray, box) -> None:
    x1, y1, x2, y2 = box
    arr = np.asarray(photo)
    bg = arr.copy()
    bg[y1:y2, x1:x2] = 128
    fg = arr[y1:y2, x1:x2].copy()
    fg[~m[y1:y2, x1:x2]] = 255
    bg_dir = os.path.join(root, part, "bg" if part == "train" else "bg_set1")
    fg_dir = os.path.join(root, part, "fg")
    for d in (bg_dir, fg_dir):
        os.makedirs(d, exist_ok=True)
    Image.fromarray(bg).save(os.path.join(bg_dir, name), quality=90)
    Image.fromarray(fg).save(os.path.join(fg_dir, name), quality=95)
    mp = mask_path(root, part, name)
    os.makedirs(os.path.dirname(mp), exist_ok=True)
    Image.fromarray((m * 255).astype(np.uint8)).save(mp)


def _write_labels(root: str, kept: dict[str, list[dict]], seed: int) -> None:
    rng = random.Random(seed)
    if kept["train"]:
        labels = os.path.join(root, "train", "labels")
        os.makedirs(labels, exist_ok=True)
        by_class: dict[str, list[dict]] = {}
        for k in kept["train"]:
            by_class.setdefault(k["class"], []).append(k)
        anno = {}
        for k in kept["train"]:
            others = [o["name"] for o in by_class[k["class"]] if o["photo"] != k["photo"]]
            anno[k["name"]] = {"bbox": k["bbox"], "class": k["class"], "similars": [],
                               "dissimilars": rng.sample(others, min(MAX_DISSIMILARS, len(others)))}
        with open(os.path.join(labels, "train_sfosd.json"), "w", encoding="utf-8") as f:
            json.dump(anno, f)
        with open(os.path.join(labels, "category.json"), "w", encoding="utf-8") as f:
            json.dump({c: {"images": [k["name"] for k in ks]} for c, ks in sorted(by_class.items())}, f)
        with open(os.path.join(labels, "number_per_category.csv"), "w", encoding="utf-8") as f:
            f.write("class,count\n" + "".join(f"{c},{len(ks)}\n" for c, ks in sorted(by_class.items())))
    if kept["test"]:
        labels = os.path.join(root, "test", "labels")
        os.makedirs(labels, exist_ok=True)
        test: dict[str, dict] = {}
        for k in kept["test"]:
            e = test.setdefault(k["class"], {"bg": [], "fg": []})
            e["bg"].append([k["name"], k["bbox"]])
            e["fg"].append(k["name"])
        with open(os.path.join(labels, "test_set1.json"), "w", encoding="utf-8") as f:
            json.dump(dict(sorted(test.items())), f)
