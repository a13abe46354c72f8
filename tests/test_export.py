import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fos.preprocess import GEOMETRY_DIM
from fos.runtime import BackendError, OrtBackend, TorchBackend, get_backend, onnx_is_current
from tests.conftest import ROOT, SHIPPED, save_tiny

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# stated tolerances for max |onnxruntime - torch| on real images
TOL = {"float32": 1e-3, "float16": 5e-2}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from fos.export.onnx import export_onnx

    w = save_tiny(tmp_path_factory.mktemp("weights"))
    m = export_onnx(w, os.path.join(w, "onnx"), fp16_too=True, progress=False)
    return w, os.path.join(w, "onnx"), m


def test_manifest_and_graphs(exported):
    w, d, m = exported
    assert set(m["graphs"]) == {f"{g}:{p}" for g in ("teacher", "student_bg", "student_fg", "student_head")
                                for p in ("float32", "float16")}
    on_disk = json.load(open(os.path.join(d, "manifest.json")))
    assert on_disk["opset"] == m["opset"] and on_disk["source_weights"]["student"]["sha256"]
    assert m["graphs"]["student_bg:float32"]["inputs"] == {"background": ["batch", 3, 224, 224], "crop_box": ["batch", 4]}
    assert not [f for f in os.listdir(d) if f.endswith(".tmp")]


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_parity_on_real_images(exported, data_root, precision):
    from fos.export.onnx import parity, real_inputs

    w, d, _ = exported
    diffs = parity(w, d, precision, real_inputs(data_root, n=4))
    assert set(diffs) >= {"student_bg.bg_part", "student_fg.fg_part", "student_head.score", "teacher.score"}
    assert max(diffs.values()) <= TOL[precision], diffs


def test_dynamic_batch(exported):
    w, d, _ = exported
    ort_b = OrtBackend(w, d)
    for n in (1, 3, 7):
        fg = np.random.default_rng(n).uniform(-1, 1, (n, 3, 224, 224)).astype(np.float32)
        part, emb = ort_b.student_fg(fg)
        assert part.shape == (n, 32, 7, 7) and emb.shape == (n, 16)  # 16 of conv1 + 16 of the interaction


def test_stale_and_mismatched_graphs(exported, tmp_path):
    w, d, _ = exported
    assert onnx_is_current(w, d)
    other = save_tiny(tmp_path / "w2", seed=5, teacher=False)
    assert not onnx_is_current(str(other), d)
    with pytest.raises(BackendError, match="exported from other weights"):
        OrtBackend(str(other), d)
    with pytest.raises(BackendError, match="manifest.json missing"):
        OrtBackend(str(other), str(tmp_path / "none"))
    # graphs exported by a version that passed 3 or 5 geometry columns: stale, re-exported by ensure_onnx
    import shutil

    old = tmp_path / "old_onnx"
    shutil.copytree(d, old)
    m = json.loads((old / "manifest.json").read_text())
    assert m["graphs"]["student_head:float32"]["inputs"]["geom"] == ["batch", GEOMETRY_DIM]
    for g in m["graphs"].values():
        if "geom" in g["inputs"]:
            g["inputs"]["geom"] = ["batch", 5]
    (old / "manifest.json").write_text(json.dumps(m))
    assert not onnx_is_current(w, str(old))
    with pytest.raises(BackendError, match="geometry width"):
        OrtBackend(w, str(old))


def test_failed_export_keeps_earlier_files(exported, monkeypatch):
    from fos.export import onnx as E

    w, d, _ = exported
    before = open(os.path.join(d, "student_head.onnx"), "rb").read()

    def boom(*a, **k):
        open(a[2], "wb").write(b"partial")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", boom)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        E.export_onnx(w, d, fp16_too=False, progress=False)
    assert open(os.path.join(d, "student_head.onnx"), "rb").read() == before
    assert not [f for f in os.listdir(d) if f.endswith(".tmp")]


@pytest.mark.skipif(not os.path.exists(SHIPPED), reason="shipped weights missing")
@pytest.mark.shipped
def test_shipped_weights_export_with_parity_and_rank_test_queries_alike(data_root, shipped_exported):
    """The shipped student and teacher through the current exporter: parity on real images, and every
    msrc-fos test query's top 5 ranked by ONNX Runtime as by torch."""
    from fos.data import load_test
    from fos.evaluate import StudentScorer, score_testset

    weights, m = shipped_exported  # exported once per session, with the parity check on msrc-fos images
    d = os.path.join(weights, "onnx")
    assert set(m["parity"]) == {"float32"} and m["parity"]["float32"]["images"] >= 4
    for precision, p in m["parity"].items():
        assert max(p["max_abs_diff"].values()) <= TOL[precision], (precision, p)
    ts = load_test(data_root)
    ref = score_testset(ts, StudentScorer(TorchBackend(weights)), progress=False)
    for precision, tol in (("float32", 1e-4),):
        got = score_testset(ts, StudentScorer(OrtBackend(weights, d, precision)), progress=False)
        for cat in ref:
            a, b = ref[cat][0], got[cat][0]
            assert np.abs(a - b).max() <= tol, (precision, cat)
            for row_a, row_b in zip(a, b):
                top_a = np.argsort(-row_a, kind="stable")[:5]
                top_b = np.argsort(-row_b, kind="stable")[:5]
                gaps = np.diff(np.sort(row_a)[::-1][:6])
                if np.all(np.abs(gaps) > 2 * tol):  # no near-tie inside the top 5
                    assert list(top_a) == list(top_b), (precision, cat)


def test_auto_backend_prefers_onnxruntime(exported, caplog, tmp_path):
    w, d, _ = exported
    import logging

    caplog.set_level(logging.INFO)
    if torch.cuda.is_available():
        pytest.skip("with a GPU, auto prefers GPU runtimes (TensorRT, ONNX Runtime CUDA, torch CUDA)")
    b = get_backend("auto", w)
    assert b.name == "onnxruntime" and "backend auto: picked onnxruntime" in caplog.text
    # without current graphs auto falls back to torch, and says why; nothing is exported by a backend
    bare = save_tiny(tmp_path / "bare", seed=9)
    caplog.clear()
    b2 = get_backend("auto", bare)
    assert b2.name == "torch" and "manifest.json missing" in caplog.text
    assert not os.path.exists(os.path.join(bare, "onnx"))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_missing_is_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "export", "to_trt.py"), "--onnx", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "requirements-gpu.txt" in r.stderr
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        get_backend("tensorrt", str(tmp_path))


def test_engine_checks_need_no_tensorrt(tmp_path):
    """The checks before an engine is opened or a batch sent, on hand-written engine JSONs."""
    from fos.checkpoint import file_sha256
    from fos.runtime.trt import engine_problem, profile_problem

    onnx = tmp_path / "refer.onnx"
    onnx.write_bytes(b"graph")
    engine = tmp_path / "refer.engine"
    sha = file_sha256(str(onnx))
    assert "no TensorRT engine" in engine_problem(str(engine), sha, str(onnx))
    engine.write_bytes(b"plan")
    gpu = {"gpu_name": "NVIDIA H100", "compute_capability": "9.0"}
    (tmp_path / "refer.json").write_text(json.dumps({"onnx_sha256": sha, "tensorrt_version": "10.9.0", **gpu}))
    assert engine_problem(str(engine), sha, str(onnx), "10.9.0", gpu) == ""
    assert "exported from other weights" in engine_problem(str(engine), "0" * 64, str(onnx))
    assert "built with TensorRT 10.9.0, this is 11.0.0" in engine_problem(str(engine), sha, str(onnx), "11.0.0")
    other = {"gpu_name": "NVIDIA L4", "compute_capability": "8.9"}
    assert "built for NVIDIA H100 (sm 9.0), this GPU is NVIDIA L4 (sm 8.9)" in \
        engine_problem(str(engine), sha, str(onnx), "10.9.0", other)
    (tmp_path / "refer.json").write_text("{not json")
    assert "no TensorRT engine" in engine_problem(str(engine), sha, str(onnx))

    shapes = {"tokens": {"min": [1, 1], "opt": [9, 4], "max": [9, 12]}}
    assert profile_problem("refer", shapes, {"tokens": np.zeros((9, 12)), "image": np.zeros((1, 3, 8, 8))}) == ""
    assert "batch 10 for tokens is past the engine's maximum 9" in profile_problem("refer", shapes, {"tokens": np.zeros((10, 3))})
    assert "dimension 1 13 for tokens is past the engine's maximum 12" in \
        profile_problem("refer", shapes, {"tokens": np.zeros((9, 13))})
    assert "tokens has 1 dimensions, the engine takes 2" in profile_problem("refer", shapes, {"tokens": np.zeros(9)})


def test_to_trt_checks_the_graph_names_first(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "export", "to_trt.py"), "--onnx", str(tmp_path),
                        "--graphs", "student_bg,bogus"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.strip() == ("error: --graphs: unknown graph bogus; use teacher, student_bg, "
                                                     "student_fg, student_head, inpaint, refer")


def test_batch_profiles_of_the_four_graphs():
    from fos.export.trt import batch_profiles

    got = batch_profiles({"bg_part": [1, 8, 7, 7], "fg_part": [-1, 8, 7, 7], "geom": [-1, 17], "k": [2]}, 1, 8, 64)
    assert got == {"fg_part": {"min": [1, 8, 7, 7], "opt": [8, 8, 7, 7], "max": [64, 8, 7, 7]},
                   "geom": {"min": [1, 17], "opt": [8, 17], "max": [64, 17]}}
    got = batch_profiles({"bg_part": [-1, 8, 7, 7]}, 2, 4, 8)
    assert got["bg_part"] == {"min": [1, 8, 7, 7], "opt": [1, 8, 7, 7], "max": [1, 8, 7, 7]}
    with pytest.raises(BackendError, match="dynamic non-batch dims"):
        batch_profiles({"tokens": [-1, -1]}, 1, 8, 64)
    with pytest.raises(ValueError, match="min_batch <= opt_batch"):
        batch_profiles({}, 4, 2, 8)


def test_tensorrt_engines_build_and_match(exported, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installable from the registries reachable here")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    from fos.export.trt import build_engine
    from fos.runtime.trt import TrtBackend

    w, d, _ = exported
    out = str(tmp_path / "trt")
    for g in ("teacher", "student_bg", "student_fg", "student_head"):
        build_engine(d, g, out, fp16=False, max_batch=16)
        meta = json.load(open(os.path.join(out, f"{g}.json")))
        assert meta["tensorrt_version"] == trt.__version__ and meta["shapes"][next(iter(meta["shapes"]))]["max"][0] in (1, 16)
    tb, rb = TorchBackend(w), TrtBackend(w, out, d)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 224, 224)).astype(np.float32)
    assert np.abs(tb.student_fg(x)[0] - rb.student_fg(x)[0]).max() < 1e-2
    g = np.random.default_rng(1).normal(size=(4, GEOMETRY_DIM)).astype(np.float32)
    assert np.abs(tb.teacher(x, g) - rb.teacher(x, g)).max() < 1e-2
    with pytest.raises(BackendError, match="past the engine's maximum"):
        rb.student_fg(np.zeros((17, 3, 224, 224), np.float32))


# --------------------------------------------------------------------------- int8
def test_int8_graphs_calibrate_on_real_images_and_ship_only_when_they_rank_alike(tmp_path, data_root):
    from fos.data import load_test
    from fos.evaluate.parity import int8_gate
    from fos.export.onnx import export_onnx, real_inputs
    from fos.export.quantize import INT8_GRAPHS, calibration_feeds, mark_shipped, quantize_graphs

    w = save_tiny(tmp_path / "w")
    onnx = os.path.join(w, "onnx")
    export_onnx(w, onnx, progress=False)
    fp32 = OrtBackend(w, onnx, "float32")
    feeds = calibration_feeds(data_root, 8, fp32)  # 8 training images: one batch per graph, 8 head queries
    assert [len(feeds[g]) for g in INT8_GRAPHS] == [1, 1, 8, 1]
    assert feeds["student_head"][0]["bg_part"].shape[0] == 1 and np.isfinite(feeds["teacher"][0]["geom"]).all()
    m = quantize_graphs(onnx, feeds, progress=False)
    assert all(m["graphs"][f"{g}:int8"]["shipped"] is False and os.path.isfile(os.path.join(onnx, f"{g}_int8.onnx"))
               for g in INT8_GRAPHS)
    assert OrtBackend(w, onnx, "int8").int8 == set()  # nothing passed a check yet: float32 everywhere
    # on real test images the int8 graphs are close to float32, and not the same graph
    x = real_inputs(data_root)
    b8 = OrtBackend(w, onnx, "int8", int8_graphs=set(INT8_GRAPHS))
    a, c = fp32.student_bg(x["background"], x["crop_box"])[0], b8.student_bg(x["background"], x["crop_box"])[0]
    assert 0 < np.abs(a - c).max() < 0.1 * np.abs(a).max()
    ta, tc = fp32.teacher(x["composite"], x["geom"]), b8.teacher(x["composite"], x["geom"])
    assert 0 < np.abs(ta - tc).max() < 0.1
    # the ranking check on real queries decides what ships, and the int8 backend serves exactly that
    gate = int8_gate(w, onnx, load_test(data_root), seeds=(0,), categories=["cow", "dog"])
    assert set(gate) == set(INT8_GRAPHS)
    for g, r in gate.items():
        assert 0 <= r["top5_overlap"] <= 1 and r["recall@1_drop"] == pytest.approx(r["recall@1_float32"] - r["recall@1_int8"])
        alone = abs(r["recall@1_drop"]) <= 0.005
        assert r["shipped"] == (alone and ("together" not in r or abs(r["together"]["recall@1_drop"]) <= 0.005))
    mark_shipped(onnx, gate)
    assert OrtBackend(w, onnx, "int8").int8 == {g for g, r in gate.items() if r["shipped"]}


def test_ranking_agreement_by_hand(data_root):
    """A scorer against itself keeps every top-5 item and Recall@1; against a tie-everything scorer the
    drop is its Recall@1 minus chance's."""
    from fos import evaluate as E
    from fos.data import load_test
    from fos.evaluate.parity import ranking_agreement

    ts = load_test(data_root)
    same = ranking_agreement(ts, E.make_scorer("aspect"), E.make_scorer("aspect"), seeds=(0,), categories=["cow"])
    assert same["recall@1_drop"] == 0 and same["top5_overlap"] == 1
    other = ranking_agreement(ts, E.make_scorer("aspect"), E.make_scorer("random"), seeds=(0,), categories=["cow"])
    r_aspect = E.evaluate(ts, E.make_scorer("aspect"), 0.5, 0, categories=["cow"], progress=False)["recall@1"]
    assert other["recall@1_float32"] == pytest.approx(r_aspect) and other["top5_overlap"] < 1


def test_int8_without_calibration_images_says_what_to_pass(tmp_path, capsys):
    import importlib

    to_onnx = importlib.import_module("export.to_onnx")
    w = save_tiny(tmp_path / "w")
    assert to_onnx.main(["--weights", w, "--int8", "--data", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "--int8 calibrates on real training images: pass --data with a FOSD dataset root" in err
    assert not os.path.exists(os.path.join(w, "onnx"))  # refused before the export began
