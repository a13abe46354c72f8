"""``python -m fos.library build|add|info``: see :mod:`fos.library`."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from fos import cli
from fos.library import Library, LibraryError, __doc__ as DOC
from fos.library.build import BATCH, write_library
from fos.runtime import get_backend
from fos.weights import SHIPPED

log = logging.getLogger("fos.library")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fos.library", description=DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["build", "add", "info", "grow"])
    p.add_argument("--src", help="build/add: folder of category folders, CSV/JSON table, or FOSD dataset root")
    p.add_argument("--photos", help="grow: folder of photos (with --category) or CSV path,category")
    p.add_argument("--category", help="grow: what the photos show (one of the localizer's classes)")
    p.add_argument("--phrase", help='grow: which object to cut out, e.g. "dog on the left" (the referring '
                   "segmenter; or a phrase column in the CSV)")
    p.add_argument("--refer", default="weights/refer.safetensors", help="grow: referring segmenter weights")
    p.add_argument("--localizer", default="weights/localizer.safetensors", help="grow: localizer weights")
    p.add_argument("--mask-method", choices=["cam", "grabcut", "u2netp"], default=None,
                   help="grow: box-to-mask method (default: the localizer's)")
    p.add_argument("--min-score", type=float, default=None,
                   help="grow: skip photos whose score is under this (default: the localizer's)")
    p.add_argument("--out", "--library", dest="out", required=True, help="library folder")
    p.add_argument("--weights", default=SHIPPED, help=f"folder with student.safetensors (default {SHIPPED})")
    cli.add_backend(p)
    p.add_argument("--batch-size", type=cli.positive_int, default=BATCH, help="items encoded and staged at a time")
    cli.add_threads(p)
    return p


def run(a) -> int:
    if a.command == "info":
        lib = Library(a.out)
        cats = {c: int((lib.categories == c).sum()) for c in lib.category_names()}
        print(json.dumps({"items": len(lib), "weights": lib.meta.get("weights"), "categories": cats}, indent=2))
        return 0
    if a.command == "grow":
        return run_grow(a)
    if not a.src:
        raise LibraryError("--src is required for build and add")
    backend = get_backend(a.backend, a.weights)
    log.info("encoding with %s", backend.description)
    res = write_library(backend, a.src, a.out, a.command, a.batch_size)
    print(f"{a.command}: {res['added']} items encoded, library {os.path.abspath(a.out)} now holds {res['count']}")
    if res["failed"]:
        print(f"skipped {len(res['failed'])} unreadable or empty images:")
        for path, reason in res["failed"]:
            print(f"  {path}: {reason}")
    return 0


def run_grow(a) -> int:
    from fos.library.grow import grow
    from fos.localize.infer import Localizer

    from fos.library.grow import read_photos

    if not a.photos:
        raise LibraryError("--photos is required for grow (a folder with --category or --phrase, or a CSV "
                           "path,category or path,phrase)")
    triples = read_photos(a.photos, a.category, a.phrase)
    localizer = Localizer(a.localizer) if any(not t[2] for t in triples) else None
    referrer = None
    if any(t[2] for t in triples):
        from fos.refer.infer import Referrer

        referrer = Referrer(a.refer)
    backend = get_backend(a.backend, a.weights)
    res = grow(backend, a.photos, a.category, a.out, localizer, a.mask_method, a.min_score, phrase=a.phrase,
               referrer=referrer)
    print(f"grow: {res['cut']} cutouts, {res['added']} new in {os.path.abspath(a.out)} (now {res['count']} items); "
          f"report in {os.path.join(os.path.abspath(a.out), 'grow-report.json')}")
    if res["skipped"]:
        print(f"skipped {len(res['skipped'])} photos:")
        for path, reason in res["skipped"]:
            print(f"  {path}: {reason}")
    return 0


def main(argv=None) -> int:
    return cli.run(run, build_parser(), argv, interrupted=lambda a: "interrupted; rerun the same command to resume "
                                                                   f"(staged work is in {a.out}/.pending)")


if __name__ == "__main__":
    sys.exit(main())
