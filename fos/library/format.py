"""The library on disk and its reader: no model, no backend (the builder is :mod:`fos.library.build`).

Layout::

    LIB/library.json          version, weights hash, model config, dims, item count, shards
    LIB/shards/NNNNN.json     items of a shard: id, category, file, mask_file, source, width, height, sha256, colour
    LIB/shards/NNNNN.emb.npy  (n, E) float16      LIB/shards/NNNNN.fmap.npy  (n, D, a, a) float16
    LIB/files/<sha256>.<ext>  the cutouts (and masks), by content
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

from fos.checkpoint import atomic_write, atomic_write_json
from fos.errors import LibraryError
from fos.preprocess import COLOUR_DIM, foreground_colour, load_image

log = logging.getLogger("fos.library")
VERSION = 2  # cutouts copied into LIB/files
SHARD = 1024  # items per committed shard
__all__ = ["SHARD", "VERSION", "Library", "LibraryError", "check_finite", "read_arrays", "write_arrays"]


class Library:
    """A built library, loaded into memory (float16 arrays). Refuses a corrupt one, never changes it."""

    def __init__(self, root: str):
        self.root = root
        meta_path = os.path.join(root, "library.json")
        rebuild = "rebuild it with `python -m fos.library build --src SRC --out NEW_FOLDER`"
        if not os.path.isfile(meta_path):
            if os.path.isdir(os.path.join(root, ".pending")):
                raise LibraryError(f"{root} holds an interrupted build (no library.json yet, its work is staged in "
                                   f"{os.path.join(root, '.pending')}): run the same `python -m fos.library build "
                                   f"--src SRC --out {root}` again to resume it")
            raise LibraryError(f"{root} is not a foreground library (no library.json); build one with "
                               "`python -m fos.library build --src DIR --out LIB`")
        try:
            with open(meta_path, encoding="utf-8") as f:
                self.meta = json.load(f)
            items, embs, fmaps = [], [], []
            for shard in self.meta["shards"]:
                base = os.path.join(root, "shards", shard)
                shard_items, emb, fmap = read_arrays(base)
                items += shard_items
                embs.append(emb)
                fmaps.append(fmap)
            count, wsha = self.meta["count"], self.meta["weights_sha256"]
        except LibraryError as e:
            raise LibraryError(f"library {root} is corrupt: {e}; {rebuild}") from None
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise LibraryError(f"library {root} is corrupt or incomplete ({type(e).__name__}: {e}); {rebuild}") from e
        if self.meta.get("version") != VERSION or not all(isinstance(it, dict) and "file" in it for it in items):
            raise LibraryError(f"library {root} is a version {self.meta.get('version')} library; this fos reads "
                               f"version {VERSION} (a copy of every cutout inside the library): {rebuild}")
        self.items = items
        self.emb = np.concatenate(embs) if embs else np.zeros((0, self.meta.get("embed_dim") or 0), np.float16)
        self.fmap = np.concatenate(fmaps) if fmaps else np.zeros((0, *(self.meta.get("fmap_shape") or [0])), np.float16)
        if len(items) != len(self.emb) or len(items) != len(self.fmap) or len(items) != count or not wsha:
            raise LibraryError(f"library {root} is corrupt: {len(items)} items, {len(self.emb)} embeddings, "
                               f"{len(self.fmap)} feature maps, {count} expected; {rebuild}")
        missing = [p for p in (self.path(i) for i in range(len(items))) if not os.path.isfile(p)]
        if missing:
            raise LibraryError(f"library {root} lacks {len(missing)} of its cutout files (e.g. {missing[0]}): "
                               f"the library or its sources were moved or deleted; {rebuild}")
        self._index()

    @classmethod
    def from_arrays(cls, items: list[dict], emb: np.ndarray, fmap: np.ndarray, meta: dict, root: str):
        """An in-memory library whose items' files are in the library ``root``, e.g. a benchmark's
        synthetic items made from a real library's."""
        lib = cls.__new__(cls)
        lib.root, lib.items, lib.emb, lib.fmap, lib.meta = root, items, emb, fmap, meta
        lib._index()
        return lib

    def _index(self) -> None:
        self.categories = np.array([it["category"] for it in self.items])
        self.ids = [it["id"] for it in self.items]
        self.sizes = np.array([[it["width"], it["height"]] for it in self.items], dtype=np.float64).reshape(-1, 2)
        missing = [i for i, it in enumerate(self.items) if "colour" not in it]
        if missing:  # a library built before colour statistics were stored: compute them from its cutout files
            log.warning("library %s predates stored colour statistics: computing them from %d cutout files "
                        "(rebuild it to store them)", self.root, len(missing))
            for i in missing:
                self.items[i]["colour"] = foreground_colour(
                    load_image(self.path(i), "RGBA", what="foreground"), self.mask_path(i)).tolist()
        self.colour = np.array([it["colour"] for it in self.items], dtype=np.float32).reshape(-1, COLOUR_DIM)

    def __len__(self) -> int:
        return len(self.items)

    def path(self, i: int) -> str:
        """The cutout file of item ``i`` (a copy inside the library)."""
        return os.path.join(self.root, self.items[i]["file"])

    def mask_path(self, i: int) -> str | None:
        """The mask file of item ``i``, None when its cutout carries its own shape."""
        m = self.items[i].get("mask_file")
        return os.path.join(self.root, m) if m else None

    def category_names(self) -> list[str]:
        return sorted(set(self.categories.tolist()))

    def indices(self, category: str) -> np.ndarray:
        idx = np.nonzero(self.categories == category)[0]
        if len(idx) == 0:
            known = self.category_names()
            raise LibraryError(f"category {category!r} has no items in the library; choose one of {known}")
        return idx

    def check_weights(self, weights_sha256: str) -> None:
        if self.meta["weights_sha256"] != weights_sha256:
            raise LibraryError(
                f"library {self.root} was built with other weights ({self.meta.get('weights', '?')}, sha256 "
                f"{self.meta['weights_sha256'][:12]}...) than the ones loaded (sha256 {weights_sha256[:12]}...): "
                "use the weights it was built with, or build a new library from its sources with the current "
                "weights (`python -m fos.library build --src SRC --out NEW_FOLDER`)")


def write_arrays(base: str, items, emb, fmap) -> None:
    for suffix, arr in ((".emb.npy", emb), (".fmap.npy", fmap)):
        atomic_write(base + suffix, lambda f, arr=arr: np.save(f, arr))
    atomic_write_json(base + ".json", items)  # written last: a part exists once its json does


def check_finite(what: str, emb: np.ndarray, fmap: np.ndarray, ids) -> None:
    """Refuse features with NaN or infinity (they would rank in file order with every score NaN)."""
    bad = ~(np.isfinite(emb).reshape(len(emb), -1).all(1) & np.isfinite(fmap).reshape(len(fmap), -1).all(1))
    if bad.any():
        names = [ids[i] for i in np.nonzero(bad)[0][:3]] if len(ids) == len(bad) else []
        raise LibraryError(f"{what} holds non-finite features (NaN or infinity) for {int(bad.sum())} of {len(bad)} "
                           f"items{' (e.g. ' + ', '.join(map(str, names)) + ')' if names else ''}")


def read_arrays(base: str):
    """A shard or staged part: (items, emb, fmap), checked for length and finite values."""
    with open(base + ".json", encoding="utf-8") as f:
        items = json.load(f)
    emb, fmap = np.load(base + ".emb.npy"), np.load(base + ".fmap.npy")
    name = f"shard {os.path.basename(base)}"
    if not (len(items) == len(emb) == len(fmap)):
        raise LibraryError(f"{name} has {len(items)} items, {len(emb)} embeddings and {len(fmap)} feature maps")
    check_finite(name, emb, fmap, [it.get("id") if isinstance(it, dict) else None for it in items])
    return items, emb, fmap
