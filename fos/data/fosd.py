"""Readers for FOSD-format datasets (S-FOSD train / test set 1, R-FOSD test set 2).

``root`` is always the dataset root: the folder that holds ``train/`` and/or ``test/``. Every reader
validates what it loads; a :class:`DatasetError` names the file, the entry and what is wrong.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from fos.errors import DatasetError




def read_json(path: str):
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: file not found; is --data the dataset root (the folder with train/ and test/)?")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: could not be read ({e})") from e


def check_norm_box(box, path: str, entry: str) -> list[float]:
    """A normalized FOSD box [x1, y1, x2, y2] in [0, 1] with x1 < x2 and y1 < y2."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise DatasetError(f"{path}: entry {entry!r}: bbox must be [x1, y1, x2, y2], got {box!r}")
    try:
        vals = [float(v) for v in box]
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: entry {entry!r}: bbox must hold numbers, got {box!r}") from None
    if not all(math.isfinite(v) and -1e-6 <= v <= 1 + 1e-6 for v in vals):
        raise DatasetError(f"{path}: entry {entry!r}: bbox values must be normalized to [0, 1], got {box!r}")
    if not (vals[0] < vals[2] and vals[1] < vals[3]):
        raise DatasetError(f"{path}: entry {entry!r}: bbox is empty (needs x1 < x2 and y1 < y2), got {box!r}")
    return vals


def _check_file(path: str, json_path: str, entry: str) -> str:
    if not os.path.isfile(path):
        raise DatasetError(f"{json_path}: entry {entry!r}: image file {path} is missing")
    return path


def mask_path(root: str, split: str, name: str) -> str:
    """FOSD mask location ``<split>/labels/masks/<K>/<stem>.png`` (K: first character, upper-cased)."""
    stem = os.path.splitext(name)[0]
    return os.path.join(root, split, "labels", "masks", stem[0].upper(), stem + ".png")


def read_path_table(path: str, default_category: str | None = None, alt: str | None = None) -> list[dict]:
    """The rows of a table of files: a CSV with a header holding ``path,category`` (more columns are kept)
    or a JSON list of objects with those keys. ``path`` (and ``mask``, when given) are resolved against
    the table's folder; a row without a category takes ``default_category``; with ``alt`` (a column name,
    e.g. ``phrase``), a row may give that column instead of a category. The one reader of
    ``fos.library build --src TABLE`` and ``fos.library grow --photos TABLE``."""
    import csv

    if not os.path.isfile(path):
        raise DatasetError(f"{path}: file not found")
    if path.endswith(".json"):
        rows = read_json(path)
        if not isinstance(rows, list):
            raise DatasetError(f"{path}: expected a list of {{\"path\": ..., \"category\": ...}}")
        first = 1
    else:
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                cols = set(reader.fieldnames or [])
                if "path" not in cols or not ("category" in cols or (alt and alt in cols)):
                    need = "path,category" + (f" (or path,{alt})" if alt else "")
                    raise DatasetError(f"{path}: the CSV needs a header with the columns {need} "
                                       f"(got {reader.fieldnames})")
                rows = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise DatasetError(f"{path}: could not be read as CSV ({e})") from e
        first = 2  # the header is line 1
    if not rows:
        raise DatasetError(f"{path} lists no items (it needs rows of path,category)")
    base = os.path.dirname(os.path.abspath(path))
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not r.get("path") or not (r.get("category") or default_category or
                                                                 (alt and r.get(alt))):
            raise DatasetError(f"{path}: row {i + first} needs a path and a category{f' or a {alt}' if alt else ''}, "
                               f"got {r!r}")
        row = {**r, "category": r.get("category") or default_category}
        for key in ("path", "mask"):
            if row.get(key) and not os.path.isabs(row[key]):
                row[key] = os.path.join(base, row[key])
        out.append(row)
    return out


# --------------------------------------------------------------------------- instances
def train_instances(root: str) -> list[tuple[str, str, list[float]]]:
    """(name, class, normalized box) of every training instance of a FOSD root
    (``train/labels/train_sfosd.json``, else ``train_rfosd.json``); [] when it has neither."""
    for labels in ("train_sfosd.json", "train_rfosd.json"):
        p = os.path.join(root, "train", "labels", labels)
        if os.path.exists(p):
            anno = read_json(p)
            if not isinstance(anno, dict):
                raise DatasetError(f"{p}: expected an object {{file: {{bbox, class, ...}}}}")
            out = []
            for name, e in anno.items():
                if not isinstance(e, dict) or "class" not in e:
                    raise DatasetError(f"{p}: entry {name!r}: missing 'class'")
                out.append((name, str(e["class"]), check_norm_box(e.get("bbox"), p, name)))
            return out
    return []


def _set1_path(root: str) -> str | None:
    labels = os.path.join(root, "test", "labels")
    return _first_existing([os.path.join(labels, n) for n in ("test_set1.json", "test.json")])


def _read_set1(p: str) -> dict:
    anno = read_json(p)
    if not isinstance(anno, dict):
        raise DatasetError(f"{p}: expected an object {{class: {{\"bg\": [[file, bbox], ...], \"fg\": [...]}}}}")
    for cls, e in anno.items():
        if not isinstance(e, dict) or not isinstance(e.get("bg", []), list) or not isinstance(e.get("fg", []), list):
            raise DatasetError(f"{p}: class {cls!r}: expected {{\"bg\": [[file, bbox], ...], \"fg\": [file, ...]}}")
    return anno


def query_instances(root: str) -> list[tuple[str, str, list[float]]]:
    """(name, class, normalized box) of the queries of S-FOSD test set 1 (``test/labels/test_set1.json``)."""
    p = _set1_path(root)
    if p is None:
        raise DatasetError(f"{os.path.join(root, 'test', 'labels')}: neither test_set1.json nor test.json exists")
    out = []
    for cls, e in _read_set1(p).items():
        for item in e.get("bg", []):
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise DatasetError(f"{p}: class {cls!r}: bg entries must be [file, bbox], got {item!r}")
            out.append((str(item[0]), str(cls), check_norm_box(item[1], p, str(item[0]))))
    return out


def candidate_foregrounds(root: str) -> list[tuple[str, str]]:
    """(name, class) of the test candidates: test set 1's ``fg`` lists, then the foregrounds that only
    test set 2 labels, each once; [] when the root has neither file."""
    out, seen = [], set()
    p = _set1_path(root)
    if p is not None:
        for cls, e in _read_set1(p).items():
            for name in e.get("fg", []):
                out.append((str(name), str(cls)))
                seen.add(name)
    p2 = os.path.join(root, "test", "labels", "test_set2.json")
    if os.path.exists(p2):
        anno = read_json(p2)
        if not isinstance(anno, dict):
            raise DatasetError(f"{p2}: expected an object {{class: {{bg_file: [bbox, {{fg_file: 0 or 1}}]}}}}")
        for cls, bgs in anno.items():
            for entry in (bgs.values() if isinstance(bgs, dict) else []):
                labels = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None
                if not isinstance(labels, dict):
                    raise DatasetError(f"{p2}: class {cls!r}: expected {{bg_file: [bbox, {{fg_file: 0 or 1}}]}}")
                for name in labels:
                    if name not in seen:
                        out.append((str(name), str(cls)))
                        seen.add(name)
    return out


# --------------------------------------------------------------------------- train
@dataclass
class TrainRecord:
    name: str  # file name shared by the background and its own foreground
    bg_path: str
    fg_path: str
    bbox: list[float]  # normalized XYXY
    category: str
    similars: list[str]
    dissimilars: list[str]


def load_train(root: str, labels: str = "sfosd") -> list[TrainRecord]:
    """Read ``train/labels/train_<labels>.json`` with ``train/bg``, ``train/fg`` and ``category.json``."""
    tdir = os.path.join(root, "train")
    path = os.path.join(tdir, "labels", f"train_{labels}.json")
    anno = read_json(path)
    if not isinstance(anno, dict) or not anno:
        raise DatasetError(f"{path}: expected a non-empty object {{file: {{bbox, class, similars, dissimilars}}}}")
    cat_path = os.path.join(tdir, "labels", "category.json")
    cats = read_json(cat_path)
    if not isinstance(cats, dict) or not all(isinstance(v, dict) and "images" in v for v in cats.values()):
        raise DatasetError(f"{cat_path}: expected {{class: {{\"images\": [file, ...]}}}}")
    records = []
    for name, e in anno.items():
        if not isinstance(e, dict):
            raise DatasetError(f"{path}: entry {name!r}: expected an object, got {type(e).__name__}")
        for key in ("bbox", "class"):
            if key not in e:
                raise DatasetError(f"{path}: entry {name!r}: missing {key!r}")
        cat = e["class"]
        if cat not in cats:
            raise DatasetError(f"{path}: entry {name!r}: class {cat!r} is not in {cat_path}")
        lists = {}
        for key in ("similars", "dissimilars"):
            v = e.get(key, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise DatasetError(f"{path}: entry {name!r}: {key} must be a list of file names")
            missing = [x for x in v if x not in anno]
            if missing:
                raise DatasetError(f"{path}: entry {name!r}: {key} names {missing[:3]} that are not entries of the file")
            lists[key] = v
        records.append(TrainRecord(
            name=name,
            bg_path=_check_file(os.path.join(tdir, "bg", name), path, name),
            fg_path=_check_file(os.path.join(tdir, "fg", name), path, name),
            bbox=check_norm_box(e["bbox"], path, name),
            category=cat, **lists))
    return records


def photo_of(name: str) -> str:
    """The photo an instance comes from: ``1_8_s_2.jpg`` -> ``1_8_s`` (FOSD names are ``<photo>_<k>``)."""
    return name.rsplit(".", 1)[0].rsplit("_", 1)[0]


def load_train_roots(roots: list[str], labels: str = "sfosd") -> list[TrainRecord]:
    """:func:`load_train` of several dataset roots, concatenated; a name in two roots is an error (a
    record's similars and dissimilars are names of its own root)."""
    records, seen = [], {}
    for root in roots:
        for r in load_train(root, labels):
            if r.name in seen:
                raise DatasetError(f"{r.name!r} is in both {seen[r.name]} and {root}: training names must be unique "
                                   "across --data roots")
            seen[r.name] = root
            records.append(r)
    return records


# --------------------------------------------------------------------------- test sets
@dataclass
class Query:
    name: str
    bg_path: str
    bbox: list[float]  # normalized XYXY


@dataclass
class CategorySet:
    """The queries and candidate foregrounds of one category, with binary labels (n_query, n_fg)."""

    queries: list[Query]
    fg_names: list[str]
    fg_paths: list[str]
    labels: np.ndarray


@dataclass
class TestSet:
    kind: str  # "sfosd" or "rfosd"
    root: str
    categories: dict[str, CategorySet] = field(default_factory=dict)

    @property
    def n_queries(self) -> int:
        return sum(len(c.queries) for c in self.categories.values())


def _first_existing(paths: list[str]) -> str | None:
    return next((p for p in paths if os.path.exists(p)), None)


def load_sfosd_test(root: str) -> TestSet:
    """S-FOSD test set 1: ``test/labels/test_set1.json`` (or the official code's ``test.json``).

    Format ``{class: {"bg": [[file, bbox], ...], "fg": [file, ...]}}``; backgrounds in ``test/bg_set1``
    (or ``test/bg``); the ground truth of a background is the foreground with the same file name.
    """
    tdir = os.path.join(root, "test")
    labels_dir = os.path.join(tdir, "labels")
    path = _first_existing([os.path.join(labels_dir, n) for n in ("test_set1.json", "test.json")])
    if path is None:
        raise DatasetError(f"{labels_dir}: neither test_set1.json nor test.json exists; is --data the dataset root?")
    bg_dir = _first_existing([os.path.join(tdir, n) for n in ("bg_set1", "bg")])
    if bg_dir is None:
        raise DatasetError(f"{tdir}: no bg_set1/ (or bg/) folder with the test backgrounds")
    anno = read_json(path)
    if not isinstance(anno, dict) or not anno:
        raise DatasetError(f"{path}: expected a non-empty object {{class: {{\"bg\": [...], \"fg\": [...]}}}}")
    out = TestSet("sfosd", root)
    for cat, e in sorted(anno.items()):
        if not isinstance(e, dict) or not isinstance(e.get("bg"), list) or not isinstance(e.get("fg"), list):
            raise DatasetError(f"{path}: class {cat!r}: expected {{\"bg\": [[file, bbox], ...], \"fg\": [file, ...]}}")
        fgs = e["fg"]
        if not fgs or not all(isinstance(f, str) for f in fgs):
            raise DatasetError(f"{path}: class {cat!r}: \"fg\" must be a non-empty list of file names")
        queries = []
        for item in e["bg"]:
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)):
                raise DatasetError(f"{path}: class {cat!r}: bg entry {item!r} must be [file, [x1, y1, x2, y2]]")
            name = item[0]
            entry = f"{cat}/{name}"
            if name not in fgs:
                raise DatasetError(f"{path}: class {cat!r}: background {name!r} has no foreground of the same name in \"fg\" (its ground truth)")
            queries.append(Query(name, _check_file(os.path.join(bg_dir, name), path, entry), check_norm_box(item[1], path, entry)))
        if not queries:
            raise DatasetError(f"{path}: class {cat!r}: \"bg\" is empty")
        fg_paths = [_check_file(os.path.join(tdir, "fg", f), path, f"{cat}/{f}") for f in fgs]
        labels = np.array([[1.0 if f == q.name else 0.0 for f in fgs] for q in queries], dtype=np.float32)
        out.categories[cat] = CategorySet(queries, list(fgs), fg_paths, labels)
    return out


def load_rfosd_test(root: str) -> TestSet:
    """R-FOSD test set 2: ``test/labels/test_set2.json`` ``{class: {bg_file: [bbox, {fg_file: 0/1}]}}``.

    Backgrounds in ``test/bg_set2``, foregrounds in ``test/fg``. As in the official code, every
    background of a class is labelled against the same foregrounds (sorted by name).
    """
    tdir = os.path.join(root, "test")
    path = os.path.join(tdir, "labels", "test_set2.json")
    anno = read_json(path)
    if not isinstance(anno, dict) or not anno:
        raise DatasetError(f"{path}: expected a non-empty object {{class: {{bg_file: [bbox, {{fg_file: 0 or 1}}]}}}}")
    bg_dir = os.path.join(tdir, "bg_set2")
    out = TestSet("rfosd", root)
    for cat, bgs in sorted(anno.items()):
        if not isinstance(bgs, dict) or not bgs:
            raise DatasetError(f"{path}: class {cat!r}: expected a non-empty object {{bg_file: [bbox, {{fg_file: label}}]}}")
        fg_names = None
        queries, rows = [], []
        for name in sorted(bgs):
            e = bgs[name]
            entry = f"{cat}/{name}"
            if not (isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[1], dict) and e[1]):
                raise DatasetError(f"{path}: entry {entry!r}: expected [[x1, y1, x2, y2], {{fg_file: 0 or 1}}]")
            labels = e[1]
            bad = {k: v for k, v in labels.items() if v not in (0, 1)}
            if bad:
                raise DatasetError(f"{path}: entry {entry!r}: labels must be 0 or 1, got {dict(list(bad.items())[:3])}")
            names = sorted(labels)
            if fg_names is None:
                fg_names = names
            elif names != fg_names:
                raise DatasetError(f"{path}: entry {entry!r}: labels a different set of foregrounds than the other backgrounds of {cat!r}")
            queries.append(Query(name, _check_file(os.path.join(bg_dir, name), path, entry), check_norm_box(e[0], path, entry)))
            rows.append([float(labels[f]) for f in names])
        fg_paths = [_check_file(os.path.join(tdir, "fg", f), path, f"{cat}/{f}") for f in fg_names]
        out.categories[cat] = CategorySet(queries, fg_names, fg_paths, np.array(rows, dtype=np.float32))
    return out


def load_test(root: str, kind: str = "auto") -> TestSet:
    """``kind``: "sfosd", "rfosd" or "auto" (S-FOSD when its json exists, else R-FOSD)."""
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: dataset root not found (it should hold test/ with bg_set1/, fg/ and labels/)")
    if kind == "auto":
        labels = os.path.join(root, "test", "labels")
        has1 = any(os.path.exists(os.path.join(labels, n)) for n in ("test_set1.json", "test.json"))
        kind = "sfosd" if has1 or not os.path.exists(os.path.join(labels, "test_set2.json")) else "rfosd"
    if kind == "sfosd":
        return load_sfosd_test(root)
    if kind == "rfosd":
        return load_rfosd_test(root)
    raise DatasetError(f"unknown test set kind {kind!r}; use sfosd, rfosd or auto")
