"""``python -m fos.library grow --photos DIR --category NAME --out LIB``: labelled photos -> library cutouts.

Each photo is localized by the weakly supervised localizer (:mod:`fos.localize`), its object is cut
out inside the box (mask method of the localizer's config unless ``--mask-method``), and the cutout
joins the library (built if ``LIB`` does not exist yet) with its provenance: source photo, box, mask
method, score. Photos whose score (the classifier's probability of the category) is under the
threshold are skipped and listed, as are unreadable files. ``--photos`` may also be a CSV with the
columns ``path,category`` (one category per photo).

Cutouts are staged in ``LIB/.pending-grow/`` photo by photo; rerunning an interrupted command resumes
there, and the library itself changes only in the final commit of :func:`fos.library.build.write_library`.
The command line is ``fos.library``'s; this module sits above both the localizer and the library builder.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time

import numpy as np
from tqdm import tqdm

from fos.checkpoint import atomic_write, atomic_write_json
from fos.data import DatasetError, read_path_table
from fos.library.build import write_library
from fos.library.format import LibraryError
from fos.library.sources import IMAGE_EXT
from fos.localize.infer import Localizer
from fos.preprocess import InputError

log = logging.getLogger("fos.library")
STAGE = ".pending-grow"


def read_photos(photos: str, category: str | None) -> list[tuple[str, str]]:
    """(path, category) pairs from a folder (with ``category``) or a CSV ``path,category``."""
    if os.path.isdir(photos):
        if not category:
            raise LibraryError("--category is needed with a folder of photos (or pass a CSV of path,category)")
        files = sorted(f for f in os.listdir(photos) if f.lower().endswith(IMAGE_EXT) and not f.startswith("."))
        if not files:
            raise LibraryError(f"{photos} holds no photos ({', '.join(IMAGE_EXT)})")
        return [(os.path.join(photos, f), category) for f in files]
    if not os.path.isfile(photos):
        raise LibraryError(f"--photos {photos} does not exist")
    try:
        rows = read_path_table(photos, default_category=category)
    except DatasetError as e:
        raise LibraryError(str(e)) from None
    return [(r["path"], r["category"]) for r in rows]


def grow(backend, photos: str, category: str | None, out: str, localizer: Localizer,
         mask_method: str | None = None, min_score: float | None = None, progress: bool = True) -> dict:
    """Localize, cut out and add; returns {"added", "count", "skipped": [(path, reason)], "library", ...}."""
    pairs = read_photos(photos, category)
    for c in sorted({c for _, c in pairs}):
        localizer.check_category(c)
    min_score = localizer.cfg.score_threshold if min_score is None else min_score
    method = mask_method or localizer.mask_method
    stage = os.path.join(out, STAGE)
    state_path = os.path.join(stage, "state.json")
    key = {"photos": os.path.abspath(photos), "category": category, "method": method, "min_score": min_score,
           "localizer": getattr(localizer.model, "weights_sha256", "")}
    state = {"key": key, "done": {}}
    if os.path.isfile(state_path):
        with open(state_path, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("key") == key:
            state = old
            log.info("resuming: %d photos already processed in %s", len(state["done"]), stage)
        else:
            shutil.rmtree(stage)  # staged work of another grow command: never committed, ours to discard
    os.makedirs(os.path.join(stage, "cutouts"), exist_ok=True)
    for path, cat in tqdm(pairs, desc="grow: localize and cut out", unit="photo", disable=not progress):
        if path in state["done"]:
            continue
        stem = os.path.splitext(os.path.basename(path))[0]
        try:
            c = localizer.cut(path, cat, method=method)
            loc, mask, fg, mask_img = c.loc, c.mask, c.image, c.mask_image
        except InputError as e:
            state["done"][path] = {"status": "unreadable", "reason": str(e)}
        else:
            if loc.score < min_score:
                state["done"][path] = {"status": "skipped", "score": round(loc.score, 4),
                                       "reason": f"score {loc.score:.3f} under {min_score} (no {cat} found?)"}
            else:
                name = f"{cat.replace('/', '_')}__{stem}"
                fg_path = os.path.join(stage, "cutouts", name + ".png")
                mask_path = os.path.join(stage, "cutouts", name + ".mask.png")
                atomic_write(fg_path, lambda f, im=fg: im.save(f, format="PNG"))
                atomic_write(mask_path, lambda f, im=mask_img: im.save(f, format="PNG"))
                state["done"][path] = {
                    "status": "cut", "id": f"grown/{cat}/{stem}", "category": cat, "path": fg_path, "mask": mask_path,
                    "provenance": {"photo": os.path.abspath(path), "box": list(loc.box), "mask_method": method,
                                   "score": round(loc.score, 4), "mask_pixels": int(np.count_nonzero(mask)),
                                   "whole_box": c.whole_box,
                                   "localizer": localizer.cfg.method}}
        atomic_write_json(state_path, state)
    cut = [v for v in state["done"].values() if v["status"] == "cut"]
    skipped = [(p, v["reason"]) for p, v in state["done"].items() if v["status"] != "cut"]
    res = {"added": 0, "count": None, "library": out, "skipped": skipped, "cut": len(cut)}
    if not cut and not os.path.isfile(os.path.join(out, "library.json")):
        shutil.rmtree(stage, ignore_errors=True)
        if os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)
        reasons = "; ".join(f"{os.path.basename(p)}: {r}" for p, r in skipped[:5])
        raise LibraryError(f"no photo gave a cutout, so no library was written ({len(skipped)} skipped: {reasons})")
    if cut:
        table = os.path.join(stage, "items.json")
        atomic_write_json(table, [{"id": v["id"], "category": v["category"], "path": v["path"], "mask": v["mask"],
                                   "provenance": v["provenance"]} for v in cut])
        mode = "add" if os.path.isfile(os.path.join(out, "library.json")) else "build"
        r = write_library(backend, table, out, mode, progress=progress)
        res.update(added=r["added"], count=r["count"], failed=r["failed"])
    report = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **key, "cut": len(cut), "added": res["added"],
              "skipped": [{"photo": p, "reason": r} for p, r in skipped]}
    if os.path.isdir(out):
        atomic_write_json(os.path.join(out, "grow-report.json"), report)
    shutil.rmtree(stage, ignore_errors=True)
    return res
