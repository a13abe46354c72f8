"""Foreground library on disk: ``python -m fos.library build|add --src SRC --out LIB``.

The student's foreground encoder runs once per item (batched); the library stores, per item, the
L2-normalized embedding (prefilter) and the head-ready feature map (the foreground half of the head's
first conv, so a query only adds the background half), both float16, plus a manifest.

Layout::

    LIB/library.json        weights hash, model config, dims, item count
    LIB/shards/NNNNN.json   items of a shard: id, category, path, width, height, aspect, sha256, mask
    LIB/shards/NNNNN.emb.npy  (n, E) float16      LIB/shards/NNNNN.fmap.npy  (n, D, a, a) float16

``build`` and ``add`` stage new shards in ``LIB/.pending/`` and commit them only at the end, so an
interrupted run resumes from what it staged (rerun the same command) and a failed run leaves the
library as it was.

Sources (same for build and add): a folder of cutouts organised by category folders
(``SRC/<category>/<name>.png``: PNG with alpha, or object on white with an optional
``<name>.mask.png``), a CSV (header ``path,category[,mask]``) or JSON list of ``{"path", "category"}``,
or a FOSD-format dataset root (``train/fg`` and/or ``test/fg``; items keep their FOSD names as ids).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from fos.checkpoint import WeightsError, atomic_write_json, file_sha256
from fos.runtime import BackendError, get_backend
from fos.data import DatasetError, read_json
from fos.preprocess import InputError, foreground_input, foreground_mask, load_image

log = logging.getLogger("fos.library")
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SHARD = 256


class LibraryError(ValueError):
    """A missing, corrupt or mismatched library, or bad library sources."""


@dataclass
class SourceItem:
    id: str
    category: str
    path: str
    mask: str | None = None


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
    items = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not r.get("path") or not r.get("category"):
            raise LibraryError(f"{src}: row {i + 1} needs a path and a category, got {r!r}")
        path = r["path"] if os.path.isabs(r["path"]) else os.path.join(base, r["path"])
        mask = r.get("mask") or None
        if mask and not os.path.isabs(mask):
            mask = os.path.join(base, mask)
        items.append(SourceItem(r.get("id") or f"{r['category']}/{os.path.splitext(os.path.basename(path))[0]}",
                                r["category"], path, mask))
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
    """A built library, loaded into memory (float16 arrays)."""

    def __init__(self, root: str):
        self.root = root
        meta_path = os.path.join(root, "library.json")
        if not os.path.isfile(meta_path):
            raise LibraryError(f"{root} is not a foreground library (no library.json); build one with "
                               "`python -m fos.library build --src DIR --out LIB`")
        try:
            with open(meta_path, encoding="utf-8") as f:
                self.meta = json.load(f)
            items, embs, fmaps = [], [], []
            for shard in self.meta["shards"]:
                base = os.path.join(root, "shards", shard)
                with open(base + ".json", encoding="utf-8") as f:
                    items += json.load(f)
                embs.append(np.load(base + ".emb.npy"))
                fmaps.append(np.load(base + ".fmap.npy"))
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            raise LibraryError(f"library {root} is corrupt or incomplete ({type(e).__name__}: {e}); rebuild it") from e
        self.items = items
        self.emb = np.concatenate(embs) if embs else np.zeros((0, self.meta.get("embed_dim") or 0), np.float16)
        self.fmap = np.concatenate(fmaps) if fmaps else np.zeros((0, *(self.meta.get("fmap_shape") or [0])), np.float16)
        if len(self.items) != len(self.emb) or len(self.items) != len(self.fmap) or len(items) != self.meta["count"]:
            raise LibraryError(f"library {root} is corrupt: {len(items)} items, {len(self.emb)} embeddings, "
                               f"{len(self.fmap)} feature maps, {self.meta['count']} expected; rebuild it")
        self.categories = np.array([it["category"] for it in items])
        self.ids = [it["id"] for it in items]

    def __len__(self) -> int:
        return len(self.items)

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
                f"library {self.root} was built with other weights ({self.meta['weights']}, sha256 "
                f"{self.meta['weights_sha256'][:12]}...) than the ones loaded (sha256 {weights_sha256[:12]}...); "
                "rebuild it with `python -m fos.library build` using the current weights")


def encode_items(backend, items: list[SourceItem], batch_size: int = 32, progress: bool = True):
    """Encode items; returns (kept item dicts, emb (n,E) f16, fmap (n,D,a,a) f16, failures [(path, reason)])."""
    pcfg = backend.preprocess_cfg
    kept, embs, fmaps, failed = [], [], [], []
    bar = tqdm(total=len(items), desc="encode foregrounds", unit="item", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(items), batch_size):
        chunk, tensors = [], []
        for it in items[start:start + batch_size]:
            try:
                img = load_image(it.path, "RGBA", pcfg, what="foreground")
                if not foreground_mask(img, it.mask).any():
                    raise InputError("no object pixels (all white or transparent)")
                tensors.append(foreground_input(img, pcfg))
                chunk.append({"id": it.id, "category": it.category, "path": os.path.abspath(it.path),
                              "width": img.width, "height": img.height, "aspect": round(img.width / img.height, 6),
                              "sha256": file_sha256(it.path), "mask": os.path.abspath(it.mask) if it.mask else None})
            except (InputError, OSError) as e:
                failed.append((it.path, str(e)))
        if tensors:
            fg_part, emb = backend.encode_foreground(torch.stack(tensors).numpy())
            fmaps.append(fg_part.astype(np.float16))
            embs.append(emb.astype(np.float16))
            kept += chunk
        bar.update(len(items[start:start + batch_size]))
    bar.close()
    emb = np.concatenate(embs) if embs else None
    fmap = np.concatenate(fmaps) if fmaps else None
    return kept, emb, fmap, failed


def _write_shard(folder: str, name: str, items, emb, fmap) -> None:
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, name)
    for suffix, arr in ((".emb.npy", emb), (".fmap.npy", fmap)):
        tmp = base + suffix + ".tmp"
        with open(tmp, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, base + suffix)
    atomic_write_json(base + ".json", items)  # written last: a shard exists once its json does


def write_library(backend, src: str, out: str, mode: str = "build", batch_size: int = 32,
                  progress: bool = True) -> dict:
    """Build (``mode="build"``, the library must not exist yet unless resuming) or extend (``"add"``) a library.

    ``backend``: a :class:`fos.runtime.Backend`; the library records its student weights' sha256.
    """
    meta_path = os.path.join(out, "library.json")
    wsha = backend.student_sha256
    if mode == "build" and os.path.exists(meta_path):
        raise LibraryError(f"{out} already holds a library; use `add` to extend it, or choose a new --out")
    if mode == "add":
        lib = Library(out)
        lib.check_weights(wsha)
        meta = lib.meta
        existing = set(lib.ids)
    else:
        meta = {"version": 1, "weights": getattr(backend, "weights", ""), "weights_sha256": wsha,
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
    state = {"weights_sha256": wsha, "src": os.path.abspath(src), "mode": mode, "done": [], "failed": [], "shards": []}
    if os.path.exists(state_path):
        with open(state_path, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("weights_sha256") == wsha and old.get("src") == state["src"] and old.get("mode") == mode:
            state = old
            log.info("resuming: %d items already encoded in %s", len(state["done"]), pending)
        else:
            shutil.rmtree(pending)
    done = set(state["done"])
    failed_paths = {f[0] for f in state["failed"]}
    todo = [it for it in items if it.id not in done and it.path not in failed_paths]
    base_idx = len(meta["shards"]) + len(state["shards"])
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"library {mode}", unit="item",
               disable=not progress, dynamic_ncols=True)
    for i, start in enumerate(range(0, len(todo), SHARD)):
        chunk = todo[start:start + SHARD]
        kept, emb, fmap, failed = encode_items(backend, chunk, batch_size, progress=False)
        name = f"{base_idx + i:05d}"
        if kept:
            _write_shard(pending, name, kept, emb, fmap)
            state["shards"].append(name)
            meta["embed_dim"] = int(emb.shape[1])
            meta["fmap_shape"] = list(fmap.shape[1:])
        state["done"] += [it["id"] for it in kept]
        state["failed"] += [list(f) for f in failed]
        atomic_write_json(state_path, state)
        bar.update(len(chunk))
    bar.close()
    # commit: move staged shards in, then rewrite library.json atomically
    shards_dir = os.path.join(out, "shards")
    os.makedirs(shards_dir, exist_ok=True)
    for name in state["shards"]:
        for suffix in (".emb.npy", ".fmap.npy", ".json"):
            os.replace(os.path.join(pending, name + suffix), os.path.join(shards_dir, name + suffix))
    meta["shards"] = meta["shards"] + state["shards"]
    meta["count"] = meta["count"] + len(state["done"])
    if meta["embed_dim"] is None:
        raise LibraryError(f"no usable foreground in {src}: " + "; ".join(f"{p}: {r}" for p, r in state["failed"][:5]))
    atomic_write_json(meta_path, meta)
    shutil.rmtree(pending, ignore_errors=True)
    return {"added": len(state["done"]), "failed": state["failed"], "count": meta["count"], "library": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fos.library", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["build", "add", "info"])
    p.add_argument("--src", help="folder of category folders, CSV/JSON table, or FOSD dataset root")
    p.add_argument("--out", "--library", dest="out", required=True, help="library folder")
    p.add_argument("--weights", default="weights", help="folder with student.safetensors")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "tensorrt"])
    p.add_argument("--batch-size", type=int, default=32)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if a.command == "info":
            lib = Library(a.out)
            cats = {c: int((lib.categories == c).sum()) for c in lib.category_names()}
            print(json.dumps({"items": len(lib), "weights": lib.meta["weights"], "categories": cats}, indent=2))
            return 0
        if not a.src:
            raise LibraryError("--src is required for build and add")
        backend = get_backend(a.backend, a.weights)
        log.info("encoding with %s", backend.description)
        res = write_library(backend, a.src, a.out, a.command, a.batch_size)
    except (LibraryError, DatasetError, WeightsError, InputError, BackendError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun the same command to resume (staged work is in {a.out}/.pending)", file=sys.stderr)
        return 130
    print(f"{a.command}: {res['added']} items encoded, library {os.path.abspath(a.out)} now holds {res['count']}")
    if res["failed"]:
        print(f"skipped {len(res['failed'])} unreadable or empty images:")
        for path, reason in res["failed"]:
            print(f"  {path}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
