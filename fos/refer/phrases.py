"""Referring phrases written from instance masks: the text side of :mod:`fos.refer`'s training data.

The masks only *write the text*; the loss never sees a mask. For every instance covering at least
:data:`MIN_AREA` of its photo, the attributes are read off its mask against the photo:

* **location**, from the mask's centroid: horizontal ``on the left`` (x < W/3), ``on the right``
  (x > 2W/3), else ``in the middle``; vertical ``at the top`` (y < H/3), ``at the bottom`` (y > 2H/3);
* **size**: ``big`` (mask at least 15 % of the photo) or ``small`` (at most 3 %);
* **colour**: the most frequent of the 11 basic colour terms over the mask's pixels (nearest prototype
  in CIELAB, :data:`COLOURS`).

The phrase forms (:func:`instance_phrases`) are ``dog``, ``dog on the left``, ``dog at the bottom``,
``the big dog``, ``white dog``, ``white dog on the left`` and ``the small white dog at the bottom``;
"the" is optional (on for about half of them, by a hash of photo and phrase, so the data is fixed).

A phrase *holds* in a photo when some instance of its category has all its attributes; the training
labels are that relation (:func:`holds`). Negatives (:func:`negative_phrases`) are phrases of a
category the photo shows with an attribute no instance of it has: without them, "on the left" could
not be learned. A phrase is *unique* when exactly one instance of its category in the photo has its
attributes; only unique phrases are scored by :mod:`fos.refer.evaluate` (an ambiguous phrase has
several right answers).

Category words are the dataset's names, with ``person`` for MSRC's ``body`` and COCO's ``person``
(:func:`fos.vocab.phrase_word`); :func:`parse` maps a typed phrase back to its category and attributes.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field

import cv2
import numpy as np

from fos.vocab import phrase_word, typed_word

MIN_AREA = 0.02  # instances smaller than this share of the photo get no phrase
BIG, SMALL = 0.15, 0.03
HORIZONTAL = ("on the left", "in the middle", "on the right")
VERTICAL = ("at the top", "at the bottom")
SIZES = ("big", "small")
# the 11 basic colour terms (Berlin and Kay), each with sRGB prototypes; a pixel takes the term of its
# nearest prototype in CIELAB
COLOURS: dict[str, list[tuple[int, int, int]]] = {
    "black": [(0, 0, 0), (35, 35, 35)],
    "white": [(255, 255, 255), (225, 225, 220)],
    "gray": [(90, 90, 90), (128, 128, 128), (170, 170, 170)],
    "red": [(200, 30, 30), (150, 20, 25)],
    "orange": [(240, 140, 20), (210, 110, 40)],
    "yellow": [(240, 220, 40), (220, 200, 90)],
    "green": [(40, 160, 40), (60, 100, 40), (120, 170, 90)],
    "blue": [(30, 70, 200), (70, 120, 200), (30, 40, 110)],
    "purple": [(120, 40, 150), (90, 50, 120)],
    "pink": [(240, 150, 180), (220, 100, 150)],
    "brown": [(120, 70, 30), (160, 110, 70), (80, 50, 30)],
}
COLOUR_NAMES = tuple(COLOURS)
FLIP = {"on the left": "on the right", "on the right": "on the left"}
ATTRS = ("h", "v", "size", "colour")


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.asarray(rgb, np.uint8).reshape(-1, 1, 3), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)


_PROTO_LAB = _lab(np.array([p for ps in COLOURS.values() for p in ps]))
_PROTO_TERM = np.array([i for i, ps in enumerate(COLOURS.values()) for _ in ps])


def colour_name(pixels: np.ndarray) -> str:
    """The most frequent basic colour term of RGB uint8 ``pixels`` (N, 3); ties go to the earlier term."""
    px = np.asarray(pixels, np.uint8).reshape(-1, 3)
    if not len(px):
        raise ValueError("colour_name needs at least one pixel")
    if len(px) > 20000:  # a fixed subsample: the mode of 20k pixels is the mode
        px = px[np.linspace(0, len(px) - 1, 20000).astype(np.int64)]
    d = ((_lab(px)[:, None, :] - _PROTO_LAB[None]) ** 2).sum(-1)
    terms = _PROTO_TERM[d.argmin(1)]
    return COLOUR_NAMES[int(np.bincount(terms, minlength=len(COLOURS)).argmax())]


@dataclass(frozen=True)
class Instance:
    """One object of a photo, as phrases see it."""

    category: str  # the phrase word (fos.vocab.phrase_word of the class)
    h: str
    v: str | None
    size: str | None
    colour: str
    area: float  # share of the photo
    index: int = 0  # position among the photo's instances (its mask: Photo.masks order)

    def flipped(self) -> "Instance":
        return Instance(self.category, FLIP.get(self.h, self.h), self.v, self.size, self.colour, self.area, self.index)


def describe(mask: np.ndarray, photo: np.ndarray, category: str, index: int = 0) -> Instance | None:
    """The attributes of the instance ``mask`` (bool H x W) of RGB uint8 ``photo``; None under :data:`MIN_AREA`."""
    h, w = mask.shape
    if photo.shape[:2] != mask.shape:
        raise ValueError(f"mask {w}x{h} and photo {photo.shape[1]}x{photo.shape[0]} differ in size")
    n = int(mask.sum())
    area = n / float(h * w)
    if area < MIN_AREA:
        return None
    ys, xs = np.nonzero(mask)
    cx, cy = (xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h
    hw = "on the left" if cx < 1 / 3 else "on the right" if cx > 2 / 3 else "in the middle"
    vw = "at the top" if cy < 1 / 3 else "at the bottom" if cy > 2 / 3 else None
    size = "big" if area >= BIG else "small" if area <= SMALL else None
    return Instance(phrase_word(category), hw, vw, size, colour_name(photo[mask]), area, index)


@dataclass(frozen=True)
class Phrase:
    category: str
    attrs: tuple[tuple[str, str], ...] = ()  # sorted (name, value) pairs, names from ATTRS
    the: bool = False

    @property
    def text(self) -> str:
        a = dict(self.attrs)
        words = (["the"] if self.the else []) + [a[k] for k in ("size", "colour") if k in a] + [self.category]
        words += [a[k] for k in ("h", "v") if k in a]
        return " ".join(words)

    @property
    def key(self) -> tuple:
        """What the phrase says, "the" aside."""
        return self.category, self.attrs

    def fits(self, inst: Instance) -> bool:
        return inst.category == self.category and all(getattr(inst, k) == v for k, v in self.attrs)

    def flipped(self) -> "Phrase":
        return Phrase(self.category, tuple(sorted((k, FLIP.get(v, v)) for k, v in self.attrs)), self.the)


def phrase(category: str, the: bool = False, **attrs) -> Phrase:
    bad = set(attrs) - set(ATTRS)
    if bad:
        raise ValueError(f"unknown phrase attributes {sorted(bad)}; use {ATTRS}")
    return Phrase(category, tuple(sorted((k, v) for k, v in attrs.items() if v is not None)), the)


def _the(seed: str) -> bool:
    return zlib.crc32(seed.encode()) % 2 == 1


def instance_phrases(inst: Instance, photo_key: str = "") -> list[Phrase]:
    """The phrase forms of one instance (duplicates dropped, in a fixed order)."""
    c = inst.category
    loc = {"v": inst.v} if inst.v else {"h": inst.h}
    forms = [{}, {"h": inst.h}, {"v": inst.v}, {"size": inst.size}, {"colour": inst.colour},
             {"colour": inst.colour, "h": inst.h}, {"size": inst.size, "colour": inst.colour, **loc}]
    out, seen = [], set()
    for f in forms:
        f = {k: v for k, v in f.items() if v is not None}
        p = phrase(c, **f)
        if p.key in seen:
            continue
        seen.add(p.key)
        out.append(Phrase(p.category, p.attrs, _the(f"{photo_key}:{p.text}")))
    return out


def is_dev(path: str, fraction: float) -> bool:
    """Whether a train photo is in the dev split: a fixed share ``fraction`` of the train photos, by a
    hash of the file name (so it does not depend on the folder a dataset sits in)."""
    return fraction > 0 and zlib.crc32(os.path.basename(path).encode()) % 10000 < round(fraction * 10000)


def holds(p: Phrase, instances: list[Instance]) -> bool:
    return any(p.fits(i) for i in instances)


def referents(p: Phrase, instances: list[Instance]) -> list[int]:
    """Positions in ``instances`` that ``p`` fits."""
    return [k for k, i in enumerate(instances) if p.fits(i)]


def negative_phrases(instances: list[Instance], photo_key: str = "") -> list[Phrase]:
    """Phrases of a category the photo shows with one attribute that no instance of that category has
    (alone, or next to the colour of one of its instances), and the colour of one instance crossed with
    the location or size of another when no instance has both; in a fixed order."""
    out, seen = [], set()
    for c in sorted({i.category for i in instances}):
        own = [i for i in instances if i.category == c]
        values = {"h": HORIZONTAL, "v": VERTICAL, "size": SIZES, "colour": COLOUR_NAMES}
        for k, vals in values.items():
            for v in vals:
                if any(getattr(i, k) == v for i in own):
                    continue
                cands = [phrase(c, **{k: v})]
                if k != "colour":
                    cands += [phrase(c, colour=i.colour, **{k: v}) for i in own]
                for p in cands:
                    if p.key not in seen and not holds(p, own):
                        seen.add(p.key)
                        out.append(Phrase(p.category, p.attrs, _the(f"{photo_key}:neg:{p.text}")))
        # two instances' attributes crossed: each holds, not together ("red cow on the right" when the
        # red cow is on the left and a blue one on the right)
        for a in own:
            for b in own:
                for k in ("h", "v", "size"):
                    if getattr(b, k) is None:
                        continue
                    p = phrase(c, colour=a.colour, **{k: getattr(b, k)})
                    if p.key not in seen and not holds(p, own):
                        seen.add(p.key)
                        out.append(Phrase(p.category, p.attrs, _the(f"{photo_key}:neg:{p.text}")))
    return out


@dataclass
class PhotoPhrases:
    """A photo's instances and phrases: what :mod:`fos.refer.train` and :mod:`fos.refer.evaluate` read."""

    path: str
    width: int
    height: int
    instances: list[Instance]
    masks: list[str] = field(default_factory=list)  # instance mask files, aligned with ``instances`` (evaluation only)

    def positives(self) -> list[Phrase]:
        out, seen = [], set()
        for inst in self.instances:
            for p in instance_phrases(inst, self.path):
                if p.key not in seen:
                    seen.add(p.key)
                    out.append(p)
        return out

    def negatives(self) -> list[Phrase]:
        return negative_phrases(self.instances, self.path)

    def flipped(self) -> "PhotoPhrases":
        return PhotoPhrases(self.path, self.width, self.height, [i.flipped() for i in self.instances], self.masks)

    def to_json(self) -> dict:
        return {"path": self.path, "width": self.width, "height": self.height, "masks": self.masks,
                "instances": [i.__dict__ for i in self.instances]}

    @classmethod
    def from_json(cls, d: dict) -> "PhotoPhrases":
        return cls(d["path"], d["width"], d["height"], [Instance(**i) for i in d["instances"]], d["masks"])


def photo_phrases(ph) -> PhotoPhrases:
    """The :class:`PhotoPhrases` of a :class:`fos.data.photos.Photo` (reads its photo and instance masks)."""
    from fos.preprocess import load_image

    img = np.asarray(load_image(ph.path, "RGB", what="photo"))
    insts, masks = [], []
    for cls in ph.labels:
        for mpath in ph.masks.get(cls, []):
            from PIL import Image

            with Image.open(mpath) as im:
                m = np.asarray(im.convert("L")) > 127
            if m.shape != img.shape[:2]:
                from fos.data import DatasetError

                raise DatasetError(f"{mpath}: mask is {m.shape[1]}x{m.shape[0]}, its photo {img.shape[1]}x{img.shape[0]}")
            d = describe(m, img, cls, len(insts))
            if d is not None:
                insts.append(d)
                masks.append(mpath)
    return PhotoPhrases(ph.path, ph.width, ph.height, insts, masks)


# --------------------------------------------------------------------------- typed phrases
def words(text: str) -> list[str]:
    return [typed_word(w) for w in "".join(ch if ch.isalnum() or ch == " " else " " for ch in
                                                text.lower()).split()]


def parse(text: str, categories: list[str]) -> tuple[Phrase | None, list[str]]:
    """(the phrase's category and attributes, the words it does not know) of a typed phrase. The
    category is the longest known category name in it (multi-word names such as "dining table"
    included); None when there is none."""
    ws = words(text)
    cats = sorted(categories, key=lambda c: -len(c.split()))
    joined = " " + " ".join(ws) + " "
    cat = next((c for c in cats if f" {c} " in joined), None)
    rest = joined.replace(f" {cat} ", " ", 1) if cat else joined
    attrs = {}
    for k, vals in (("h", HORIZONTAL), ("v", VERTICAL)):
        for v in vals:
            if f" {v} " in rest or f" {v.split()[-1]} " in rest:
                attrs[k] = v
                rest = rest.replace(f" {v} ", " ").replace(f" {v.split()[-1]} ", " ")
    for w in rest.split():
        if w in SIZES:
            attrs["size"] = w
        elif w in COLOUR_NAMES:
            attrs["colour"] = w
    known = set(SIZES) | set(COLOUR_NAMES) | {"the", "a", "on", "at", "in"}
    unknown = [w for w in rest.split() if w not in known]
    return (phrase(cat, **attrs) if cat else None), unknown
