"""What a user must be able to rely on: K means K, nothing of theirs is deleted, checks come first,
bad arguments are one line, and the layers point one way."""
import ast
import importlib.util
import os
import subprocess
import sys

import pytest

from fos.checkpoint import WeightsError
from fos.library import Library, LibraryError
from fos.library.build import write_library
from fos.preprocess import InputError, load_image, norm_to_pixel_box
from fos.runtime import TorchBackend
from fos.search import EngineCfg, SearchEngine
from tests.conftest import ROOT, save_tiny


# --------------------------------------------------------------------------- K means K
SHIPPED = os.path.join(ROOT, "weights")


@pytest.fixture(scope="module")
def msrc_library(data_root, tmp_path_factory, shipped_exported):
    """Every msrc-fos cutout (436 train + 125 test = 561) encoded by the shipped student: real, distinct
    embeddings (the tiny random student maps every cutout to nearly one point, all ties). Encoded by its
    exported graphs (the session's), which is faster; the library records the same student."""
    from fos.runtime import OrtBackend

    out = str(tmp_path_factory.mktemp("msrc") / "lib")
    w = shipped_exported[0]
    write_library(OrtBackend(w, os.path.join(w, "onnx")), data_root, out, progress=False)
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
    monkeypatch.setattr(S.engine, "get_backend", lambda *a, **k: made.append(a) or None)
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
# The package's layers, bottom first, as the README's Layout section draws them. A module may import
# from its own layer and the ones below, never from above. A name covers a module and, unless a longer
# name says otherwise, everything under it; every ``__main__`` (a command line), app.py and export/*.py
# sit on top of everything.
LAYERS = [
    ("core", {"fos.errors", "fos.config", "fos.vocab", "fos.threads", "fos.photometric", "fos.models.roi_align",
              "fos.evaluate.metrics", "fos.localize.metrics", "fos.inpaint.metrics", "fos.inpaint.masks",
              "fos.localize.config", "fos.inpaint.config", "fos.refer.config", "fos.refer.metrics"}),
    ("files and data", {"fos.checkpoint", "fos.data", "fos.preprocess", "fos.weights", "fos.library.store",
                        "fos.prefilter"}),
    ("images, tables, arguments", {"fos.composite", "fos.examples", "fos.cli", "fos.library", "fos.library.format",
                                   "fos.library.sources", "fos.localize.masks", "fos.localize", "fos.inpaint",
                                   "fos.refer", "fos.refer.phrases"}),
    ("networks", {"fos.models", "fos.localize.model", "fos.inpaint.model", "fos.refer.encoders", "fos.refer.model"}),
    ("models built and loaded", {"fos.registry", "fos.cost", "fos.localize.infer", "fos.inpaint.features"}),
    ("backends", {"fos.runtime"}),
    # the inpainter and the referrer as served: each opens its graph on a backend (fos.runtime.graphs)
    ("side models served", {"fos.inpaint.infer", "fos.refer.infer"}),
    ("scoring and export", {"fos.scoring", "fos.export"}),
    ("methods", {"fos.library.build", "fos.search", "fos.evaluate", "fos.train", "fos.localize.train",
                 "fos.localize.evaluate", "fos.library.grow", "fos.inpaint.train",
                 "fos.refer.train", "fos.refer.evaluate", "fos.inpaint.evaluate",
                 # what serves, prepared (graphs exported when stale, the default library encoded): the app
                 # starts with it, and the inpainting evaluation scores erase on the app's default library
                 "fos.bootstrap"}),
    ("benchmark", {"fos.bench"}),
]
TOP = len(LAYERS)  # command lines, the app, export/*.py


def _imports(path: str) -> set[str]:
    """Every ``fos`` module a file imports, at the top or inside functions (``from fos import cli`` -> fos.cli)."""
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom) and node.module == "fos":
            out |= {f"fos.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fos."):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("fos.")}
    return out


def layer_of(module: str, layers=LAYERS) -> int:
    """The layer of ``module``: the longest name of ``layers`` that is it or a package above it."""
    if module.endswith(".__main__") or not module.startswith("fos."):
        return len(layers)
    best = (-1, None)
    for i, (_, names) in enumerate(layers):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best[0]:
                best = (len(n), i)
    if best[1] is None:
        raise AssertionError(f"{module} is in no layer of the map: add it to LAYERS (and the README's Layout)")
    return best[1]


def import_problems(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """Imports that point up the layers, and import cycles, of ``graph`` (module -> modules it imports)."""
    names = [name for name, _ in layers] + ["command lines"]
    problems = [f"{m} ({names[layer_of(m, layers)]}) imports {d} ({names[layer_of(d, layers)]})"
                for m, deps in sorted(graph.items()) for d in sorted(deps) if layer_of(d, layers) > layer_of(m, layers)]
    seen, stack = set(), []

    def visit(m):
        if m in stack:
            problems.append("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            return
        if m in seen or m not in graph:
            return
        stack.append(m)
        for d in sorted(graph[m]):
            visit(d)
        stack.pop()
        seen.add(m)

    for m in sorted(graph):
        visit(m)
    return problems


def package_graph() -> dict[str, set[str]]:
    graph = {}
    files = [os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(ROOT, "fos")) for f in fs if f.endswith(".py")]
    files += [os.path.join(ROOT, "app.py")] + [os.path.join(ROOT, "export", f) for f in os.listdir(
        os.path.join(ROOT, "export")) if f.endswith(".py")]
    for path in files:
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        mod = rel[: -len(".__init__")] if rel.endswith(".__init__") else rel
        if mod != "fos":  # the package's own __init__ re-exports the registry and the checkpoint writer
            graph[mod] = _imports(path)
    return graph


def test_layers_point_one_way_and_there_is_no_cycle():
    graph = package_graph()
    assert len(graph) > 60 and {"fos.library.format", "fos.registry", "app"} <= set(graph)
    assert import_problems(graph) == []
    for m in graph:  # every module has a layer
        layer_of(m)
    # the file I/O layer builds no model, and the library's reader needs no network
    assert not {d for d in graph["fos.checkpoint"] if d.startswith(("fos.registry", "fos.models"))}
    assert not graph["fos.library.format"] & {"fos.scoring", "fos.runtime", "fos.registry"}


def test_the_layer_check_catches_upward_imports_and_cycles():
    """The check above can fail: one upward import or one cycle in a small graph is reported."""
    layers = [("low", {"fos.a"}), ("high", {"fos.b"})]
    assert import_problems({"fos.a": set(), "fos.b": {"fos.a"}}, layers) == []
    assert import_problems({"fos.a": {"fos.b"}, "fos.b": set()}, layers) == ["fos.a (low) imports fos.b (high)"]
    cyc = import_problems({"fos.b": {"fos.b.x"}, "fos.b.x": {"fos.b"}}, layers)
    assert cyc == ["import cycle: fos.b -> fos.b.x -> fos.b"]
    assert layer_of("fos.b.x.__main__", layers) == 2 and layer_of("fos.b.x", layers) == 1
    with pytest.raises(AssertionError, match="fos.c is in no layer"):
        layer_of("fos.c", layers)
    # the real map: a move that made the checkpoint layer import the registry would be caught
    real = package_graph()
    real["fos.checkpoint"] = real["fos.checkpoint"] | {"fos.registry"}
    assert "fos.checkpoint (files and data) imports fos.registry (models built and loaded)" in import_problems(real)


def test_scripts_run_without_path_tricks():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "export", "to_onnx.py"), "--help"], capture_output=True,
                       text=True, cwd="/")
    assert r.returncode == 0 and "Export the teacher" in r.stdout
    for f in ("export/to_onnx.py", "export/to_trt.py", "scripts/geometry_mix.py"):
        assert "sys.path" not in open(os.path.join(ROOT, f)).read(), f


def test_clis_find_the_shipped_weights_from_any_folder(tmp_path):
    """The default weights are found from the package, not the working folder: ``fos.inpaint`` with
    SPL (weights/inpaint.safetensors) runs from a folder that is not the repository."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, FOS_THREADS="1")
    bg = os.path.join(root, "assets", "library", "couch", sorted(os.listdir(os.path.join(root, "assets", "library", "couch")))[0])
    r = subprocess.run([sys.executable, "-m", "fos.inpaint", "--image", bg, "--box", "10,10,60,60", "--out", "erased.png"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "box erased with spl" in r.stdout, r.stderr[-2000:]
    assert (tmp_path / "erased.png").stat().st_size > 0


# --------------------------------------------------------------------------- one load for every model
def test_one_load_serves_every_model_of_a_weights_folder(tmp_path):
    """``fos.bootstrap.load(kind, weights, backend)`` for each kind the folder's manifest lists; a kind the
    folder lacks is one error naming the command that trains it; an unknown kind is refused."""
    from fos.bootstrap import load
    from fos.errors import UnknownModelError
    from fos.weights import MODELS, WeightsDir

    w = save_tiny(tmp_path / "w", seed=5)
    man = WeightsDir(w).manifest()
    assert list(man) == list(MODELS) == ["teacher", "student", "prefilter", "localizer", "inpainter", "referrer"]
    assert [k for k, v in man.items() if v["present"]] == ["teacher", "student"]
    b = load("student", w, "torch")
    assert b.student_sha256 == WeightsDir(w).student_sha256
    with pytest.raises(WeightsError, match=r"localizer.safetensors not found: train it with `python -m fos.localize.train`"):
        load("localizer", w)
    with pytest.raises(UnknownModelError, match="unknown model kind 'nope'"):
        load("nope", w)
    if os.path.isfile(os.path.join(SHIPPED, "refer.safetensors")):
        from fos.inpaint.infer import Inpainter
        from fos.localize.infer import Localizer
        from fos.refer.infer import Referrer

        assert isinstance(load("localizer", SHIPPED), Localizer)
        assert isinstance(load("referrer", SHIPPED, "torch"), Referrer)
        inp = load("inpainter", SHIPPED, "torch")
        assert isinstance(inp, Inpainter) and inp.backend == "torch" and inp.method == "spl"
