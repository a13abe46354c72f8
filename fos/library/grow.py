"""``python -m fos.library grow --photos DIR --category NAME --out LIB``: labelled photos -> library cutouts.

With ``--phrase "dog on the left"`` (or a ``phrase`` column in the CSV, alongside or instead of
``category``), a photo's object is cut out by the referring segmenter (:mod:`fos.refer`) instead: the
phrase says which of its objects; the library category is the given one, else the phrase's.

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
from fos.vocab import class_of_word

log = logging.getLogger("fos.library")
STAGE = ".pending-grow"


def read_photos(photos: str, category: str | None, phrase: str | None = None) -> list[tuple[str, str | None, str | None]]:
    """(path, category, phrase) triples from a folder (with ``category`` and/or ``phrase``) or a CSV
    ``path,category`` / ``path,phrase`` / ``path,category,phrase``."""
    if os.path.isdir(photos):
        if not category and not phrase:
            raise LibraryError("--category or --phrase is needed with a folder of photos (or pass a CSV of "
                               "path,category or path,phrase)")
        files = sorted(f for f in os.listdir(photos) if f.lower().endswith(IMAGE_EXT) and not f.startswith("."))
        if not files:
            raise LibraryError(f"{photos} holds no photos ({', '.join(IMAGE_EXT)})")
        return [(os.path.join(photos, f), category, phrase) for f in files]
    if not os.path.isfile(photos):
        raise LibraryError(f"--photos {photos} does not exist")
    try:
        rows = read_path_table(photos, default_category=category, alt="phrase")
    except DatasetError as e:
        raise LibraryError(str(e)) from None
    return [(r["path"], r.get("category") or None, (r.get("phrase") or phrase or None)) for r in rows]


def phrase_category(referrer, phrase: str, category: str | None) -> str:
    """The library category of a phrase's cutout: the given one, else the phrase's (as photos name it)."""
    p, _ = referrer.check_phrase(phrase)
    return category or class_of_word(p.category)


def refer_cut(referrer, path: str, text: str):
    """(the referral, its mask, the FOSD cutout, the mask crop, False) of one photo and phrase."""
    from fos.localize.masks import cutout
    from fos.preprocess import load_image

    img = load_image(path, "RGB", what="photo")
    r = referrer.refer(img, text)
    fg, mask_img = cutout(np.asarray(img), r.box, r.mask)
    return r, r.mask, fg, mask_img, False


def grow(backend, photos: str, category: str | None, out: str, localizer: Localizer | None,
         mask_method: str | None = None, min_score: float | None = None, progress: bool = True,
         phrase: str | None = None, referrer=None) -> dict:
    """Localize (or, for photos with a phrase, refer), cut out and add; returns {"added", "count",
    "skipped": [(path, reason)], "library", ...}."""
    triples = read_photos(photos, category, phrase)
    if any(t[2] for t in triples) and referrer is None:
        raise LibraryError("photos with a phrase need the referring segmenter (weights/refer.safetensors)")
    if any(not t[2] for t in triples) and localizer is None:
        raise LibraryError("photos with a category and no phrase need the localizer (weights/localizer.safetensors)")
    for c in sorted({c for _, c, ph in triples if not ph}):
        localizer.check_category(c)
    for ph in sorted({ph for _, _, ph in triples if ph}):
        referrer.check_phrase(ph)  # every phrase, before any slow work
    pairs = [(p, phrase_category(referrer, ph, c) if ph else c, ph) for p, c, ph in triples]
    default_threshold = localizer.cfg.score_threshold if localizer is not None else 0.5
    min_score = default_threshold if min_score is None else min_score
    method = mask_method or (localizer.mask_method if localizer is not None else "refer")
    stage = os.path.join(out, STAGE)
    state_path = os.path.join(stage, "state.json")
    key = {"photos": os.path.abspath(photos), "category": category, "phrase": phrase, "method": method,
           "min_score": min_score, "localizer": getattr(getattr(localizer, "model", None), "weights_sha256", ""),
           "referrer": getattr(getattr(referrer, "model", None), "weights_sha256", "")}
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
    for path, cat, text in tqdm(pairs, desc="grow: localize and cut out", unit="photo", disable=not progress):
        if path in state["done"]:
            continue
        stem = os.path.splitext(os.path.basename(path))[0]
        try:
            if text:
                loc, mask, fg, mask_img, whole = refer_cut(referrer, path, text)
            else:
                c = localizer.cut(path, cat, method=method)
                loc, mask, fg, mask_img, whole = c.loc, c.mask, c.image, c.mask_image, c.whole_box
        except InputError as e:
            state["done"][path] = {"status": "refused", "reason": str(e)}  # unreadable, or nothing responds
        else:
            if loc.score < min_score:
                what = repr(text) if text else f"no {cat} found?"
                state["done"][path] = {"status": "skipped", "score": round(loc.score, 4),
                                       "reason": f"score {loc.score:.3f} under {min_score} ({what})"}
            else:
                name = f"{cat.replace('/', '_')}__{stem}"
                fg_path = os.path.join(stage, "cutouts", name + ".png")
                mask_path = os.path.join(stage, "cutouts", name + ".mask.png")
                atomic_write(fg_path, lambda f, im=fg: im.save(f, format="PNG"))
                atomic_write(mask_path, lambda f, im=mask_img: im.save(f, format="PNG"))
                state["done"][path] = {
                    "status": "cut", "id": f"grown/{cat}/{stem}", "category": cat, "path": fg_path, "mask": mask_path,
                    "provenance": {"photo": os.path.abspath(path), "box": list(loc.box),
                                   "mask_method": "refer" if text else method,
                                   "score": round(loc.score, 4), "mask_pixels": int(np.count_nonzero(mask)),
                                   "whole_box": whole, **({"phrase": text} if text else {}),
                                   "localizer": "refer" if text else localizer.cfg.method}}
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
