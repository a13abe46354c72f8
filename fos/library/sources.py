"""Where library cutouts come from (the same for ``build`` and ``add``): a folder of category folders
(``SRC/<category>/<name>.png``: PNG with alpha, or object on white with an optional ``<name>.mask.png``),
a CSV (header ``path,category[,mask]``) or JSON list of ``{"path", "category"}``, or a FOSD dataset root
(``train/fg`` and/or ``test/fg``; items keep their FOSD names as ids). Tables and FOSD labels are read by
:mod:`fos.data`'s readers."""
from __future__ import annotations

import os
from dataclasses import dataclass

from fos.data import DatasetError, candidate_foregrounds, read_path_table, train_instances
from fos.errors import LibraryError

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class SourceItem:
    id: str
    category: str
    path: str
    mask: str | None = None
    provenance: dict | None = None  # where a grown cutout came from (photo, box, mask method, score)


def _fosd_items(root: str) -> list[SourceItem]:
    items: dict[str, SourceItem] = {}
    for name, cat, _ in train_instances(root):
        items.setdefault(name, SourceItem(name, cat, os.path.join(root, "train", "fg", name)))
    for name, cat in candidate_foregrounds(root):
        key = name if name not in items else f"test/{name}"
        items[key] = SourceItem(key, cat, os.path.join(root, "test", "fg", name))
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
    try:
        rows = read_path_table(src)
    except DatasetError as e:
        raise LibraryError(str(e)) from None
    return [SourceItem(r.get("id") or f"{r['category']}/{os.path.splitext(os.path.basename(r['path']))[0]}",
                       r["category"], r["path"], r.get("mask") or None, r.get("provenance")) for r in rows]


def read_sources(src: str) -> list[SourceItem]:
    """Items of a source: FOSD dataset root, folder of category folders, CSV or JSON table."""
    if not os.path.exists(src):
        raise LibraryError(f"source {src} does not exist")
    if os.path.isfile(src):
        return _table_items(src)
    if os.path.isdir(os.path.join(src, "train")) or os.path.isdir(os.path.join(src, "test")):
        return _fosd_items(src)
    return _folder_items(src)
