"""``python -m fos.data from-coco --images DIR --annotations instances.json --out ROOT``: see :mod:`fos.data.coco`."""
from __future__ import annotations

import argparse
import json
import os
import sys

from fos import cli


def build_parser() -> argparse.ArgumentParser:
    from fos.data import coco

    p = argparse.ArgumentParser(prog="python -m fos.data", description=coco.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["from-coco"])
    p.add_argument("--images", required=True, help="folder of the photos named in the annotations' file_name")
    p.add_argument("--annotations", required=True, help="COCO instances json (polygon or RLE masks)")
    p.add_argument("--out", required=True, help="dataset root to create (must not exist or be empty)")
    p.add_argument("--split", choices=["train", "test"], default=None,
                   help="put everything in one split (default: split by photo with --test-fraction)")
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--min-area-frac", type=float, default=0.02, help="skip masks smaller than this part of the photo")
    p.add_argument("--min-side", type=cli.nonneg_int, default=24, help="skip boxes with a side under this many pixels")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(a) -> int:
    from fos.data.coco import convert

    res = convert(a.images, a.annotations, a.out, a.split, a.test_fraction, a.min_area_frac, a.min_side, a.seed)
    print(f"wrote {os.path.abspath(a.out)}: {res['train']} train and {res['test']} test instances")
    print("skipped: " + (", ".join(f"{k} {v}" for k, v in sorted(res["skipped"].items())) or "none"))
    print("classes: " + json.dumps(res["classes"]))
    return 0


def main(argv=None) -> int:
    return cli.run(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
