"""``python -m fos.localize --images DIR --category NAME --json OUT [--masks DIR]``

Localize ``NAME`` in every photo of ``DIR`` with the trained localizer (CAM or DA-WSOL weights) and
write ``{"<file name>": {"box": [x1, y1, x2, y2], "score": s}}`` to ``OUT``: pixels of the original
photo, x2/y2 exclusive; ``score`` is the classifier's probability that the photo shows ``NAME``
(photos that do not get a low score; ``fos.library grow`` skips those under the threshold). With
``--masks DIR``, one PNG mask per photo (0/255, photo size, same file stem) by ``--mask-method``.
Unreadable files are listed and skipped; they do not stop the run.
"""
from __future__ import annotations

import argparse
import os
import sys

from PIL import Image
from tqdm import tqdm

from fos import cli
from fos.checkpoint import atomic_write
from fos.localize.infer import DEFAULT_WEIGHTS, Localizer
from fos.localize.masks import METHODS
from fos.preprocess import InputError

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_images(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise InputError(f"--images {folder} is not a folder")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXT) and not f.startswith("."))
    if not files:
        raise InputError(f"{folder} holds no images ({', '.join(IMAGE_EXT)})")
    return files


def run(a) -> int:
    files = list_images(a.images)
    loc = Localizer(a.weights)
    loc.check_category(a.category)
    out, problems = {}, []
    for f in tqdm(files, desc=f"localize {a.category}", unit="photo"):
        path = os.path.join(a.images, f)
        try:
            if a.masks:
                c = loc.cut(path, a.category, method=a.mask_method)
                res = c.loc
                img = Image.fromarray((c.mask * 255).astype("uint8"), "L")
                atomic_write(os.path.join(a.masks, os.path.splitext(f)[0] + ".png"),
                             lambda fh, img=img: img.save(fh, format="PNG"))
            else:
                res = loc.localize(path, a.category)
        except InputError as e:
            problems.append(f"{f}: {e}")
            continue
        out[f] = res.to_json()
    if not out:  # nothing to write: an empty {} would look like a run that found nothing
        raise InputError(f"none of the {len(files)} images in {a.images} could be read, nothing was written "
                         f"({problems[0]}{'; ...' if len(problems) > 1 else ''})")
    cli.write_json(a.json, out)
    if a.masks:
        print(f"wrote {len(out)} masks to {os.path.abspath(a.masks)}")
    low = sum(v["score"] < loc.cfg.score_threshold for v in out.values())
    print(f"{len(out)} photos localized; {low} score under {loc.cfg.score_threshold} (probably no {a.category})")
    if problems:
        print(f"{len(problems)} files skipped:\n  " + "\n  ".join(problems), file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fos.localize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder of photos")
    p.add_argument("--category", required=True, help="what to find in them (one of the localizer's classes)")
    p.add_argument("--json", required=True, help="output JSON: {file name: {box, score}}")
    p.add_argument("--masks", default=None, help="also write one PNG mask per photo into this folder")
    p.add_argument("--mask-method", choices=METHODS, default=None, help="box-to-mask method (default: the weights')")
    p.add_argument("--weights", default=DEFAULT_WEIGHTS, help=f"localizer weights (default {DEFAULT_WEIGHTS})")
    cli.add_threads(p)
    return p


def main(argv=None) -> int:
    return cli.run(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
