"""Building a library: the staged, resumable writer of ``python -m fos.library build|add`` and the only part
of :mod:`fos.library` that runs a network (:class:`fos.scoring.Scoring`).

``build`` and ``add`` stage their work in ``LIB/.pending/`` one batch at a time and commit it only at
the end, so an interrupted run resumes from its last batch (rerun the same command) and a failed run
leaves the library as it was. Nothing here deletes a library.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil

import numpy as np
from tqdm import tqdm

from fos.checkpoint import atomic_write, atomic_write_json
from fos.library.format import SHARD, VERSION, Library, LibraryError, check_finite, read_arrays, write_arrays
from fos.library.sources import SourceItem, read_sources
from fos.preprocess import InputError, foreground_colour, foreground_mask, load_image
from fos.scoring import Scoring

log = logging.getLogger("fos.library")
BATCH = 32  # items encoded, staged and resumable at a time


def store_file(lib_root: str, path: str) -> tuple[str, str]:
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
            rel, sha = store_file(lib_root, it.path)
            entry = {"id": it.id, "category": it.category, "file": rel,
                     "source": os.path.abspath(it.path), "width": img.width, "height": img.height, "sha256": sha,
                     "mask_file": store_file(lib_root, it.mask)[0] if it.mask else None,
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
        meta = {"version": VERSION, "weights": backend.student_path, "weights_sha256": wsha,
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
            write_arrays(os.path.join(pending, name), kept, emb, fmap)
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
    parts = [read_arrays(os.path.join(pending, name)) for name in state["parts"]]
    for s in range(0, len(parts), max(1, SHARD // batch_size)):
        group = parts[s:s + max(1, SHARD // batch_size)]
        name = f"{len(meta['shards']) + len(new_shards):05d}"
        write_arrays(os.path.join(shards_dir, name), [it for g in group for it in g[0]],
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
