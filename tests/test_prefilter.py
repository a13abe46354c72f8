"""The distilled prefilter (fos.prefilter, fos.train.prefilter): its geometry expansion by hand, its
training on real images, and that it keeps the head's top items where the embedding cosine does not."""
import json
import os

import numpy as np
import pytest

from fos.errors import WeightsError
from fos.prefilter import Prefilter, PrefilterCfg, ramps
from fos.preprocess import geometry_batch
from tests.conftest import save_tiny


def test_ramps_sum_to_the_distance_by_hand():
    # 4 ramps of width 1 on [0, 4]: centres 0.5 .. 3.5
    r, d = ramps(np.array([1.0, 2.5]), 0.0, 4.0, 4)
    assert d == 1.0 and r.tolist() == [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.5, 0.0]]
    # |1 - 2.5| = 1.5: one whole cell between, and a half cell that counts 0.5^2: off by at most half a ramp
    assert d * ((r[0] - r[1]) ** 2).sum() == pytest.approx(1.25)
    r, _ = ramps(np.array([1.0, 1.25]), 0.0, 4.0, 4)
    assert r[1].tolist() == [1.0, 0.25, 0.0, 0.0]
    assert d * ((r[0] - r[1]) ** 2).sum() == pytest.approx(0.25 ** 2)  # within a cell: (x - y)^2 / delta


@pytest.mark.parametrize("w", [[0.3, -0.5, 0.0, 0.7, 0.0], [0.3, -0.5, -4.0, 0.7, -2.0]])
def test_geometry_expansion_ranks_as_the_head_geometry_term(w):
    """With zero maps the prefilter's score is the head's geometry term up to one constant per query:
    exactly for the linear columns, within half a ramp per absolute difference otherwise."""
    cfg = PrefilterCfg()
    pf = Prefilter(cfg, np.zeros((8, cfg.dim)), np.zeros((8, cfg.dim)), np.array(w), "sha")
    rng = np.random.default_rng(0)
    bound = 0.5 * (abs(w[2]) * (cfg.aspect_hi - cfg.aspect_lo) + abs(w[4]) * (cfg.scale_hi - cfg.scale_lo)) / cfg.bins
    for _ in range(5):
        box = (5, 5, 5 + int(rng.integers(20, 400)), 5 + int(rng.integers(20, 400)))
        sizes = rng.integers(20, 600, (40, 2))  # aspects within the grid (beyond it the difference saturates)
        head = geometry_batch(box, sizes)[:, :5] @ np.array(w)
        pre = pf.scores(np.zeros(8), box, np.zeros((40, 8)), sizes)
        spread = np.ptp(head - pre)
        assert spread < 1e-4 if not (w[2] or w[4]) else spread <= 2 * bound
    assert pf.dims == cfg.dim + 1 + 2 * cfg.bins


def test_trained_prefilter_keeps_the_head_top_items_on_the_test_split(tmp_path, data_root):
    from fos.train.prefilter import PrefilterTrainCfg, fit

    w = save_tiny(tmp_path / "w")
    save = os.path.join(w, "prefilter.safetensors")
    report = fit(PrefilterTrainCfg(weights=w, data=[data_root], backend="torch", max_candidates=24, steps=60),
                 save, progress=False)["test_agreement"]
    pf, cos = report["prefilter"], report["embedding_cosine"]
    assert pf["queries"] == cos["queries"] == 125
    # the head's own top 1 is inside the prefilter's top 5 far more often than inside the cosine's
    assert pf["K=5"]["head_top1_kept"] >= 0.95 > cos["K=5"]["head_top1_kept"]
    assert pf["K=20"]["head_top5_kept"] >= 0.95
    loaded = Prefilter.load(save)
    info = json.load(open(os.path.join(w, "prefilter.json")))
    assert loaded.cfg == PrefilterCfg() and info["history"][-1]["kl"] <= info["history"][0]["kl"]


def test_search_serves_the_prefilter_of_its_own_student_only(tmp_path, data_root):
    from fos.library import Library
    from fos.library.build import write_library
    from fos.runtime import TorchBackend
    from fos.search import EngineCfg, SearchEngine, load_engine, weights_prefilter
    from fos.train.prefilter import PrefilterTrainCfg, fit
    from tests.test_data import _copy_test

    w = save_tiny(tmp_path / "w")
    fit(PrefilterTrainCfg(weights=w, data=[data_root], backend="torch", max_candidates=8, steps=5),
        os.path.join(w, "prefilter.safetensors"), progress=False)
    src, _ = _copy_test(data_root, tmp_path / "src", cats=("cow",))
    write_library(TorchBackend(w), str(src), str(tmp_path / "lib"), progress=False)
    eng = load_engine(str(tmp_path / "lib"), w, "torch", EngineCfg(prefilter_k=3))
    assert eng.prefilter is not None
    bg = os.path.join(src, "test", "bg_set1", eng.lib.items[0]["id"])
    out = eng.query(bg, (20, 30, 180, 150), "cow", k=3)
    assert out.n_scored == 3
    assert load_engine(str(tmp_path / "lib"), w, "torch", prefilter="embedding").prefilter is None
    # another student: the folder's prefilter is not used, and one given by hand is refused
    other = save_tiny(tmp_path / "other", seed=3)
    assert weights_prefilter(w, TorchBackend(other).student_sha256) is None
    with pytest.raises(WeightsError, match="distilled from another student"):
        SearchEngine(Library(str(tmp_path / "lib")), TorchBackend(w), prefilter=Prefilter(
            eng.prefilter.cfg, eng.prefilter.wq, eng.prefilter.wc, eng.prefilter.w, "0" * 64))
    with pytest.raises(WeightsError, match="prefilter .* not found"):
        Prefilter.load(str(tmp_path / "none.safetensors"))
