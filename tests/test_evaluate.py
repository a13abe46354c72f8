import json
import math
import os

import numpy as np
import pytest
import torch

from fos import evaluate as E
from fos.data import load_test
from fos.evaluate.__main__ import main as evaluate_main
from fos.evaluate.baselines import Candidates
from fos.preprocess import foreground_input, geometry_batch, load_image, norm_to_pixel_box, prepare_background
from fos.registry import build_model
from fos.runtime import TorchBackend
from tests.conftest import SHIPPED
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

    from fos.evaluate.baselines import GeometryScorer

    bg = prepare_background(Image.new("RGB", (300, 200), "gray"), (0, 0, 100, 50))  # box aspect 2, area 5000
    ims = [Image.new("RGB", s, "white") for s in [(100, 50), (200, 100), (50, 50), (400, 200)]]
    got = GeometryScorer().score(bg, Candidates(["a", "b", "c", "d"], ims, {}))
    # -(|log aspect difference| + 0.5 |log sqrt(area ratio)|): the box's shape at 1x, 2x and 4x its
    # width, and a square of half its area
    want = [0.0, -0.5 * math.log(2), -(math.log(2) + 0.5 * 0.5 * math.log(2)), -0.5 * math.log(4)]
    assert got == pytest.approx(want, abs=1e-6)
    assert list(np.argsort(-got)) == [0, 1, 3, 2]


def test_random_is_seeded_and_seeds_differ(ts):
    a = E.evaluate(ts, E.make_scorer("random", seed=1), categories=CATS, progress=False)
    b = E.evaluate(ts, E.make_scorer("random", seed=1), categories=CATS, progress=False)
    assert a == b
    s1 = E.make_scorer("random", seed=1).score(prepare_background(load_image(ts.categories["cat"].queries[0].bg_path),
                                                                  (0, 0, 50, 50)), Candidates(list("abcdef"), [], {}))
    s2 = E.make_scorer("random", seed=2).score(prepare_background(load_image(ts.categories["cat"].queries[0].bg_path),
                                                                  (0, 0, 50, 50)), Candidates(list("abcdef"), [], {}))
    assert not np.array_equal(s1, s2)


def test_cli_json_has_exact_keys(data_root, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert evaluate_main(["--data", data_root, "--model", "color", "--categories", "cat,dog", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) == {"model", "n_queries", "recall@1", "recall@5", "recall@10", "recall@20", "per_category"}
    assert res["n_queries"] == 11 and set(res["per_category"]) == set(CATS)
    assert np.mean([m["recall@1"] for m in res["per_category"].values()]) == pytest.approx(res["recall@1"])
    assert "MEAN (per category)" in capsys.readouterr().out


def test_cli_errors_are_one_line(data_root, tmp_path, capsys):
    assert evaluate_main(["--data", data_root, "--model", "student", "--checkpoint", str(tmp_path / "no.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
    assert evaluate_main(["--data", str(tmp_path), "--model", "aspect"]) == 2
    assert "error:" in capsys.readouterr().err
    assert evaluate_main(["--data", data_root, "--model", "aspect", "--categories", "unicorn"]) == 2
    assert "unknown categories ['unicorn']" in capsys.readouterr().err


@pytest.mark.parametrize("model,msg", [
    ("resnet", "unknown model 'resnet'; use a trained model .* or a baseline \\(random, aspect"),
    ("teacher_typo", "unknown model 'teacher_typo'"),
    ("student_vgg19", "--model student_vgg19 needs --checkpoint FILE"),
])
def test_a_typo_never_runs_another_model(data_root, model, msg, capsys):
    # before: resnet ran the student, teacher_typo the teacher, student_vgg19 the shipped MobileNet student
    with pytest.raises(E.InputError, match=msg):
        E.make_scorer(model)
    assert evaluate_main(["--data", data_root, "--model", model]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


@pytest.mark.parametrize("args,msg", [
    (["--seeds", "a,b"], "--seeds: expected comma-separated whole numbers"),
    (["--box-jitter", "-1"], "--box-jitter: must be between 0 and 10"),
    (["--threads", "-2"], "--threads: must be 0 or more"),
])
def test_bad_arguments_are_usage_errors_not_tracebacks(data_root, args, msg, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--data", data_root, "--model", "aspect", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def first_query(ts, cat):
    """The candidates of ``cat`` and its first query background (exact box)."""
    cs = ts.categories[cat]
    cands = Candidates(cs.fg_names, [load_image(p) for p in cs.fg_paths], {})
    img = load_image(cs.queries[0].bg_path)
    return cands, prepare_background(img, norm_to_pixel_box(cs.queries[0].bbox, *img.size))


def test_student_cached_scoring_equals_pairwise_forward(ts):
    torch.manual_seed(0)
    model = build_model("student_tiny").eval()
    scorer = E.StudentScorer(TorchBackend(student=model))
    cands, bg = first_query(ts, "cat")
    scorer.prepare(cands)
    fast = scorer.score(bg, cands)
    n = len(cands.images)
    with torch.no_grad():
        slow = model(bg.tensor[None].expand(n, -1, -1, -1), bg.crop_box_net[None].expand(n, -1),
                     torch.stack([foreground_input(im) for im in cands.images]),
                     torch.from_numpy(geometry_batch(bg.box, [im.size for im in cands.images])))
    assert np.allclose(fast, slow.numpy(), atol=2e-3)  # the foreground halves are cached in float16


def test_appearance_only_removes_exactly_the_geometry_term(ts):
    torch.manual_seed(0)
    model = build_model("student_tiny").eval()
    with torch.no_grad():
        model.head.geom_fc.weight.copy_(torch.tensor([[0.5, -0.25, -4.0, 0.3, -2.0]]))
    full, app = E.StudentScorer(TorchBackend(student=model)), E.StudentScorer(TorchBackend(student=model), True)
    cands, bg = first_query(ts, "dog")
    full.prepare(cands)
    g = geometry_batch(bg.box, [im.size for im in cands.images])
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731  (scores are sigmoids)
    diff = logit(full.score(bg, cands).astype(np.float64)) - logit(app.score(bg, cands).astype(np.float64))
    assert np.allclose(diff, g[:, :5] @ np.array([0.5, -0.25, -4.0, 0.3, -2.0]), atol=1e-3)
    with pytest.raises(E.InputError, match="applies to trained models"):
        E.make_scorer("aspect", appearance_only=True)


def test_evaluate_and_search_rank_one_query_identically(ts, tiny_weights, tmp_path):
    """The evaluation runs the search's scoring: one query's candidate order is the same both ways."""
    from fos.library.build import write_library
    from fos.search import EngineCfg, SearchEngine
    from fos.library import Library
    from tests.test_data import _copy_test

    root, _ = _copy_test(ts.root, tmp_path, cats=("cat",))
    backend = TorchBackend(tiny_weights)
    write_library(backend, str(root), str(tmp_path / "lib"), progress=False)
    eng = SearchEngine(Library(str(tmp_path / "lib")), backend, EngineCfg(prefilter_k=0))
    cands, bg = first_query(ts, "cat")
    scorer = E.StudentScorer(backend)
    scorer.prepare(cands)
    scores = scorer.score(bg, cands)
    by_eval = [cands.names[i] for i in np.argsort(-scores, kind="stable")]
    out = eng.rank(eng.encode_prepared(bg), "cat", k=100)
    assert [r.id for r in out.results] == by_eval
    assert [r.score for r in out.results] == pytest.approx(sorted(scores.tolist(), reverse=True), abs=1e-6)


def test_rfosd_fixture_metrics_by_hand(tmp_path):
    write_rfosd_fixture(tmp_path)
    ts2 = load_test(str(tmp_path))
    res = E.evaluate(ts2, E.make_scorer("aspect"), progress=False)
    assert res["n_queries"] == 3
    # recompute by hand from the fixture: per query, rank the candidates by |log aspect difference|,
    # drop those whose plain aspect ratios differ by >= 1.2, and take AP over the valid ones
    cat_ap, cat_p1 = [], []
    for cs in ts2.categories.values():
        sizes = [load_image(p).size for p in cs.fg_paths]
        aps, p1 = [], []
        for q, lab in zip(cs.queries, cs.labels):
            w, h = load_image(q.bg_path).size
            x1, y1, x2, y2 = norm_to_pixel_box(q.bbox, w, h)
            ar = (x2 - x1) / (y2 - y1)
            order = sorted(range(len(sizes)), key=lambda j: abs(math.log(ar) - math.log(sizes[j][0] / sizes[j][1])))
            valid = [j for j in order if abs(ar - sizes[j][0] / sizes[j][1]) < 1.2]
            hits = [lab[j] for j in valid]
            prec = [sum(hits[:i + 1]) / (i + 1) for i in range(len(hits)) if hits[i]]
            aps.append(np.mean(prec) if prec else 0.0)
            p1.append(hits[0] if hits else 0.0)
        cat_ap.append(np.mean(aps))
        cat_p1.append(np.mean(p1))
    # the dog backgrounds: b1 (label f2 only) and b2 (f1, f2), all cutouts one shape, so ties keep name order
    assert res["mAP"] == pytest.approx(np.mean(cat_ap)) and 0 < res["mAP"] < 1
    assert res["precision@1"] == pytest.approx(np.mean(cat_p1))


@pytest.mark.skipif(not os.path.exists(SHIPPED), reason="shipped weights missing")
@pytest.mark.shipped
def test_shipped_student_beats_every_baseline_on_real_images(ts):
    """The README's claim on one box seed: loose boxes, all 125 msrc-fos test queries."""
    r1 = {m: E.evaluate(ts, E.make_scorer(m), box_jitter=0.5, seed=0, progress=False)["recall@1"]
          for m in ("student", "random", "aspect", "geometry", "color", "imagenet")}
    assert all(r1["student"] > v for m, v in r1.items() if m != "student"), r1


def test_matched_protocol_leaves_shape_and_size_at_chance(ts):
    """On the matched protocol no rule without pixels beats chance by more than 0.05 (5 box seeds)."""
    for name in ("geometry", "aspect"):
        runs = [E.evaluate_matched(ts, E.make_scorer(name), 0.5, seed, progress=False) for seed in range(5)]
        res = E.average_runs(runs)
        assert abs(res["recall@1"] - res["chance@1"]) <= 0.05, (name, res["recall@1"], res["chance@1"])
        assert res["n_queries"] >= 60 and res["chance@1"] < 0.5


def test_matched_candidates_by_hand():
    from PIL import Image

    from fos.data import CategorySet

    sizes = {"t.jpg": (100, 50), "a.jpg": (210, 100), "b.jpg": (60, 60), "c.jpg": (40, 22)}
    cs = CategorySet([], list(sizes), [], np.zeros((0, 4)))
    images = [Image.new("RGB", s, "white") for s in sizes.values()]
    c = E.matched_candidates(cs, "t.jpg", images, tol=1.1)
    # aspects 2, 2.1 (x1.05), 1 (x0.5) and 1.82 (x0.91): t, a and c are kept, each resampled to 5000 px
    assert c.names == ["t.jpg", "a.jpg", "c.jpg"]
    assert [im.size for im in c.images] == [(100, 50), (102, 49), (95, 52)]
    assert E.tied_recall(np.array([0, 0, 1]), np.array([0, 1, 0]), 1).tolist() == [1.0, 0.5, 0.0]
