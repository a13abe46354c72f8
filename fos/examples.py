"""The app's default foreground library and example backgrounds: a small attributed subset of msrc-fos.

``python -m fos.examples build --data ../shared/data/msrc-fos`` copies, from the msrc-fos *test*
split, up to 6 cutouts per category into ``assets/library/<category>/`` and 6 original photos with
the box of one of their objects into ``assets/backgrounds/`` (``examples.json``). Source and licence
notes are in ``assets/ATTRIBUTION.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(ROOT, "assets")
PER_CATEGORY = 6
EXAMPLE_CATEGORIES = ("cow", "sheep", "dog", "car", "boat", "bird")


def load_examples(assets: str = ASSETS) -> list[dict]:
    """[{"image": path, "box": [x1, y1, x2, y2], "category": str, "name": str}, ...]"""
    path = os.path.join(assets, "backgrounds", "examples.json")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        items = json.load(f)
    for it in items:
        it["image"] = os.path.join(assets, "backgrounds", it["file"])
    return items


def example_pairs(n: int = 4, assets: str = ASSETS):
    """(background image, box, foreground image) triples from the examples, for parity checks."""
    from fos.preprocess import load_image

    out = []
    for ex in load_examples(assets)[:n]:
        fg = os.path.join(assets, "library", ex["category"], ex["name"])
        out.append((load_image(ex["image"]), tuple(ex["box"]), load_image(fg)))
    return out


def build_assets(data: str, out: str = ASSETS) -> dict:
    from PIL import Image

    from fos.data import load_sfosd_test
    from fos.preprocess import norm_to_pixel_box

    ts = load_sfosd_test(data)
    lib = os.path.join(out, "library")
    bgs = os.path.join(out, "backgrounds")
    for d in (lib, bgs):
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
    n = 0
    examples = []
    for cat, cs in sorted(ts.categories.items()):
        os.makedirs(os.path.join(lib, cat))
        names = sorted(cs.fg_names)[:PER_CATEGORY]
        for name in names:
            shutil.copy(cs.fg_paths[cs.fg_names.index(name)], os.path.join(lib, cat, name))
            n += 1
        if cat in EXAMPLE_CATEGORIES:
            q = next(q for q in cs.queries if q.name == names[0])
            photo = os.path.join(data, "photos", q.name.rsplit("_", 1)[0] + ".jpg")
            w, h = Image.open(photo).size
            examples.append({"file": os.path.basename(photo), "box": list(norm_to_pixel_box(q.bbox, w, h)),
                             "category": cat, "name": q.name})
            shutil.copy(photo, os.path.join(bgs, os.path.basename(photo)))
    with open(os.path.join(bgs, "examples.json"), "w", encoding="utf-8") as f:
        json.dump(examples, f, indent=1)
    return {"library_items": n, "examples": len(examples)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fos.examples", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["build"])
    p.add_argument("--data", default="../shared/data/msrc-fos")
    p.add_argument("--out", default=ASSETS)
    a = p.parse_args(argv)
    print(build_assets(a.data, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
