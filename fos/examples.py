"""The app's default foreground library and example backgrounds: a small attributed subset of msrc-fos.

``python -m fos.examples add-coco --data runs/coco-extra-fos --annotations instances.json`` adds cutouts of
permissively licensed COCO photos (``ATTRIBUTION-coco.md``).

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


PERMISSIVE = (4, 7, 8)  # COCO licence ids: CC BY 2.0, "no known copyright restrictions", US Government work
COCO_PREFIX = "coco-"


def add_coco(data: str, annotations: str, out: str = ASSETS, per_category: int = 3,
             licences: tuple[int, ...] = PERMISSIVE) -> dict:
    """Add cutouts of a converted COCO root's *test* split (``fos.data from-coco``) to the default library,
    only from photos whose licence (``images[*].license`` of ``annotations``) is in ``licences``, up to
    ``per_category`` per category, named ``coco-<instance>.jpg``; writes ``ATTRIBUTION-coco.md`` with the
    photo, its Flickr page and licence for each. Earlier ``coco-`` cutouts are replaced, nothing else."""
    from fos.data import DatasetError, load_sfosd_test, read_json

    ann = read_json(annotations)
    try:
        lic = {int(x["id"]): x for x in ann["licenses"]}
        photos = {os.path.splitext(os.path.basename(im["file_name"]))[0]: im for im in ann["images"]}
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{annotations}: expected COCO images and licenses ({type(e).__name__}: {e})") from e
    ts = load_sfosd_test(data)
    lib = os.path.join(out, "library")
    for dirpath, _, files in os.walk(lib):
        for f in files:
            if f.startswith(COCO_PREFIX):
                os.unlink(os.path.join(dirpath, f))
    rows, skipped = [], 0
    for cat, cs in sorted(ts.categories.items()):
        kept = 0
        for name, path in sorted(zip(cs.fg_names, cs.fg_paths)):
            im = photos.get(name.rsplit("_", 1)[0])
            if im is None or int(im.get("license", -1)) not in licences:
                skipped += 1
                continue
            if kept == per_category:
                break
            os.makedirs(os.path.join(lib, cat), exist_ok=True)
            shutil.copy(path, os.path.join(lib, cat, COCO_PREFIX + name))
            kept += 1
            lc = lic.get(int(im["license"]), {})
            rows.append(f"| `{cat}/{COCO_PREFIX}{name}` | COCO {im['file_name']} (id {im['id']}) | "
                        f"{im.get('flickr_url', '')} | [{lc.get('name', '?')}]({lc.get('url', '')}) |")
    text = ("# Attribution of the COCO cutouts in `assets/library/` (`coco-*.jpg`)\n\n"
            f"Written by `python -m fos.examples add-coco --data {data} --annotations {annotations}`: object cutouts "
            "of the converted test split (never trained on), only from photos under CC BY 2.0, \"no known copyright "
            "restrictions\" or US Government work licences (the non-commercial, no-derivatives and share-alike "
            "ones are left out). Annotations: COCO (T.-Y. Lin et al., \"Microsoft COCO: Common Objects in "
            "Context\", ECCV 2014), CC BY 4.0. Each photo is by its Flickr author, under its licence below.\n\n"
            "| cutout | photo | Flickr | licence |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    with open(os.path.join(out, "ATTRIBUTION-coco.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return {"added": len(rows), "left_out_for_licence": skipped}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fos.examples", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["build", "add-coco"])
    p.add_argument("--data", default="../shared/data/msrc-fos", help="build: msrc-fos; add-coco: a converted COCO root")
    p.add_argument("--annotations", help="add-coco: the COCO instances json the root was converted from (licences)")
    p.add_argument("--per-category", type=int, default=3, help="add-coco: cutouts per category")
    p.add_argument("--out", default=ASSETS)
    a = p.parse_args(argv)
    if a.command == "add-coco":
        if not a.annotations:
            p.error("add-coco needs --annotations (the COCO json with the photos' licences)")
        print(add_coco(a.data, a.annotations, a.out, a.per_category))
    else:
        print(build_assets(a.data, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
