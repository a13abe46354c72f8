"""Photos with image-level labels: what weakly supervised localization (:mod:`fos.localize`) trains on, and
the photos inpainting (:mod:`fos.inpaint`) cuts holes into.

A FOSD-layout root with a ``photos/`` folder (msrc-fos; the output of ``python -m fos.data from-coco``)
gives, per split, the photos that hold that split's instances. A photo's image-level labels are the
classes of its instances; its boxes and masks (per class) are read only for choosing thresholds on
the train split and for evaluation, never for training. Instance names are ``<photo stem>_<k>.jpg``.
Class names of COCO that MSRC spells differently are mapped (:func:`fos.vocab.photo_class`) so the roots share a vocabulary.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from fos.data.fosd import DatasetError, mask_path, query_instances, train_instances
from fos.preprocess import norm_to_pixel_box
from fos.vocab import photo_class



@dataclass
class Photo:
    path: str
    labels: list[str]  # image-level labels (sorted)
    width: int
    height: int
    boxes: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)  # class -> pixel boxes
    masks: dict[str, list[str]] = field(default_factory=dict)  # class -> instance mask files

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def gt_mask(self, cls: str) -> np.ndarray:
        """Union of the class's instance masks (bool, H x W)."""
        m = np.zeros((self.height, self.width), bool)
        for p in self.masks.get(cls, []):
            with Image.open(p) as im:
                a = np.asarray(im.convert("L")) > 127
            if a.shape != m.shape:
                raise DatasetError(f"{p}: mask is {a.shape[1]}x{a.shape[0]}, its photo {self.width}x{self.height}")
            m |= a
        return m


def _instances(root: str, split: str) -> list[tuple[str, str, list[float]]]:
    """(name, class, normalized bbox) of a split's instances (:mod:`fos.data`'s readers)."""
    if split == "test":
        return query_instances(root)
    out = train_instances(root)
    if not out:
        raise DatasetError(f"{os.path.join(root, 'train', 'labels')}: no train_sfosd.json (or train_rfosd.json); "
                           "is --data the dataset root?")
    return out


def load_photos(root: str, split: str) -> list[Photo]:
    """The photos of ``split`` ("train" or "test") of a FOSD root that has ``photos/``, sorted by name."""
    if split not in ("train", "test"):
        raise DatasetError(f"split must be train or test, got {split!r}")
    pdir = os.path.join(root, "photos")
    if not os.path.isdir(pdir):
        raise DatasetError(f"{root} has no photos/ folder: localization trains on whole photos (msrc-fos has "
                           "them; `python -m fos.data from-coco` writes them)")
    photos: dict[str, Photo] = {}
    for name, cls, nbox in _instances(root, split):
        cls = photo_class(cls)
        stem = os.path.splitext(name)[0].rsplit("_", 1)[0]
        path = os.path.join(pdir, stem + ".jpg")
        ph = photos.get(path)
        if ph is None:
            if not os.path.isfile(path):
                raise DatasetError(f"{root}: instance {name!r} has no photo {path}")
            with Image.open(path) as im:
                w, h = im.size
            ph = photos[path] = Photo(path, [], w, h)
        ph.boxes.setdefault(cls, []).append(norm_to_pixel_box(nbox, ph.width, ph.height))
        ph.masks.setdefault(cls, []).append(mask_path(root, split, name))
    for ph in photos.values():
        ph.labels = sorted(ph.boxes)
    return [photos[k] for k in sorted(photos)]


def load_photo_roots(roots: list[str], split: str) -> list[Photo]:
    out: list[Photo] = []
    for r in roots:
        out += load_photos(r, split)
    return out


def vocabulary(photos: list[Photo], min_photos: int = 1) -> list[str]:
    """Classes with at least ``min_photos`` photos, sorted."""
    counts: dict[str, int] = {}
    for ph in photos:
        for c in ph.labels:
            counts[c] = counts.get(c, 0) + 1
    return sorted(c for c, n in counts.items() if n >= min_photos)


def mean_relative_size(photos: list[Photo]) -> tuple[float, float]:
    """Mean width and height of the instance boxes relative to their photo (the no-training baseline)."""
    ws, hs = [], []
    for ph in photos:
        for boxes in ph.boxes.values():
            for x1, y1, x2, y2 in boxes:
                ws.append((x2 - x1) / ph.width)
                hs.append((y2 - y1) / ph.height)
    if not ws:
        raise DatasetError("no instance boxes to take the mean size from")
    return float(np.mean(ws)), float(np.mean(hs))
