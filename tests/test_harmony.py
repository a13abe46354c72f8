"""The harmony protocol and the photometric changes it and training share."""
import random

import numpy as np
import pytest
from PIL import Image

from fos import evaluate as E
from fos.data import load_test
from fos.evaluate.baselines import Scorer
from fos.evaluate.harmony import evaluate_harmony, harmony_group, photo_of, pick_casts
from fos.photometric import cast_distance, cast_gains, outside_box, photo_cast, random_change, relight
from fos.preprocess import InputError, foreground_mask


@pytest.fixture(scope="module")
def ts(data_root):
    return load_test(data_root)


def test_cast_and_gains_by_hand():
    img = Image.new("RGB", (4, 2), (100, 50, 200))
    img.paste((0, 0, 0), (0, 0, 2, 2))  # the box, left out of the cast
    assert photo_cast(img, (0, 0, 2, 2)).tolist() == [100.0, 50.0, 200.0]
    assert photo_cast(img).tolist() == [50.0, 25.0, 100.0]
    g = cast_gains(np.array([99.0, 49.0, 199.0]), np.array([199.0, 49.0, 99.0]))
    assert g.tolist() == pytest.approx([2.0, 1.0, 0.5])
    assert cast_distance(np.array([99.0, 49.0, 199.0]), np.array([199.0, 49.0, 99.0])) == pytest.approx(np.log(2))


def test_relight_changes_only_the_masked_pixels():
    img = Image.new("RGB", (6, 4), (100, 100, 100))
    out = np.asarray(relight(img, np.array([2.0, 1.0, 0.5]), outside_box(img.size, (1, 1, 4, 3)))).astype(int)
    assert out[1:3, 1:4].tolist() == [[[100, 100, 100]] * 3] * 2  # inside the box: untouched
    assert out[0, 0].tolist() == [200, 100, 50] and out[3, 5].tolist() == [200, 100, 50]
    # a cutout on white: only its object pixels change, the white stays white
    fg = Image.new("RGB", (5, 5), (255, 255, 255))
    fg.paste((80, 120, 160), (1, 1, 4, 4))
    r = np.asarray(relight(fg, np.array([1.5, 1.0, 0.5]), foreground_mask(fg)))
    assert r[0, 0].tolist() == [255, 255, 255] and r[2, 2].tolist() == [120, 120, 80]


def test_random_change_is_seeded_and_not_the_identity():
    x = np.random.default_rng(0).uniform(0.1, 0.9, (1, 50, 3)).astype(np.float32)
    a = random_change(np.random.default_rng(7))(x)
    b = random_change(np.random.default_rng(7))(x)
    assert np.array_equal(a, b)
    diffs = [np.abs(random_change(np.random.default_rng(s))(x) - x).mean() for s in range(20)]
    assert min(diffs) > 1e-3


def test_group_shuffles_and_the_answer_has_the_background_cast():
    bg = Image.new("RGB", (40, 30), (120, 90, 60))
    fg = Image.new("RGB", (10, 10), (255, 255, 255))
    fg.paste((80, 80, 80), (2, 2, 8, 8))
    casts = [np.array([120.0, 90, 60]), np.array([60.0, 90, 120]), np.array([200.0, 200, 200]),
             np.array([30.0, 30, 30]), np.array([120.0, 150, 60])]
    answers = []
    for seed in range(40):
        rbg, cands, ans = harmony_group(bg, (10, 10, 20, 20), fg, casts, random.Random(seed))
        g_bg = np.asarray(rbg)[0, 0].astype(float) / np.array([120, 90, 60])
        g_ans = np.asarray(cands[ans])[5, 5].astype(float) / 80
        assert np.allclose(g_bg, g_ans, atol=0.03)  # the answer carries the background's change
        assert len({np.asarray(c)[5, 5].tobytes() for c in cands}) == 5
        answers.append(ans)
    assert len(set(answers)) == 5  # the answer's position is not fixed


def test_pick_casts_keeps_them_distinct_and_from_other_photos():
    own = np.array([100.0, 100, 100])
    pool = [("own", np.array([50.0, 50, 50])), ("a", np.array([101.0, 100, 100])), ("b", np.array([150.0, 100, 100])),
            ("c", np.array([100.0, 160, 100])), ("c", np.array([30.0, 160, 100])), ("d", np.array([100.0, 100, 40]))]
    got = pick_casts(own, pool, "own", 4, random.Random(0))
    assert got is not None and len(got) == 4 and got[0] is own
    assert all(cast_distance(x, y) >= 0.08 for i, x in enumerate(got) for y in got[:i])
    assert not any(np.array_equal(c, np.array([50.0, 50, 50])) for c in got)  # the own photo's is never offered
    assert pick_casts(own, pool, "own", 6, random.Random(0)) is None
    assert photo_of("1_8_s_2.jpg") == "1_8_s" and photo_of("000000000139_3.jpg") == "000000000139"


class Neutral(Scorer):
    """A cutout-only rule: the candidate whose object pixels are the least coloured."""

    name = "neutral"

    def score(self, bg, cands):
        out = []
        for im in cands.images:
            px = np.asarray(im, np.float64)[foreground_mask(im)]
            out.append(-np.abs(px - px.mean(1, keepdims=True)).mean())
        return np.array(out)


class Contrast(Scorer):
    """A cutout-only rule: the candidate with the highest contrast."""

    name = "contrast"

    def score(self, bg, cands):
        return np.array([np.asarray(im, np.float64)[foreground_mask(im)].std() for im in cands.images])


def test_rules_without_the_background_sit_at_chance(ts):
    """geometry and aspect tie every candidate (one seed shows it: ties count as chance exactly); rules
    that read the cutout alone cannot know the background's cast. All within 0.05 of chance (cutout
    rules over 2 seeds); the colour baseline, which compares the two, is far above it."""
    for scorer, seeds in ((E.make_scorer("geometry"), 1), (E.make_scorer("aspect"), 1), (Neutral(), 2), (Contrast(), 2)):
        res = E.average_runs([evaluate_harmony(ts, scorer, 0.5, seed, progress=False) for seed in range(seeds)])
        assert res["chance@1"] == pytest.approx(0.2) and res["n_queries"] == 125
        assert abs(res["recall@1"] - 0.2) <= 0.05, (scorer.name, res["recall@1"])
    color = evaluate_harmony(ts, E.make_scorer("color"), 0.5, 0, progress=False)
    assert color["recall@1"] > 0.3


def test_too_few_casts_is_a_clear_error(ts):
    with pytest.raises(InputError, match=r"no harmony group could be built: 0 of \d+ queries found 499 other photos"):
        evaluate_harmony(ts, E.make_scorer("aspect"), 0.5, 0, n_casts=500, categories=["cat"], progress=False)
