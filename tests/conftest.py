import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("FOS_DATA", os.path.join(ROOT, "..", "shared", "data", "msrc-fos"))
SHIPPED = os.path.join(ROOT, "weights", "student.safetensors")


def pytest_collection_modifyitems(items):
    # tests that use the real dataset are marked `data` (run them alone with `-m data`)
    for item in items:
        if "data_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)


@pytest.fixture(scope="session")
def data_root():
    if not os.path.isdir(os.path.join(DATA, "train")):
        pytest.skip(f"msrc-fos not found at {DATA} (set FOS_DATA to the dataset root)")
    return DATA


def save_tiny(folder, seed: int = 0, teacher: bool = True) -> str:
    """A weights folder with the tiny registered models (random init, no weights wheel needed)."""
    from fos.checkpoint import save_checkpoint
    from fos.registry import build_model

    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    save_checkpoint(build_model("student_tiny"), os.path.join(folder, "student.safetensors"))
    if teacher:
        save_checkpoint(build_model("teacher_tiny"), os.path.join(folder, "teacher.safetensors"))
    return str(folder)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A weights folder holding the tiny student and teacher (seed 0)."""
    return save_tiny(tmp_path_factory.mktemp("tiny_weights"))


@pytest.fixture(autouse=True)
def _chdir_root(monkeypatch):
    monkeypatch.chdir(ROOT)


SHIPPED_FILES = ("student", "teacher", "localizer", "inpaint", "refer")


@pytest.fixture(scope="session")
def shipped_exported(tmp_path_factory):
    """A scratch copy of the shipped weights with every ONNX graph exported once (parity checked on real
    msrc-fos images when they are there): what the app, the export tests and the bench tests share, so
    the slow export runs once per test session. Returns (weights folder, the manifest)."""
    import json
    import shutil

    from fos.export.onnx import export_and_check

    if not os.path.exists(SHIPPED):
        pytest.skip("shipped weights missing")
    w = tmp_path_factory.mktemp("shipped") / "weights"
    w.mkdir()
    for name in SHIPPED_FILES:
        for ext in (".safetensors", ".json"):
            src = os.path.join(ROOT, "weights", name + ext)
            if os.path.isfile(src):
                shutil.copy(src, w / (name + ext))
    data = DATA if os.path.isdir(os.path.join(DATA, "photos")) else None
    export_and_check(str(w), str(w / "onnx"), fp16=False, data=data, progress=False)
    if (w / "inpaint.safetensors").is_file():
        from fos.export.inpaint import export_inpainter

        export_inpainter(str(w / "inpaint.safetensors"), str(w / "onnx" / "inpaint.onnx"), data)
    if (w / "refer.safetensors").is_file():
        from fos.export.refer import export_referrer

        export_referrer(str(w / "refer.safetensors"), str(w / "onnx" / "refer.onnx"), data)
    return str(w), json.load(open(w / "onnx" / "manifest.json"))
