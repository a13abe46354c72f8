"""Foreground library on disk: ``python -m fos.library build|add|info --src SRC --out LIB``.

The student's foreground encoder runs once per item (batched); the library stores, per item, the
L2-normalized embedding (prefilter) and the head-ready feature map (the foreground half of the head's
first conv, so a query only adds the background half), both float16, plus a copy of the cutout (and
its mask) so that composites and the teacher rerank need nothing outside the library.

Layout::

    LIB/library.json          weights hash, model config, dims, item count, shards
    LIB/shards/NNNNN.json     items of a shard: id, category, file, mask, source, width, height, sha256
    LIB/shards/NNNNN.emb.npy  (n, E) float16      LIB/shards/NNNNN.fmap.npy  (n, D, a, a) float16
    LIB/files/<sha256>.<ext>  the cutouts (and masks), by content

``build`` and ``add`` stage their work in ``LIB/.pending/`` one batch at a time and commit it only at
the end, so an interrupted run resumes from its last batch (rerun the same command) and a failed run
leaves the library as it was. Nothing here deletes a library.

Sources (same for build and add): a folder of cutouts organised by category folders
(``SRC/<category>/<name>.png``: PNG with alpha, or object on white with an optional
``<name>.mask.png``), a CSV (header ``path,category[,mask]``) or JSON list of ``{"path", "category"}``,
or a FOSD-format dataset root (``train/fg`` and/or ``test/fg``; items keep their FOSD names as ids).
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from fos.checkpoint import atomic_write, atomic_write_json
from fos.data import DatasetError, read_json
from fos.preprocess import COLOUR_DIM, InputError, foreground_colour, foreground_mask, load_image
from fos.scoring import Scoring

log = logging.getLogger("fos.library")
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BATCH = 32  # items encoded, staged and resumable at a time
SHARD = 1024  # items per committed shard
VERSION = 2  # 2: cutouts copied into LIB/files; 1: absolute source paths (still readable)


class LibraryError(ValueError):
    """A missing, corrupt or mismatched library, or bad library sources."""


@dataclass
class SourceItem:
    id: str
    category: str
    path: str
    mask: str | None = None
    provenance: dict | None = None  # where a grown cutout came from (photo, box, mask method, score)


# --------------------------------------------------------------------------- sources
def _fosd_items(root: str) -> list[SourceItem]:
    items: dict[str, SourceItem] = {}
    train_json = os.path.join(root, "train", "labels")
    for labels in ("train_sfosd.json", "train_rfosd.json"):
        p = os.path.join(train_json, labels)
        if os.path.exists(p):
            for name, e in read_json(p).items():
                if not isinstance(e, dict) or "class" not in e:
                    raise DatasetError(f"{p}: entry {name!r}: missing 'class'")
                items.setdefault(name, SourceItem(name, e["class"], os.path.join(root, "train", "fg", name)))
            break
    for labels in ("test_set1.json", "test.json"):
        p = os.path.join(root, "test", "labels", labels)
        if os.path.exists(p):
            for cat, e in read_json(p).items():
                if not isinstance(e, dict) or not isinstance(e.get("fg"), list):
                    raise DatasetError(f"{p}: class {cat!r}: expected {{\"fg\": [file, ...]}}")
                for name in e["fg"]:
                    key = name if name not in items else f"test/{name}"
                    items[key] = SourceItem(key, cat, os.path.join(root, "test", "fg", name), None)
            break
    p = os.path.join(root, "test", "labels", "test_set2.json")
    if os.path.exists(p):
        for cat, bgs in read_json(p).items():
            for _, (_, labels) in bgs.items():
                for name in labels:
                    if name not in items and f"test/{name}" not in items:
                        items[name] = SourceItem(name, cat, os.path.join(root, "test", "fg", name), None)
    if not items:
        raise LibraryError(f"{root}: a FOSD dataset root needs train/labels/train_sfosd.json or test/labels/test_set1.json")
    return list(items.values())


def _folder_items(src: str) -> list[SourceItem]:
    items = []
    for cat in sorted(os.listdir(src)):
        d = os.path.join(src, cat)
        if not os.path.isdir(d) or cat.startswith("."):
            continue
        for f in sorted(os.listdir(d)):
            stem, ext = os.path.splitext(f)
            if ext.lower() not in IMAGE_EXT or stem.endswith(".mask"):
                continue
            mask = os.path.join(d, stem + ".mask.png")
            items.append(SourceItem(f"{cat}/{stem}", cat, os.path.join(d, f), mask if os.path.exists(mask) else None))
    if not items:
        raise LibraryError(f"{src}: no images found in category folders (expected {src}/<category>/<name>.png)")
    return items


def _table_items(src: str) -> list[SourceItem]:
    base = os.path.dirname(os.path.abspath(src))
    rows = []
    if src.endswith(".json"):
        data = read_json(src)
        if not isinstance(data, list):
            raise LibraryError(f"{src}: expected a list of {{\"path\": ..., \"category\": ...}}")
        rows = data
    else:
        with open(src, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "category"} <= set(reader.fieldnames):
                raise LibraryError(f"{src}: the CSV needs a header with the columns path,category (got {reader.fieldnames})")
            rows = list(reader)
    if not rows:
        raise LibraryError(f"{src} lists no items (it needs rows of path,category)")
    items = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not r.get("path") or not r.get("category"):
            raise LibraryError(f"{src}: row {i + 1} needs a path and a category, got {r!r}")
        path = r["path"] if os.path.isabs(r["path"]) else os.path.join(base, r["path"])
        mask = r.get("mask") or None
        if mask and not os.path.isabs(mask):
            mask = os.path.join(base, mask)
        items.append(SourceItem(r.get("id") or f"{r['category']}/{os.path.splitext(os.path.basename(path))[0]}",
                                r["category"], path, mask, r.get("provenance")))
    return items


def read_sources(src: str) -> list[SourceItem]:
    """Items of a source: FOSD dataset root, folder of category folders, CSV or JSON table."""
    if not os.path.exists(src):
        raise LibraryError(f"source {src} does not exist")
    if os.path.isfile(src):
        return _table_items(src)
    if os.path.isdir(os.path.join(src, "train")) or os.path.isdir(os.path.join(src, "test")):
        return _fosd_items(src)
    return _folder_items(src)


# --------------------------------------------------------------------------- library
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
                shard_items, emb, fmap = _read_arrays(base)
                items += shard_items
                embs.append(emb)
                fmaps.append(fmap)
            count, wsha = self.meta["count"], self.meta["weights_sha256"]
        except LibraryError as e:
            raise LibraryError(f"library {root} is corrupt: {e}; {rebuild}") from None
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise LibraryError(f"library {root} is corrupt or incomplete ({type(e).__name__}: {e}); {rebuild}") from e
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
    def from_arrays(cls, items: list[dict], emb: np.ndarray, fmap: np.ndarray, meta: dict, root: str = "<memory>"):
        """An in-memory library (items with absolute ``path``), e.g. for a benchmark's synthetic items."""
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
        """The cutout file of item ``i`` (inside the library for libraries of version 2)."""
        it = self.items[i]
        return os.path.join(self.root, it["file"]) if "file" in it else it["path"]

    def mask_path(self, i: int) -> str | None:
        it = self.items[i]
        if it.get("mask_file"):
            return os.path.join(self.root, it["mask_file"])
        return it.get("mask")

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


def _store_file(lib_root: str, path: str) -> tuple[str, str]:
    """Copy ``path`` into ``LIB/files/<sha256><ext>`` (once per content), reading it once; returns
    (path relative to LIB, sha256)."""
    with open(path, "rb") as f:
        data = f.read()
    sha = hashlib.sha256(data).hexdigest()
    rel = os.path.join("files", sha + os.path.splitext(path)[1].lower())
    dst = os.path.join(lib_root, rel)
    if not os.path.exists(dst):
        atomic_write(dst, lambda f: f.write(data))
    return rel, sha


def encode_items(backend, items: list[SourceItem], lib_root: str, progress: bool = False):
    """Encode items and copy their files into ``lib_root``; returns (kept item dicts, emb (n,E) f16,
    fmap (n,D,a,a) f16, failures [(path, reason)])."""
    scoring = Scoring(backend)
    kept, images, failed = [], [], []
    for it in tqdm(items, desc="read cutouts", unit="item", disable=not progress, leave=False):
        try:
            img = load_image(it.path, "RGBA", scoring.pcfg, what="foreground")
            if not foreground_mask(img, it.mask).any():
                raise InputError("no object pixels (all white or transparent)")
            rel, sha = _store_file(lib_root, it.path)
            entry = {"id": it.id, "category": it.category, "file": rel,
                     "source": os.path.abspath(it.path), "width": img.width, "height": img.height, "sha256": sha,
                     "mask_file": _store_file(lib_root, it.mask)[0] if it.mask else None,
                     "colour": [round(float(v), 6) for v in foreground_colour(img, it.mask)]}
            if it.provenance:
                entry["provenance"] = it.provenance
            kept.append(entry)
            images.append(img)
        except (InputError, OSError) as e:
            failed.append((it.path, str(e)))
    if not kept:
        return [], None, None, failed
    fmap, emb = scoring.encode_foregrounds(images)
    check_finite(f"the features that {getattr(backend, 'description', 'the backend')} computed", emb, fmap,
                 [it["id"] for it in kept])
    return kept, emb, fmap, failed


def _write_arrays(base: str, items, emb, fmap) -> None:
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


def _read_arrays(base: str):
    """A shard or staged part: (items, emb, fmap), checked for length and finite values."""
    with open(base + ".json", encoding="utf-8") as f:
        items = json.load(f)
    emb, fmap = np.load(base + ".emb.npy"), np.load(base + ".fmap.npy")
    name = f"shard {os.path.basename(base)}"
    if not (len(items) == len(emb) == len(fmap)):
        raise LibraryError(f"{name} has {len(items)} items, {len(emb)} embeddings and {len(fmap)} feature maps")
    check_finite(name, emb, fmap, [it.get("id") if isinstance(it, dict) else None for it in items])
    return items, emb, fmap


def write_library(backend, src: str, out: str, mode: str = "build", batch_size: int = BATCH,
                  progress: bool = True) -> dict:
    """Build (``mode="build"``, the library must not exist yet unless resuming) or extend (``"add"``) a library.

    ``backend``: a :class:`fos.runtime.Backend`; the library records its student weights' sha256.
    Work is staged in ``out/.pending`` one batch at a time: rerunning an interrupted call resumes it.
    """
    meta_path = os.path.join(out, "library.json")
    wsha = backend.student_sha256
    if not wsha:
        raise LibraryError("the backend does not identify its student weights (no sha256); cannot build a library")
    if mode == "build" and os.path.exists(meta_path):
        raise LibraryError(f"{out} already holds a library; use `add` to extend it, or choose a new --out")
    if mode == "build" and os.path.isdir(out) and not os.path.isdir(os.path.join(out, ".pending")) \
            and [f for f in os.listdir(out) if not f.startswith(".pending")]:
        raise LibraryError(f"{out} exists and is not empty; choose a new --out (nothing there is overwritten)")
    if mode == "add":
        lib = Library(out)
        lib.check_weights(wsha)
        meta = lib.meta
        existing = set(lib.ids)
    else:
        meta = {"version": VERSION, "weights": getattr(backend, "weights", ""), "weights_sha256": wsha,
                "embed_dim": None, "fmap_shape": None, "dtype": "float16", "count": 0, "shards": []}
        existing = set()
    items = read_sources(src)
    dup = [it.id for it in items if it.id in existing]
    if dup:
        log.warning("%d items are already in the library and are skipped (e.g. %s)", len(dup), dup[:3])
    items = [it for it in items if it.id not in existing]
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise LibraryError(f"{src}: item id {it.id!r} appears twice")
        seen.add(it.id)
    pending = os.path.join(out, ".pending")
    state_path = os.path.join(pending, "state.json")
    state = {"weights_sha256": wsha, "src": os.path.abspath(src), "mode": mode, "done": [], "failed": [], "parts": []}
    if os.path.exists(state_path):
        with open(state_path, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("weights_sha256") == wsha and old.get("src") == state["src"] and old.get("mode") == mode \
                and "parts" in old:
            state = old
            log.info("resuming: %d items already encoded in %s", len(state["done"]), pending)
        else:
            shutil.rmtree(pending)  # staged work of another command: ours to discard, never committed
    done = set(state["done"])
    failed_paths = {f[0] for f in state["failed"]}
    todo = [it for it in items if it.id not in done and it.path not in failed_paths]
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"library {mode}", unit="item",
               disable=not progress, dynamic_ncols=True)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        kept, emb, fmap, failed = encode_items(backend, chunk, out)
        if kept:
            name = f"part{len(state['parts']):06d}"
            _write_arrays(os.path.join(pending, name), kept, emb, fmap)
            state["parts"].append(name)
        state["done"] += [it["id"] for it in kept]
        state["failed"] += [list(f) for f in failed]
        atomic_write_json(state_path, state)
        bar.update(len(chunk))
    bar.close()
    if not state["parts"] and not meta["count"]:
        reasons = "; ".join(f"{p}: {r}" for p, r in state["failed"][:5]) or "no items"
        raise LibraryError(f"no usable foreground in {src}: {reasons}")
    # commit: merge the staged parts into shards of up to SHARD items, then rewrite library.json atomically
    shards_dir = os.path.join(out, "shards")
    new_shards: list[str] = []
    parts = [_read_arrays(os.path.join(pending, name)) for name in state["parts"]]
    for s in range(0, len(parts), max(1, SHARD // batch_size)):
        group = parts[s:s + max(1, SHARD // batch_size)]
        name = f"{len(meta['shards']) + len(new_shards):05d}"
        _write_arrays(os.path.join(shards_dir, name), [it for g in group for it in g[0]],
                      np.concatenate([g[1] for g in group]), np.concatenate([g[2] for g in group]))
        new_shards.append(name)
    if parts:
        meta["embed_dim"] = int(parts[0][1].shape[1])
        meta["fmap_shape"] = list(parts[0][2].shape[1:])
    meta["shards"] = meta["shards"] + new_shards
    meta["count"] = meta["count"] + sum(len(g[0]) for g in parts)
    atomic_write_json(meta_path, meta)
    shutil.rmtree(pending, ignore_errors=True)
    return {"added": len(state["done"]), "failed": state["failed"], "count": meta["count"], "library": out}
