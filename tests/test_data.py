import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from fos.data import DatasetError, load_rfosd_test, load_sfosd_test, load_test, load_train, mask_path


def test_train_records_real(data_root):
    recs = load_train(data_root)
    assert len(recs) == 436
    r = recs[0]
    assert os.path.basename(r.bg_path) == os.path.basename(r.fg_path) == r.name
    assert all(d in {x.name for x in recs} for d in r.dissimilars)
    assert os.path.isfile(mask_path(data_root, "train", r.name))


def test_sfosd_test_real(data_root):
    ts = load_sfosd_test(data_root)
    assert ts.kind == "sfosd" and ts.n_queries == 125 and len(ts.categories) == 15
    for cs in ts.categories.values():
        assert cs.labels.shape == (len(cs.queries), len(cs.fg_names))
        assert (cs.labels.sum(1) == 1).all()  # ground truth: the foreground with the same name
        for q, row in zip(cs.queries, cs.labels):
            assert cs.fg_names[int(row.argmax())] == q.name


def _copy_test(data_root, tmp_path, cats=("cat", "dog")):
    src = os.path.join(data_root, "test")
    anno = json.load(open(os.path.join(src, "labels", "test_set1.json")))
    anno = {c: anno[c] for c in cats}
    dst = tmp_path / "ds" / "test"
    (dst / "labels").mkdir(parents=True)
    (dst / "fg").mkdir()
    (dst / "bg_set1").mkdir()
    for c in cats:
        for f in anno[c]["fg"]:
            shutil.copy(os.path.join(src, "fg", f), dst / "fg" / f)
            shutil.copy(os.path.join(src, "bg_set1", f), dst / "bg_set1" / f)
    (dst / "labels" / "test_set1.json").write_text(json.dumps(anno))
    return tmp_path / "ds", anno


def test_official_test_json_name_and_bg_folder(data_root, tmp_path):
    root, anno = _copy_test(data_root, tmp_path)
    a = load_sfosd_test(str(root))
    os.rename(root / "test" / "labels" / "test_set1.json", root / "test" / "labels" / "test.json")
    os.rename(root / "test" / "bg_set1", root / "test" / "bg")
    b = load_test(str(root))
    assert b.kind == "sfosd"
    assert [q.name for q in a.categories["cat"].queries] == [q.name for q in b.categories["cat"].queries]
    assert b.n_queries == sum(len(v["bg"]) for v in anno.values())


def test_malformed_inputs_name_file_and_entry(data_root, tmp_path):
    root, anno = _copy_test(data_root, tmp_path)
    labels = root / "test" / "labels" / "test_set1.json"
    labels.write_text("{not json")
    with pytest.raises(DatasetError, match="test_set1.json: not valid JSON"):
        load_sfosd_test(str(root))
    bad = json.loads(json.dumps(anno))
    bad["cat"]["bg"][0][1] = [0.5, 0.5, 0.2, 0.9]
    labels.write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match=r"cat/.*bbox is empty"):
        load_sfosd_test(str(root))
    bad = json.loads(json.dumps(anno))
    bad["dog"]["bg"][0][1] = [0.1, 0.1, 1.7, 0.9]
    labels.write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match="normalized"):
        load_sfosd_test(str(root))
    labels.write_text(json.dumps(anno))
    name = anno["dog"]["fg"][0]
    os.remove(root / "test" / "bg_set1" / name)
    with pytest.raises(DatasetError, match=f"image file .*{name} is missing"):
        load_sfosd_test(str(root))
    with pytest.raises(DatasetError, match="dataset root not found"):
        load_test(str(tmp_path / "nowhere"))


def test_unknown_class_in_train_json(data_root, tmp_path):
    root = tmp_path / "tr"
    shutil.copytree(os.path.join(data_root, "train", "labels"), root / "train" / "labels",
                    ignore=shutil.ignore_patterns("masks"))
    os.symlink(os.path.abspath(os.path.join(data_root, "train", "bg")), root / "train" / "bg")
    os.symlink(os.path.abspath(os.path.join(data_root, "train", "fg")), root / "train" / "fg")
    p = root / "train" / "labels" / "train_sfosd.json"
    anno = json.loads(p.read_text())
    first = next(iter(anno))
    anno[first]["class"] = "unicorn"
    p.write_text(json.dumps(anno))
    with pytest.raises(DatasetError, match=f"entry '{first}': class 'unicorn' is not in"):
        load_train(str(root))


def write_rfosd_fixture(root):
    """A tiny R-FOSD test set in the official layout: 2 classes, human 0/1 labels."""
    t = root / "test"
    for d in ("bg_set2", "fg", "labels"):
        (t / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    anno = {
        "dog": {"b2.png": [[0.1, 0.2, 0.5, 0.9], {"f1.png": 1, "f0.png": 0, "f2.png": 1}],
                "b1.png": [[0.3, 0.3, 0.6, 0.7], {"f0.png": 0, "f1.png": 0, "f2.png": 1}]},
        "car": {"c1.png": [[0.0, 0.5, 0.8, 1.0], {"g0.png": 1, "g1.png": 0}]},
    }
    for c, bgs in anno.items():
        for b, (_, labels) in bgs.items():
            Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(t / "bg_set2" / b)
            for f in labels:
                Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)).save(t / "fg" / f)
    (t / "labels" / "test_set2.json").write_text(json.dumps(anno))
    return anno


def test_rfosd_reader(tmp_path):
    write_rfosd_fixture(tmp_path)
    ts = load_test(str(tmp_path))
    assert ts.kind == "rfosd" and ts.n_queries == 3
    dog = ts.categories["dog"]
    assert [q.name for q in dog.queries] == ["b1.png", "b2.png"]  # sorted, as the official loader
    assert dog.fg_names == ["f0.png", "f1.png", "f2.png"]
    assert dog.labels.tolist() == [[0, 0, 1], [0, 1, 1]]
    assert dog.queries[1].bbox == [0.1, 0.2, 0.5, 0.9]


def test_rfosd_bad_label(tmp_path):
    anno = write_rfosd_fixture(tmp_path)
    anno["dog"]["b1.png"][1]["f0.png"] = 3
    (tmp_path / "test" / "labels" / "test_set2.json").write_text(json.dumps(anno))
    with pytest.raises(DatasetError, match="dog/b1.png.*labels must be 0 or 1"):
        load_rfosd_test(str(tmp_path))
