"""What a user must be able to rely on: K means K, nothing of theirs is deleted, checks come first,
bad arguments are one line, and the layers point one way."""
import ast
import importlib.util
import os
import subprocess
import sys

import pytest

from fos.library import Library, LibraryError, write_library
from fos.preprocess import InputError, load_image, norm_to_pixel_box
from fos.runtime import TorchBackend
from fos.search import EngineCfg, SearchEngine
from tests.conftest import ROOT, save_tiny


# --------------------------------------------------------------------------- K means K
SHIPPED = os.path.join(ROOT, "weights")


@pytest.fixture(scope="module")
def msrc_library(data_root, tmp_path_factory):
    """Every msrc-fos cutout (436 train + 125 test = 561) encoded by the shipped student: real, distinct
    embeddings (the tiny random student maps every cutout to nearly one point, all ties)."""
    out = str(tmp_path_factory.mktemp("msrc") / "lib")
    write_library(TorchBackend(SHIPPED), data_root, out, progress=False)
    return Library(out)


@pytest.mark.parametrize("k", [5, 20, 50])
def test_every_store_returns_the_same_k_candidates(msrc_library, data_root, tmp_path, k):
    pytest.importorskip("faiss")
    from fos.data import load_sfosd_test

    lib, backend = msrc_library, TorchBackend(SHIPPED)
    q = load_sfosd_test(data_root).categories["body"].queries[0]  # body: 76 cutouts in the library
    img = load_image(q.bg_path)
    engines = {index: SearchEngine(lib, backend, EngineCfg(prefilter_k=k, index=index)) for index in ("flat", "hnsw", "ivf")}
    if importlib.util.find_spec("milvus_lite"):
        engines["milvus"] = SearchEngine(lib, backend, EngineCfg(prefilter_k=k, store="milvus",
                                                                 milvus_uri=str(tmp_path / "m.db")))
    query = engines["flat"].encode(img, norm_to_pixel_box(q.bbox, *img.size))
    got = {name: eng.rank(query, "body", k=k) for name, eng in engines.items()}
    ref = [r.id for r in got["flat"].results]
    assert len(ref) == k and got["flat"].n_scored == k
    for name, out in got.items():
        assert (name, out.n_scored, [r.id for r in out.results]) == (name, k, ref)


def test_rank_arguments_are_checked(msrc_library):
    eng = SearchEngine(msrc_library, TorchBackend(SHIPPED))
    q = eng.encode(msrc_library.path(0), (0, 0, 20, 20))
    for kw, msg in [({"k": "3"}, "k must be a whole number, got '3'"), ({"k": 0}, "k must be at least 1"),
                    ({"rerank": -1}, "rerank must be at least 0"), ({"prefilter_k": -5}, "prefilter_k must be at least 0")]:
        with pytest.raises(InputError, match=msg):
            eng.rank(q, "cat", **kw)
    with pytest.raises(ValueError, match="rerank must be a whole number >= 0"):
        EngineCfg(rerank=-1)


@pytest.mark.parametrize("args,msg", [
    (["--prefilter-k", "-5"], "--prefilter-k: must be 0 or more, got -5"),
    (["--rerank", "-1"], "--rerank: must be 0 or more, got -1"),
    (["--k", "0"], "--k: must be at least 1, got 0"),
    (["--k", "three"], "--k: expected a whole number, got 'three'"),
])
def test_search_cli_bad_numbers_are_usage_errors(args, msg, capsys):
    from fos.search.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--library", "L", "--background", "b.jpg", "--box", "1,1,9,9", "--category", "dog", *args])
    assert e.value.code == 2 and msg in capsys.readouterr().err


# --------------------------------------------------------------------------- never delete, check first
def test_app_start_never_touches_a_users_library(tmp_path, data_root):
    """A library built with other weights is refused with a message; it is not rebuilt, moved or deleted,
    and nothing is exported into the weights folder before the check."""
    from fos.bootstrap import prepare

    old = save_tiny(tmp_path / "old", seed=1)
    lib = tmp_path / "mylib"
    write_library(TorchBackend(old), os.path.join(ROOT, "assets", "library"), str(lib), progress=False)
    before = sorted(str(p.relative_to(lib)) for p in lib.rglob("*"))
    new = save_tiny(tmp_path / "new", seed=2)  # the student was retrained
    with pytest.raises(LibraryError, match="built with other weights.*build a new library"):
        prepare(new, str(lib), "auto")
    assert sorted(str(p.relative_to(lib)) for p in lib.rglob("*")) == before
    assert not os.path.exists(os.path.join(new, "onnx"))  # checked before any export
    assert not [d for d in os.listdir(new) if d.startswith("library")]


def test_default_library_is_per_student_and_never_replaced(tmp_path):
    from fos.bootstrap import prepare
    from fos.weights import WeightsDir

    w = save_tiny(tmp_path / "w", seed=3)
    lib, b = prepare(w, None, "torch")
    first = WeightsDir(w).default_library()
    n_files = sum(len(fs) for _, _, fs in os.walk(os.path.join(ROOT, "assets", "library")))
    assert lib.root == first and len(lib) == n_files == 119 and os.path.isfile(os.path.join(first, "library.json"))
    save_tiny(tmp_path / "w", seed=4)  # retrained in place
    lib2, _ = prepare(w, None, "torch")
    assert lib2.root != first and os.path.isfile(os.path.join(first, "library.json"))  # the old one is still there


def test_search_checks_the_library_before_making_a_backend(tmp_path, msrc_library, monkeypatch):
    import fos.search as S

    other = save_tiny(tmp_path / "other", seed=7)
    made = []
    monkeypatch.setattr(S, "get_backend", lambda *a, **k: made.append(a) or None)
    with pytest.raises(LibraryError, match="built with other weights"):
        S.load_engine(msrc_library.root, other, "onnxruntime")
    assert made == [] and not os.path.exists(os.path.join(other, "onnx"))


# --------------------------------------------------------------------------- threads
def test_thread_count_default_and_override(monkeypatch):
    from fos.threads import available_cores, default_threads

    monkeypatch.delenv("FOS_THREADS", raising=False)
    assert default_threads() == max(1, min(8, available_cores() // 2))
    monkeypatch.setenv("FOS_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.setenv("FOS_THREADS", "many")
    with pytest.raises(ValueError, match="FOS_THREADS must be a whole number"):
        default_threads()
    # --threads reaches ONNX Runtime sessions too, not only torch
    import torch

    import fos.threads as th

    before = torch.get_num_threads()
    try:
        assert th.set_threads(3) == 3 and th.current_threads() == 3 and torch.get_num_threads() == 3
    finally:
        monkeypatch.setattr(th, "_chosen", None)
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- layers
LAYERS = [  # a module may import only from its own layer or the ones above it in this list
    {"fos.config", "fos.threads", "fos.registry", "fos.checkpoint", "fos.weights", "fos.preprocess", "fos.photometric",
     "fos.models", "fos.data", "fos.examples", "fos.localize.data", "fos.localize.model", "fos.localize.metrics",
     "fos.localize.masks", "fos.localize.infer", "fos.inpaint.model", "fos.inpaint.masks", "fos.inpaint.metrics",
     "fos.inpaint.infer"},
    {"fos.runtime"},
    {"fos.scoring"},
    {"fos.library", "fos.export"},
    {"fos.search", "fos.evaluate", "fos.train", "fos.cost", "fos.cli", "fos.localize", "fos.inpaint"},
    {"fos.bootstrap", "fos.bench"},
]


def _imports(path: str) -> set[str]:
    """Every ``fos`` module a file imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom) and node.module == "fos":  # from fos import cli -> fos.cli
            out |= {f"fos.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fos"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("fos")}
    return out


def _layer(module: str) -> int:
    if module.endswith(".__main__"):  # a package's command line sits on top of everything
        return len(LAYERS)
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"{module} is in no layer of the test's map")


def test_layers_point_one_way_and_there_is_no_cycle():
    graph = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, "fos")):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].replace(os.sep, ".")
                mod = rel[: -len(".__init__")] if rel.endswith(".__init__") else rel
                if mod == "fos":
                    continue
                graph[mod] = {m for m in _imports(os.path.join(dirpath, f)) if m != "fos"}
    upward = [(m, d) for m, deps in graph.items() for d in deps if _layer(d) > _layer(m)]
    assert not upward, f"imports that point up the layers: {upward}"
    assert "fos.export" not in str(graph["fos.runtime"]) and "fos.bootstrap" not in str(graph["fos.runtime"])

    seen, stack = set(), []

    def visit(m):
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
        if m in seen or m not in graph:
            return
        stack.append(m)
        for d in graph[m]:
            visit(d)
        stack.pop()
        seen.add(m)

    for m in graph:
        visit(m)


def test_scripts_run_without_path_tricks():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "export", "to_onnx.py"), "--help"], capture_output=True,
                       text=True, cwd="/")
    assert r.returncode == 0 and "Export the teacher" in r.stdout
    for f in ("export/to_onnx.py", "export/to_trt.py", "scripts/geometry_mix.py"):
        assert "sys.path" not in open(os.path.join(ROOT, f)).read(), f
