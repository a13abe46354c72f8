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
