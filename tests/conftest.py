import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("FOS_DATA", os.path.join(ROOT, "..", "shared", "data", "msrc-fos"))


@pytest.fixture(scope="session")
def data_root():
    if not os.path.isdir(os.path.join(DATA, "train")):
        pytest.skip(f"msrc-fos not found at {DATA} (set FOS_DATA to the dataset root)")
    return DATA


@pytest.fixture(autouse=True)
def _chdir_root(monkeypatch):
    monkeypatch.chdir(ROOT)
