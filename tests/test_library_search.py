import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import fos.library as L
from fos.checkpoint import save_checkpoint
from fos.checkpoint import file_sha256
from fos.library import Library, LibraryError, write_library
from fos.preprocess import InputError, foreground_input, geometry_features, prepare_background
from fos.registry import build_model
from fos.runtime import TorchBackend
from fos.search import EngineCfg, SearchEngine, main as search_main
from fos.store import LocalStore, MilvusStore
from tests.test_data import _copy_test


@pytest.fixture(scope="module")
def student_path(tmp_path_factory):
    """A weights folder with a student whose backbones are ImageNet's (distinct embeddings; a random
    network maps every cutout to about one point)."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("w")
    save_checkpoint(build_model("student", pretrained=True), str(d / "student.safetensors"))
    return str(d)


def load_student(folder):
    return TorchBackend(folder)


@pytest.fixture(scope="module")
def fosd_lib(data_root, student_path, tmp_path_factory):
    root, _ = _copy_test(data_root, tmp_path_factory.mktemp("src"), cats=("cat", "dog", "sheep"))
    out = str(tmp_path_factory.mktemp("lib") / "lib")
    res = write_library(load_student(student_path), str(root), out, progress=False)
    assert res["added"] == 18 and not res["failed"]
    return out, root


def test_fosd_library_keeps_names_and_metadata(fosd_lib):
    out, root = fosd_lib
    lib = Library(out)
    assert len(lib) == 18 and lib.category_names() == ["cat", "dog", "sheep"]
    it = lib.items[0]
    assert it["id"].endswith(".jpg") and os.path.basename(it["path"]) == it["id"]
    w, h = Image.open(it["path"]).size
    assert (it["width"], it["height"]) == (w, h) and it["aspect"] == pytest.approx(w / h, rel=1e-5)
    assert it["sha256"] == file_sha256(it["path"])
    assert lib.emb.dtype == np.float16 and lib.emb.shape == (18, 128)
    assert lib.fmap.shape == (18, 128, 7, 7)


def cutout_folder(tmp_path):
    src = tmp_path / "cutouts"
    (src / "dog").mkdir(parents=True)
    (src / "car").mkdir()
    rgba = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    rgba.paste(Image.new("RGBA", (20, 20), (200, 30, 30, 255)), (10, 5))
    rgba.save(src / "dog" / "a.png")
    Image.new("RGB", (30, 50), (20, 90, 200)).save(src / "car" / "b.jpg")
    (src / "car" / "broken.png").write_bytes(b"\x89PNG not really")
    Image.new("RGB", (10, 10), (255, 255, 255)).save(src / "car" / "empty.png")
    return src


def test_folder_build_skips_broken_and_add_appends(student_path, tmp_path, capsys, fosd_lib):
    src = cutout_folder(tmp_path)
    out = str(tmp_path / "lib")
    assert L.main(["build", "--src", str(src), "--out", out, "--weights", student_path]) == 0
    text = capsys.readouterr().out
    assert "skipped 2 unreadable or empty images" in text and "broken.png" in text and "empty.png" in text
    lib = Library(out)
    assert sorted(lib.ids) == ["car/b", "dog/a"]
    first_shard = os.path.join(out, "shards", "00000.fmap.npy")
    before = file_sha256(first_shard)
    # add a CSV source: old items are not recomputed
    csv = tmp_path / "more.csv"
    Image.new("RGB", (25, 25), (10, 10, 10)).save(tmp_path / "c.png")
    csv.write_text("path,category\nc.png,dog\n")
    assert L.main(["add", "--src", str(csv), "--out", out, "--weights", student_path]) == 0
    lib2 = Library(out)
    assert len(lib2) == 3 and lib2.ids[:2] == lib.ids and file_sha256(first_shard) == before
    assert np.array_equal(lib2.emb[:2], lib.emb)


def test_failed_add_leaves_library_as_before(student_path, tmp_path, monkeypatch):
    src = cutout_folder(tmp_path)
    out = str(tmp_path / "lib")
    write_library(load_student(student_path), str(src), out, progress=False)
    meta_before = open(os.path.join(out, "library.json")).read()
    Image.new("RGB", (25, 25), (10, 10, 10)).save(src / "dog" / "new.png")

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(L, "encode_items", boom)
    with pytest.raises(RuntimeError):
        write_library(load_student(student_path), str(src), out, mode="add", progress=False)
    assert open(os.path.join(out, "library.json")).read() == meta_before
    assert len(Library(out)) == 2


def test_interrupted_build_resumes_without_recomputing(data_root, student_path, tmp_path, monkeypatch):
    root, _ = _copy_test(data_root, tmp_path, cats=("cat", "dog"))
    out = str(tmp_path / "lib")
    monkeypatch.setattr(L, "SHARD", 4)
    real, calls = L.encode_items, []

    def flaky(model, items, *a, **k):
        calls.append([it.id for it in items])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, items, *a, **k)

    monkeypatch.setattr(L, "encode_items", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_library(load_student(student_path), str(root), out, progress=False)
    with pytest.raises(LibraryError, match="not a foreground library"):
        Library(out)  # nothing committed yet
    monkeypatch.setattr(L, "encode_items", real)
    encoded = []
    monkeypatch.setattr(L, "encode_items", lambda m, items, *a, **k: (encoded.extend(i.id for i in items), real(m, items, *a, **k))[1])
    res = write_library(load_student(student_path), str(root), out, progress=False)
    assert res["count"] == 11
    assert not set(calls[0]) & set(encoded)  # the first shard was not encoded again
    assert len(Library(out)) == 11 and not os.path.exists(os.path.join(out, ".pending"))


def test_other_weights_and_corruption_are_errors(fosd_lib, tmp_path):
    out, _ = fosd_lib
    torch.manual_seed(1)
    other = str(tmp_path)
    save_checkpoint(build_model("student", pretrained=False), str(tmp_path / "student.safetensors"))
    with pytest.raises(LibraryError, match="built with other weights"):
        SearchEngine(Library(out), load_student(other))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "library.json").write_text(open(os.path.join(out, "library.json")).read())
    with pytest.raises(LibraryError, match="corrupt or incomplete"):
        Library(str(bad))


def test_ranking_without_prefilter_equals_pairwise_scoring(fosd_lib, student_path, data_root):
    out, root = fosd_lib
    backend = load_student(student_path)
    student = backend.s
    eng = SearchEngine(Library(out), backend, cfg=EngineCfg(prefilter_k=0))
    bg_path = os.path.join(root, "test", "bg_set1", eng.lib.items[0]["id"])
    box = (20, 30, 180, 150)
    res = eng.query(bg_path, box, "cat", k=100)
    cat_idx = eng.lib.indices("cat")
    assert res.n_candidates == res.n_scored == len(cat_idx) == len(res.results)
    prep = prepare_background(bg_path, box)
    pair = {}
    with torch.no_grad():
        for i in cat_idx:
            it = eng.lib.items[i]
            fg = foreground_input(it["path"])[None]
            g = torch.from_numpy(geometry_features(prep.box, (it["width"], it["height"])))[None]
            pair[it["id"]] = float(student(prep.tensor[None], prep.crop_box_net[None], fg, g))
    expected = sorted(pair, key=lambda k: -pair[k])
    assert [r.id for r in res.results] == expected
    for r in res.results:
        assert r.score == pytest.approx(pair[r.id], abs=2e-3)  # float16 cache


def test_prefilter_keeps_k_and_errors(fosd_lib, student_path, data_root):
    out, root = fosd_lib
    eng = SearchEngine(Library(out), load_student(student_path), cfg=EngineCfg(prefilter_k=3))
    bg_path = os.path.join(root, "test", "bg_set1", eng.lib.items[0]["id"])
    res = eng.query(bg_path, (20, 30, 180, 150), "sheep", k=10)
    assert res.n_scored == 3 and len(res.results) == 3
    assert {"background_encode", "prefilter", "head", "rerank"} <= res.timings_ms.keys()
    eng.set_background(bg_path, (20, 30, 180, 150))
    assert len(eng.search("cat", k=2).results) == 2
    with pytest.raises(LibraryError, match="'unicorn' has no items.*'cat'"):
        eng.search("unicorn")
    with pytest.raises(InputError, match="inside the"):
        eng.set_background(bg_path, (0, 0, 5000, 10))
    fresh = SearchEngine(Library(out), load_student(student_path))
    with pytest.raises(RuntimeError, match="set_background"):
        fresh.search("cat")


def test_local_and_milvus_give_the_same_candidates(fosd_lib, tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    out, _ = fosd_lib
    lib = Library(out)
    vecs = lib.emb.astype(np.float32)
    local_np, local_faiss = LocalStore(use_faiss=False), None
    local_np.add(vecs, lib.categories)
    milvus = MilvusStore(str(tmp_path / "m.db"))
    milvus.add(vecs, lib.categories)
    stores = [local_np, milvus]
    try:
        import faiss  # noqa: F401

        local_faiss = LocalStore("flat")
        local_faiss.add(vecs, lib.categories)
        stores.append(local_faiss)
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    for cat in lib.category_names():
        q = rng.normal(size=vecs.shape[1])
        q /= np.linalg.norm(q)
        ref, ref_s = local_np.search(q, 4, cat)
        assert len(ref) == 4 and all(lib.categories[i] == cat for i in ref)
        for s in stores[1:]:
            ids, sc = s.search(q, 4, cat)
            assert list(ids) == list(ref), type(s).__name__
            assert np.allclose(sc, ref_s, atol=1e-4)


def test_search_cli_json(fosd_lib, student_path, tmp_path, capsys):
    out, root = fosd_lib
    lib = Library(out)
    bg = os.path.join(root, "test", "bg_set1", lib.items[0]["id"])
    j = tmp_path / "r.json"
    assert search_main(["--library", out, "--background", bg, "--box", "10,10,100,120", "--category", "dog",
                        "--k", "3", "--weights", student_path, "--json", str(j)]) == 0
    res = json.loads(j.read_text())["results"]
    assert len(res) == 3 and set(res[0]) == {"id", "category", "score", "path"}
    assert res[0]["score"] >= res[1]["score"] >= res[2]["score"] and res[0]["category"] == "dog"
    assert search_main(["--library", out, "--background", bg, "--box", "10,10", "--category", "dog",
                        "--weights", student_path]) == 2
    assert "--box must be x1,y1,x2,y2" in capsys.readouterr().err
    assert search_main(["--library", str(tmp_path / "none"), "--background", bg, "--box", "1,1,50,50",
                        "--category", "dog", "--weights", student_path]) == 2
    assert "not a foreground library" in capsys.readouterr().err
