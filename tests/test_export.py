import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fos.checkpoint import save_checkpoint
from fos.registry import build_model
from fos.runtime import BackendError, OrtBackend, TorchBackend, get_backend, onnx_is_current

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# stated tolerances for max |onnxruntime - torch| on real images
TOL = {"float32": 1e-3, "float16": 5e-2}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from fos.export import export_onnx

    torch.manual_seed(0)
    w = tmp_path_factory.mktemp("weights")
    save_checkpoint(build_model("student", pretrained=True), str(w / "student.safetensors"))
    save_checkpoint(build_model("teacher", pretrained=True), str(w / "teacher.safetensors"))
    m = export_onnx(str(w), str(w / "onnx"), fp16_too=True)
    return str(w), str(w / "onnx"), m


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
    from fos.export import parity, real_inputs

    w, d, _ = exported
    diffs = parity(w, d, precision, real_inputs(data_root, n=4))
    assert set(diffs) >= {"student_bg.bg_part", "student_fg.fg_part", "student_head.score", "teacher.score"}
    assert max(diffs.values()) <= TOL[precision], diffs


def test_dynamic_batch(exported):
    w, d, _ = exported
    ort_b = OrtBackend(w, d)
    for n in (1, 3, 7):
        fg = np.random.default_rng(n).uniform(-1, 1, (n, 3, 224, 224)).astype(np.float32)
        part, emb = ort_b.encode_foreground(fg)
        assert part.shape == (n, 128, 7, 7) and emb.shape == (n, 128)


def test_stale_and_mismatched_graphs(exported, tmp_path):
    w, d, _ = exported
    assert onnx_is_current(w, d)
    other = tmp_path / "w2"
    other.mkdir()
    torch.manual_seed(5)
    save_checkpoint(build_model("student", pretrained=False), str(other / "student.safetensors"))
    assert not onnx_is_current(str(other), d)
    with pytest.raises(BackendError, match="exported from other weights"):
        OrtBackend(str(other), d)
    with pytest.raises(BackendError, match="manifest.json missing"):
        OrtBackend(str(other), str(tmp_path / "none"))
    # graphs exported by a version that passed 3 geometry columns: stale, re-exported by ensure_onnx
    import shutil

    old = tmp_path / "old_onnx"
    shutil.copytree(d, old)
    m = json.loads((old / "manifest.json").read_text())
    assert m["graphs"]["student_head:float32"]["inputs"]["geom"] == ["batch", 5]
    for g in m["graphs"].values():
        if "geom" in g["inputs"]:
            g["inputs"]["geom"] = ["batch", 3]
    (old / "manifest.json").write_text(json.dumps(m))
    assert not onnx_is_current(w, str(old))
    with pytest.raises(BackendError, match="geometry width"):
        OrtBackend(w, str(old))


def test_failed_export_keeps_earlier_files(exported, monkeypatch):
    from fos import export as E

    w, d, _ = exported
    before = open(os.path.join(d, "student_head.onnx"), "rb").read()

    def boom(*a, **k):
        open(a[2], "wb").write(b"partial")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", boom)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        E.export_onnx(w, d, fp16_too=False)
    assert open(os.path.join(d, "student_head.onnx"), "rb").read() == before
    assert not [f for f in os.listdir(d) if f.endswith(".tmp")]


SHIPPED = os.path.join(ROOT, "weights", "student.safetensors")


@pytest.mark.skipif(not os.path.exists(SHIPPED), reason="shipped weights missing")
def test_same_top5_ranking_as_torch_on_test_queries(data_root, tmp_path):
    """The shipped student through ONNX Runtime ranks every msrc-fos test query's top 5 as torch does."""
    from fos.data import load_test
    from fos.evaluate import StudentScorer, score_testset
    from fos.export import export_onnx

    weights = os.path.join(ROOT, "weights")
    d = str(tmp_path / "onnx")
    export_onnx(weights, d, fp16_too=True)
    ts = load_test(data_root)
    ref = score_testset(ts, StudentScorer(TorchBackend(weights)), progress=False)
    for precision, tol in (("float32", 1e-4), ("float16", 2e-2)):
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


def test_auto_backend_prefers_onnxruntime(exported, caplog):
    w, d, _ = exported
    import logging

    caplog.set_level(logging.INFO)
    b = get_backend("auto", w)
    if importlib.util.find_spec("tensorrt") is None:
        assert b.name == "onnxruntime" and "backend auto: picked onnxruntime" in caplog.text


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_missing_is_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "export", "to_trt.py"), "--onnx", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "requirements-gpu.txt" in r.stderr
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        get_backend("tensorrt", str(tmp_path))


def test_tensorrt_engines_build_and_match(exported, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installable from the registries reachable here")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    from fos.trt import TrtBackend, build_engine

    w, d, _ = exported
    out = str(tmp_path / "trt")
    for g in ("teacher", "student_bg", "student_fg", "student_head"):
        build_engine(d, g, out, fp16=False, max_batch=16)
    tb, rb = TorchBackend(w), TrtBackend(w, out, d)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 224, 224)).astype(np.float32)
    assert np.abs(tb.encode_foreground(x)[0] - rb.encode_foreground(x)[0]).max() < 1e-2
    with pytest.raises(BackendError, match="past the engine's maximum"):
        rb.encode_foreground(np.zeros((17, 3, 224, 224), np.float32))
    assert trt.__version__
