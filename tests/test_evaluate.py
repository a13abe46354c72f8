import json
import math
import os

import numpy as np
import pytest
import torch

from fos import evaluate as E
from fos.baselines import Candidates
from fos.data import load_test
from fos.preprocess import foreground_input, geometry_features, load_image, norm_to_pixel_box, prepare_background
from fos.registry import build_model
from fos.runtime import TorchBackend
from tests.test_data import write_rfosd_fixture

CATS = ["cat", "dog"]


@pytest.fixture(scope="module")
def ts(data_root):
    return load_test(data_root)


def test_aspect_is_perfect_with_exact_boxes_and_not_with_loose_ones(ts):
    # every msrc-fos foreground is cropped to its own box, so its aspect ratio identifies it
    exact = E.evaluate(ts, E.make_scorer("aspect"), categories=CATS, progress=False)
    assert exact["recall@1"] == 1.0
    loose = E.evaluate(ts, E.make_scorer("aspect"), box_jitter=0.5, categories=CATS, progress=False)
    assert loose["recall@1"] < 1.0
    assert loose["recall@20"] == 1.0  # fewer than 20 candidates per category


def test_geometry_control_scores_by_hand():
    from PIL import Image

    from fos.baselines import GeometryScorer

    bg = prepare_background(Image.new("RGB", (300, 200), "gray"), (0, 0, 100, 50))  # box aspect 2, area 5000
    ims = [Image.new("RGB", s, "white") for s in [(100, 50), (200, 100), (50, 50), (400, 200)]]
    got = GeometryScorer().score(bg, Candidates(["a", "b", "c", "d"], ims, {}))
    # -(|log aspect difference| + 0.5 |log sqrt(area ratio)|): the box's shape at 1x, 2x and 4x its
    # width, and a square of half its area
    want = [0.0, -0.5 * math.log(2), -(math.log(2) + 0.5 * 0.5 * math.log(2)), -0.5 * math.log(4)]
    assert got == pytest.approx(want, abs=1e-6)
    assert list(np.argsort(-got)) == [0, 1, 3, 2]


def test_random_is_seeded(ts):
    a = E.evaluate(ts, E.make_scorer("random", seed=1), categories=CATS, progress=False)
    b = E.evaluate(ts, E.make_scorer("random", seed=1), categories=CATS, progress=False)
    assert a == b and 0 <= a["recall@1"] <= 1


def test_cli_json_has_exact_keys(data_root, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert E.main(["--data", data_root, "--model", "color", "--categories", "cat,dog", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) == {"model", "n_queries", "recall@1", "recall@5", "recall@10", "recall@20", "per_category"}
    assert res["n_queries"] == 11 and set(res["per_category"]) == set(CATS)
    assert np.mean([m["recall@1"] for m in res["per_category"].values()]) == pytest.approx(res["recall@1"])
    assert "MEAN (per category)" in capsys.readouterr().out


def test_cli_errors_are_one_line(data_root, tmp_path, capsys):
    assert E.main(["--data", data_root, "--model", "student", "--weights", str(tmp_path / "no.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
    assert E.main(["--data", str(tmp_path), "--model", "aspect"]) == 2
    assert "error:" in capsys.readouterr().err
    assert E.main(["--data", data_root, "--model", "aspect", "--categories", "unicorn"]) == 2
    assert "unknown categories ['unicorn']" in capsys.readouterr().err


def first_query(ts, cat):
    """The candidates of ``cat`` and its first query background (exact box)."""
    cs = ts.categories[cat]
    cands = Candidates(cs.fg_names, [load_image(p) for p in cs.fg_paths], {})
    img = load_image(cs.queries[0].bg_path)
    return cands, prepare_background(img, norm_to_pixel_box(cs.queries[0].bbox, *img.size))


def test_student_cached_scoring_equals_pairwise_forward(ts):
    torch.manual_seed(0)
    model = build_model("student", pretrained=False).eval()
    scorer = E.StudentScorer(TorchBackend(student=model))
    cands, bg = first_query(ts, "cat")
    scorer.prepare(cands)
    fast = scorer.score(bg, cands)
    n = len(cands.images)
    with torch.no_grad():
        slow = model(bg.tensor[None].expand(n, -1, -1, -1), bg.crop_box_net[None].expand(n, -1),
                     torch.stack([foreground_input(im) for im in cands.images]),
                     torch.from_numpy(np.stack([geometry_features(bg.box, im.size) for im in cands.images])))
    assert np.allclose(fast, slow.numpy(), atol=1e-5)


def test_appearance_only_removes_exactly_the_geometry_term(ts):
    torch.manual_seed(0)
    model = build_model("student", pretrained=False).eval()
    with torch.no_grad():
        model.head.geom_fc.weight.copy_(torch.tensor([[0.5, -0.25, -4.0, 0.3, -2.0]]))
    full, app = E.StudentScorer(TorchBackend(student=model)), E.StudentScorer(TorchBackend(student=model), True)
    cands, bg = first_query(ts, "dog")
    full.prepare(cands)
    g = np.stack([geometry_features(bg.box, im.size) for im in cands.images])
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731  (scores are sigmoids)
    diff = logit(full.score(bg, cands).astype(np.float64)) - logit(app.score(bg, cands).astype(np.float64))
    assert np.allclose(diff, g @ np.array([0.5, -0.25, -4.0, 0.3, -2.0]), atol=1e-3)
    with pytest.raises(E.InputError, match="applies to trained models"):
        E.make_scorer("aspect", appearance_only=True)


def test_rfosd_fixture_metrics(tmp_path):
    write_rfosd_fixture(tmp_path)
    res = E.evaluate(load_test(str(tmp_path)), E.make_scorer("aspect"), progress=False)
    assert {"mAP", "mAP-20", "precision@1", "precision@5", "precision@10", "precision@20"} <= res.keys()
    assert res["n_queries"] == 3 and 0 <= res["mAP"] <= 1


@pytest.mark.skipif(not os.path.exists("weights/student.safetensors"), reason="shipped weights missing")
def test_shipped_student_beats_every_baseline_on_real_images(ts):
    """The README's claim on one box seed: loose boxes, all 125 msrc-fos test queries."""
    r1 = {m: E.evaluate(ts, E.make_scorer(m), box_jitter=0.5, seed=0, progress=False)["recall@1"]
          for m in ("student", "random", "aspect", "geometry", "color", "imagenet")}
    assert all(r1["student"] > v for m, v in r1.items() if m != "student"), r1
