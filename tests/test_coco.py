"""The COCO -> FOSD converter on hand-made polygon and RLE input, bad entries, and the real coco128."""
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402

from fos.data import DatasetError, load_test, load_train, mask_path  # noqa: E402
from fos.data.__main__ import main as data_main  # noqa: E402
from fos.data.coco import convert, norm_coord  # noqa: E402
from fos.preprocess import norm_to_pixel_box  # noqa: E402

COCO128 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "coco128")


def square(x1, y1, x2, y2):
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def write_coco(tmp_path):
    """4 photos of 100x80: a polygon cat and dog, RLE cat (compressed) and dog (uncompressed), and bad entries."""
    imgs = tmp_path / "images"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 5):
        Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(imgs / f"p{i}.jpg")
    m = np.zeros((80, 100), np.uint8, order="F")
    m[10:50, 20:60] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode()
    flat = m.flatten(order="F")  # uncompressed RLE: run lengths starting with zeros
    runs, cur, n = [], 0, 0
    for v in flat:
        if v == cur:
            n += 1
        else:
            runs.append(n)
            cur, n = v, 1
    runs.append(n)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": square(10, 10, 50, 60), "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 2, "segmentation": square(30, 5, 90, 45), "iscrowd": 0},
        {"id": 3, "image_id": 3, "category_id": 1, "segmentation": rle, "iscrowd": 0},
        {"id": 4, "image_id": 4, "category_id": 2, "segmentation": {"size": [80, 100], "counts": runs}, "iscrowd": 0},
        {"id": 5, "image_id": 4, "category_id": 1, "segmentation": square(0, 0, 90, 70), "iscrowd": 1},  # crowd
        {"id": 6, "image_id": 4, "category_id": 1, "segmentation": square(1, 1, 5, 5), "iscrowd": 0},  # tiny
        {"id": 7, "image_id": 4, "category_id": 99, "segmentation": square(10, 10, 50, 60), "iscrowd": 0},  # unknown
        {"id": 8, "image_id": 5, "category_id": 1, "segmentation": square(10, 10, 50, 60), "iscrowd": 0},  # no photo
        {"id": 9, "image_id": 3, "category_id": 2, "segmentation": {"size": [40, 40], "counts": rle["counts"]},
         "iscrowd": 0},  # mask of another size
        {"id": 10, "image_id": 3, "category_id": 2, "segmentation": [], "iscrowd": 0},  # empty
        {"id": 11, "image_id": 2, "category_id": 1, "segmentation": square(200, 200, 300, 300), "iscrowd": 0},  # outside
    ]
    coco = {"images": [{"id": i, "file_name": f"p{i}.jpg", "width": 100, "height": 80} for i in range(1, 6)],
            "annotations": anns, "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    return str(imgs), str(tmp_path / "instances.json")


def test_polygon_and_rle_instances_and_skips(tmp_path):
    images, ann = write_coco(tmp_path)
    out = tmp_path / "fos"
    res = convert(images, ann, str(out), split="train", min_area_frac=0.02, min_side=8, progress=False)
    assert res["train"] == 4 and res["test"] == 0
    assert res["skipped"] == {"crowd": 1, "tiny": 1, "unknown category id": 1, "missing or unreadable photo": 1,
                              "unusable segmentation": 2, "empty mask": 1}
    recs = {r.name: r for r in load_train(str(out))}
    assert set(recs) == {"p1_1.jpg", "p2_2.jpg", "p3_3.jpg", "p4_4.jpg"}
    # the RLE instance: mask rows 10-49, columns 20-59 -> pixel box (20, 10, 60, 50), exactly back from the json
    r = recs["p3_3.jpg"]
    assert norm_to_pixel_box(r.bbox, 100, 80) == (20, 10, 60, 50)
    fg = np.asarray(Image.open(r.fg_path))
    assert fg.shape == (40, 40, 3)
    bg = np.asarray(Image.open(r.bg_path)).astype(int)
    assert np.abs(bg[10:50, 20:60] - 128).mean() < 4  # gray box (JPEG)
    m = np.asarray(Image.open(mask_path(str(out), "train", r.name)))
    assert m.shape == (80, 100) and m.max() == 255 and (m[10:50, 20:60] == 255).all() and m.sum() == 255 * 1600
    # the uncompressed RLE decodes to the same mask
    assert np.array_equal(np.asarray(Image.open(mask_path(str(out), "train", "p4_4.jpg"))), m)
    # dissimilars come from other photos of the class
    assert recs["p1_1.jpg"].dissimilars == ["p3_3.jpg"] and recs["p2_2.jpg"].dissimilars == ["p4_4.jpg"]
    assert os.path.isfile(out / "photos" / "p1.jpg")


def test_norm_coord_gives_back_the_pixel():
    for size in (213, 320, 427, 640):
        for v in range(size + 1):
            assert int(norm_coord(v, size) * size) == v and 0 <= norm_coord(v, size) <= 1


def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys):
    images, ann = write_coco(tmp_path)
    (tmp_path / "bad.json").write_text('{"images": []}')
    assert data_main(["from-coco", "--images", images, "--annotations", str(tmp_path / "bad.json"),
                      "--out", str(tmp_path / "o1")]) == 2
    assert "not a COCO instances file" in capsys.readouterr().err and not (tmp_path / "o1").exists()
    assert data_main(["from-coco", "--images", images, "--annotations", ann, "--out", str(tmp_path / "o2"),
                      "--min-area-frac", "0.9"]) == 2
    assert "no instance" in capsys.readouterr().err
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")] and not (tmp_path / "o2").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        convert(images, ann, str(tmp_path / "taken"), progress=False)


@pytest.mark.data
def test_coco128_converts_deterministically_by_photo(tmp_path):
    if not os.path.isdir(COCO128):
        pytest.skip("coco128 not found beside the repository")
    args = [os.path.join(COCO128, "images", "train2017"), os.path.join(COCO128, "annotations", "instances_train2017.json")]
    a = convert(*args, str(tmp_path / "a"), progress=False)
    b = convert(*args, str(tmp_path / "b"), progress=False)
    assert a == b and a["train"] > 100 and a["test"] > 10
    digest = lambda root: hashlib.sha256(b"".join(  # noqa: E731
        open(os.path.join(d, f), "rb").read() for d, _, fs in sorted(os.walk(root)) for f in sorted(fs)
        if not f.endswith("SOURCE.json"))).hexdigest()
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    train, test = load_train(str(tmp_path / "a")), load_test(str(tmp_path / "a"))
    photos = lambda names: {n.rsplit("_", 1)[0] for n in names}  # noqa: E731
    test_names = [q.name for c in test.categories.values() for q in c.queries]
    assert not photos(r.name for r in train) & photos(test_names)  # split by photo
