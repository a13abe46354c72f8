import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import fos.library.build as L
from fos.checkpoint import file_sha256
from fos.library import Library, LibraryError
from fos.library.build import write_library
from fos.library.__main__ import main as library_main
from fos.library.store import LocalStore, MilvusStore
from fos.preprocess import InputError, foreground_input, geometry_batch, prepare_background
from fos.runtime import TorchBackend
from fos.search import EngineCfg, SearchEngine
from fos.search.__main__ import main as search_main
from tests.conftest import save_tiny
from tests.test_data import _copy_test


@pytest.fixture(scope="module")
def student_path(tiny_weights):
    """The tiny random-init student and teacher (fast; distinct enough embeddings for the prefilter)."""
    return tiny_weights


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
    assert it["id"].endswith(".jpg") and os.path.basename(it["source"]) == it["id"]
    w, h = Image.open(it["source"]).size
    assert (it["width"], it["height"]) == (w, h)
    # the cutout is copied into the library, by content
    assert lib.path(0) == os.path.join(out, "files", it["sha256"] + ".jpg") and file_sha256(lib.path(0)) == it["sha256"]
    assert it["sha256"] == file_sha256(it["source"])
    assert lib.emb.dtype == np.float16 and lib.emb.shape == (18, 16)
    assert lib.fmap.shape == (18, 32, 7, 7)  # the cached half: 16 channels of conv1 + 16 of the interaction


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
    assert library_main(["build", "--src", str(src), "--out", out, "--weights", student_path]) == 0
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
    assert library_main(["add", "--src", str(csv), "--out", out, "--weights", student_path]) == 0
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


def test_interrupted_build_resumes_from_its_last_batch(data_root, student_path, tmp_path, monkeypatch):
    root, _ = _copy_test(data_root, tmp_path, cats=("cat", "dog"))
    out = str(tmp_path / "lib")
    real, calls = L.encode_items, []

    def flaky(model, items, *a, **k):
        calls.append([it.id for it in items])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(model, items, *a, **k)

    monkeypatch.setattr(L, "encode_items", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_library(load_student(student_path), str(root), out, batch_size=4, progress=False)
    with pytest.raises(LibraryError, match="interrupted build .* again to resume it"):
        Library(out)  # nothing committed yet, and the message says how to go on
    encoded = []
    monkeypatch.setattr(L, "encode_items", lambda m, items, *a, **k: (encoded.extend(i.id for i in items), real(m, items, *a, **k))[1])
    res = write_library(load_student(student_path), str(root), out, batch_size=4, progress=False)
    assert res["count"] == 11
    # the two finished batches of 4 were not encoded again: only the interrupted batch and the rest
    assert not (set(calls[0]) | set(calls[1])) & set(encoded) and len(encoded) == 3
    assert len(Library(out)) == 11 and not os.path.exists(os.path.join(out, ".pending"))
    # committed as one shard; a fresh build of the same source gives the same library
    ref = write_library(load_student(student_path), str(root), str(tmp_path / "ref"), batch_size=4, progress=False)
    assert ref["count"] == 11 and np.array_equal(Library(out).fmap, Library(str(tmp_path / "ref")).fmap)


def test_library_is_self_contained(data_root, student_path, tmp_path):
    """Moving or deleting the source images after a build breaks nothing: the cutouts live in the library."""
    import shutil

    root, _ = _copy_test(data_root, tmp_path / "src", cats=("cat",))
    write_library(load_student(student_path), str(root), str(tmp_path / "lib"), progress=False)
    shutil.rmtree(tmp_path / "src")
    shutil.move(str(tmp_path / "lib"), str(tmp_path / "moved"))
    eng = SearchEngine(Library(str(tmp_path / "moved")), load_student(student_path))
    bg = os.path.join(data_root, "test", "bg_set1", eng.lib.items[0]["id"])
    out = eng.query(bg, (20, 30, 180, 150), "cat", k=3, rerank=2)  # rerank composites the cutouts
    assert len(out.results) == 3 and out.results[0].teacher_score is not None
    # a library whose files are gone is refused at load, saying what is missing
    for f in os.listdir(tmp_path / "moved" / "files")[:1]:
        os.unlink(tmp_path / "moved" / "files" / f)
    with pytest.raises(LibraryError, match="lacks 1 of its cutout files"):
        Library(str(tmp_path / "moved"))


def test_empty_sources_are_refused_before_anything_is_written(student_path, tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("path,category\n")
    out = tmp_path / "lib"
    assert library_main(["build", "--src", str(tmp_path / "empty.csv"), "--out", str(out), "--weights", student_path]) == 2
    assert "lists no items" in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "white").mkdir()
    (tmp_path / "white" / "dog").mkdir()
    Image.new("RGB", (10, 10), (255, 255, 255)).save(tmp_path / "white" / "dog" / "w.png")
    assert library_main(["build", "--src", str(tmp_path / "white"), "--out", str(out), "--weights", student_path]) == 2
    assert "no usable foreground" in capsys.readouterr().err and not os.path.exists(out / "shards")
    # a non-empty folder that is not a library is never built into
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert library_main(["build", "--src", str(tmp_path / "white"), "--out", str(tmp_path / "mine"),
                         "--weights", student_path]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_other_weights_and_corruption_are_errors(fosd_lib, tmp_path):
    out, _ = fosd_lib
    other = save_tiny(tmp_path / "other", seed=1)
    with pytest.raises(LibraryError, match="built with other weights"):
        SearchEngine(Library(out), load_student(other))
    # an in-memory student is checked too (it used to skip the check)
    with pytest.raises(LibraryError, match="built with other weights"):
        SearchEngine(Library(out), TorchBackend(student=load_student(other).s))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "library.json").write_text(open(os.path.join(out, "library.json")).read())
    with pytest.raises(LibraryError, match="corrupt or incomplete"):
        Library(str(bad))
    # a version 1 library (absolute source paths, no copies) is refused with what to do, not read half-way
    import shutil

    v1 = tmp_path / "v1"
    shutil.copytree(out, v1)
    meta = json.loads((v1 / "library.json").read_text())
    (v1 / "library.json").write_text(json.dumps({**meta, "version": 1}))
    with pytest.raises(LibraryError, match="is a version 1 library; this fos reads version 2.*build"):
        Library(str(v1))


def test_non_finite_shard_is_refused_with_its_name(fosd_lib, tmp_path, student_path, capsys):
    """A shard that is a valid .npy full of NaN used to give every score NaN and a ranking in file order."""
    import shutil

    out, _ = fosd_lib
    nan = tmp_path / "nan"
    shutil.copytree(out, nan)
    shard = json.load(open(nan / "library.json"))["shards"][0]
    emb_file = nan / "shards" / f"{shard}.emb.npy"
    emb = np.load(emb_file)
    emb[3] = np.nan
    np.save(emb_file, emb)
    with pytest.raises(LibraryError, match=f"shard {shard} holds non-finite features .* for 1 of 18 items"):
        Library(str(nan))
    assert search_main(["--library", str(nan), "--weights", student_path, "--background", "x.jpg",
                        "--box", "1,1,50,50", "--category", "cat"]) == 2
    assert "non-finite" in capsys.readouterr().err


def test_non_finite_features_are_refused_at_build(data_root, tmp_path, student_path):
    root, _ = _copy_test(data_root, tmp_path / "src", cats=("cat",))
    backend = load_student(student_path)
    with torch.no_grad():
        next(backend.s.fg_encoder.parameters()).fill_(float("nan"))
    with pytest.raises(LibraryError, match="non-finite features"):
        write_library(backend, str(root), str(tmp_path / "lib"), progress=False)
    assert not (tmp_path / "lib" / "library.json").exists()


def test_interrupted_build_says_how_to_resume(tmp_path):
    (tmp_path / "lib" / ".pending").mkdir(parents=True)
    with pytest.raises(LibraryError, match="interrupted build .* again to resume it"):
        Library(str(tmp_path / "lib"))


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
            fg = foreground_input(eng.lib.path(i))[None]
            g = torch.from_numpy(geometry_batch(prep.box, [(it["width"], it["height"])]))
            pair[it["id"]] = float(student(prep.tensor[None], prep.crop_box_net[None], fg, g))
    expected = sorted(pair, key=lambda k: -pair[k])
    assert [r.id for r in res.results] == expected
    for r in res.results:
        assert r.score == pytest.approx(pair[r.id], abs=2e-3)  # float16 cache


def test_search_photo_makes_each_composite_once_for_the_teacher_and_the_page(fosd_lib, student_path, data_root,
                                                                             monkeypatch):
    """The app's one call: the reranked top N carry the composite the teacher scored (the one shown),
    the rest their own; the order is the teacher's top N, then the student's rest."""
    import fos.search.engine as S
    from fos.composite import composite
    from fos.search import SearchEngine as Engine

    out, root = fosd_lib
    eng = Engine(Library(out), load_student(student_path), cfg=EngineCfg(prefilter_k=0))
    bg_path = os.path.join(root, "test", "bg_set1", eng.lib.items[0]["id"])
    box = (20, 30, 180, 150)
    made = []
    real = S.composite
    monkeypatch.setattr(S, "composite", lambda *a, **k: made.append(a[1]) or real(*a, **k))
    res = eng.search_photo(bg_path, box, "cat", k=5, rerank=2)
    monkeypatch.undo()
    assert len(made) == 5  # once per result shown, the reranked two included
    assert [r.ranked_by for r in res.results] == ["teacher"] * 2 + ["student"] * 3
    assert res.results[0].teacher_score >= res.results[1].teacher_score
    assert [r.student_score for r in res.results[2:]] == sorted((r.student_score for r in res.results[2:]), reverse=True)
    assert "rerank" in res.timings_ms and "composites" in res.timings_ms and res.background.box == box
    for r in res.results:  # the composite is the one a person is shown: "fit", on the original photo
        want = composite(res.background, eng.cutout(r), "fit", r.mask, eng.pcfg)
        assert np.array_equal(np.asarray(r.composite), np.asarray(want)) and r.composite.size == res.background.size
    top = res.results[:2]
    again = eng.scoring.teacher_on(res.background, [r.composite for r in top], [eng._size(r) for r in top],
                                   [eng._colour(r, []) for r in top])
    assert np.allclose(again, [r.teacher_score for r in top], atol=1e-6)
    # the same scores as compositing afresh (the teacher's old path)
    fresh = eng.scoring.teacher(res.background, [eng.cutout(r) for r in top], rule="fit", masks=[r.mask for r in top])
    assert np.allclose(fresh, again, atol=1e-6)


def test_prefilter_keeps_k_and_errors(fosd_lib, student_path, data_root):
    out, root = fosd_lib
    eng = SearchEngine(Library(out), load_student(student_path), cfg=EngineCfg(prefilter_k=3))
    bg_path = os.path.join(root, "test", "bg_set1", eng.lib.items[0]["id"])
    res = eng.query(bg_path, (20, 30, 180, 150), "sheep", k=10)
    assert res.n_scored == 3 and len(res.results) == 3
    assert {"background_encode", "prefilter", "head"} <= res.timings_ms.keys()
    assert "rerank" not in res.timings_ms  # no rerank ran: no "rerank 0.0 ms"
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
    assert len(res) == 3 and set(res[0]) == {"id", "category", "score", "path", "student_score", "teacher_score",
                                             "appearance_logit", "geometry_logit", "lighting_logit"}
    for r in res:  # score = sigmoid(appearance + lighting + geometry)
        total = r["appearance_logit"] + r["lighting_logit"] + r["geometry_logit"]
        assert r["score"] == pytest.approx(1 / (1 + np.exp(-total)), abs=1e-5)
    assert res[0]["score"] >= res[1]["score"] >= res[2]["score"] and res[0]["category"] == "dog"
    with pytest.raises(SystemExit) as exit_:  # a usage error, before anything is loaded
        search_main(["--library", out, "--background", bg, "--box", "10,10", "--category", "dog",
                     "--weights", student_path])
    assert exit_.value.code == 2 and "--box takes four numbers x1,y1,x2,y2" in capsys.readouterr().err
    assert search_main(["--library", str(tmp_path / "none"), "--background", bg, "--box", "1,1,50,50",
                        "--category", "dog", "--weights", student_path]) == 2
    assert "not a foreground library" in capsys.readouterr().err
