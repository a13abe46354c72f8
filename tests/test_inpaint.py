"""SPL inpainting: holes, crop-and-paste geometry, metrics, training on real photos, ONNX parity, CLI."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fos.inpaint.config import InpaintCfg, InpaintTrainCfg
from fos.inpaint.infer import Inpainter, load_inpainter, network_inputs, save_inpainter
from fos.inpaint.masks import box_hole, crop_window, hole_bbox, object_hole
from fos.inpaint.metrics import l1_in_hole, psnr_in_hole, ssim_in_hole
from fos.inpaint.model import SPLNet
from fos.preprocess import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(size=64, widths=(8, 16, 16), blocks=2, spade_hidden=8)
PHOTO = os.path.join(ROOT, "assets", "backgrounds", "1_14_s.jpg")  # 320 x 213


def tiny(variant="spade", seed=0, init="gray") -> SPLNet:
    torch.manual_seed(seed)
    return SPLNet(InpaintCfg(variant=variant, init=init, **TINY)).eval()


# --------------------------------------------------------------------------- holes and windows
def test_box_holes_stay_inside_with_their_size():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = box_hole(100, 200, rng, 0.2, 0.5)
        x1, y1, x2, y2 = hole_bbox(m)
        assert m.sum() == (x2 - x1) * (y2 - y1)  # a filled box
        assert 20 <= y2 - y1 <= 50 and 40 <= x2 - x1 <= 100


def test_object_holes_have_the_shape_and_are_reproducible():
    disc = np.hypot(*np.mgrid[-20:21, -20:21]) <= 20  # a disc, 41 px across
    a = object_hole(120, 160, disc, np.random.default_rng(3), 0.5, 0.5, dilate_px=0)
    b = object_hole(120, 160, disc, np.random.default_rng(3), 0.5, 0.5, dilate_px=0)
    assert (a == b).all()
    x1, y1, x2, y2 = hole_bbox(a)
    assert x2 - x1 == y2 - y1 == 60  # longer side = 0.5 x the shorter image side
    assert abs(a.sum() / (60 * 60) - np.pi / 4) < 0.03  # a disc fills pi/4 of its box, not a box
    grown = object_hole(120, 160, disc, np.random.default_rng(3), 0.5, 0.5, dilate_px=2)
    assert grown[a].all() and grown.sum() > a.sum()


def test_crop_window_by_hand():
    assert crop_window((100, 100, 140, 120), 400, 300) == (80, 70, 160, 150)  # 2 x 40, centred
    assert crop_window((0, 0, 10, 10), 400, 300) == (0, 0, 64, 64)  # at least 64, shifted inside
    assert crop_window((390, 290, 400, 300), 400, 300) == (336, 236, 400, 300)
    assert crop_window((10, 10, 200, 150), 300, 160) == (0, 0, 300, 160)  # clipped to the photo
    rng = np.random.default_rng(1)
    for _ in range(100):
        w, h = int(rng.integers(40, 500)), int(rng.integers(40, 500))
        x1, y1 = int(rng.integers(0, w - 2)), int(rng.integers(0, h - 2))
        b = (x1, y1, int(rng.integers(x1 + 1, w + 1)), int(rng.integers(y1 + 1, h + 1)))
        wx1, wy1, wx2, wy2 = crop_window(b, w, h)
        assert 0 <= wx1 <= b[0] and b[2] <= wx2 <= w and 0 <= wy1 <= b[1] and b[3] <= wy2 <= h


# --------------------------------------------------------------------------- crop and paste back
class Ramp(torch.nn.Module):
    """A stand-in generator whose output encodes position: R = x, G = y over the crop, in [-1, 1]."""

    cfg = InpaintCfg(size=64)

    def forward(self, image, mask):
        s = image.shape[-1]
        r = (torch.arange(s, dtype=torch.float32) + 0.5) / s * 2 - 1
        out = torch.stack([r.view(1, s).expand(s, s), r.view(s, 1).expand(s, s), torch.zeros(s, s)])[None]
        out = out.expand(image.shape[0], -1, -1, -1)
        return image * (1 - mask) + out * mask, out, None


def test_fill_pastes_the_crop_back_where_it_came_from():
    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    hole = np.zeros(photo.shape[:2], bool)
    hole[60:100, 150:230] = True  # 80 x 40 -> window 160 x 160 at (110, 0)
    out = np.asarray(Inpainter("spl", model=Ramp()).fill(photo, hole)).astype(int)
    assert (out[~hole] == photo[~hole]).all()  # nothing outside the hole changes
    wx1, wy1, wx2, wy2 = crop_window(hole_bbox(hole), photo.shape[1], photo.shape[0])
    assert (wx1, wy1, wx2, wy2) == (110, 0, 270, 160)
    ys, xs = np.nonzero(hole)
    want_r = (xs - wx1 + 0.5) / (wx2 - wx1) * 255
    want_g = (ys - wy1 + 0.5) / (wy2 - wy1) * 255
    assert np.abs(out[ys, xs, 0] - want_r).max() <= 4  # bilinear resampling of a ramp: a few levels
    assert np.abs(out[ys, xs, 1] - want_g).max() <= 4


@pytest.mark.parametrize("method", ["spl", "spl-telea-init", "telea", "ns"])
def test_every_method_fills_only_the_box_of_any_photo(method):
    model = {"spl": tiny(), "spl-telea-init": tiny(init="telea")}.get(method)
    inp = Inpainter(method[:3] if model is not None else method, model=model)
    big = Image.fromarray((np.random.default_rng(0).random((1500, 2200, 3)) * 255).astype(np.uint8))
    photo = Image.open(PHOTO)
    for img, box in ((photo, (40, 50, 120, 110)), (big, (1000, 700, 1400, 1000)), (photo.convert("L"), (0, 0, 50, 40)),
                     (photo.convert("RGBA"), (270, 160, 320, 213))):
        out = np.asarray(inp.erase_box(img, box))
        ref = np.asarray(img.convert("RGB"))
        x1, y1, x2, y2 = box
        assert out.shape == ref.shape
        keep = np.ones(ref.shape[:2], bool)
        keep[y1:y2, x1:x2] = False
        assert (out[keep] == ref[keep]).all()
        assert (out[~keep] != ref[~keep]).any()


def test_bad_boxes_get_clear_messages():
    inp = Inpainter("telea")
    with pytest.raises(InputError, match="inside the 320x213 image"):
        inp.erase_box(PHOTO, (300, 10, 400, 50))
    with pytest.raises(InputError, match="covers 9[0-9]% of the photo"):
        inp.erase_box(PHOTO, (0, 0, 320, 200))
    with pytest.raises(InputError, match="no box"):
        inp.erase_box(PHOTO, None)
    with pytest.raises(InputError, match="unknown inpainting method"):
        Inpainter("magic")


def test_network_inputs_grow_the_hole_and_scale_to_minus_one_one():
    crop = np.full((100, 100, 3), 255, np.uint8)
    hole = np.zeros((100, 100), bool)
    hole[33:34, 50:51] = True  # one pixel
    img, mask = network_inputs(crop, hole, 64)
    assert img.shape == (1, 3, 64, 64) and np.allclose(img, 1)
    assert mask.shape == (1, 1, 64, 64) and mask.sum() >= 1  # a one-pixel hole survives downscaling


# --------------------------------------------------------------------------- metrics by hand
def test_metrics_by_hand():
    true = np.full((20, 20, 3), 100, np.uint8)
    pred = true.copy()
    hole = np.zeros((20, 20), bool)
    hole[5:10, 5:10] = True
    pred[hole] += 10
    pred[0, 0] = 0  # outside the hole: ignored
    assert psnr_in_hole(pred, true, hole) == pytest.approx(10 * np.log10(255 ** 2 / 100))
    assert l1_in_hole(pred, true, hole) == pytest.approx(10 / 255)
    assert psnr_in_hole(true, true, hole) == 100.0
    assert ssim_in_hole(true, true, hole) == pytest.approx(1.0)
    noisy = np.clip(true + np.random.default_rng(0).normal(0, 30, true.shape), 0, 255).astype(np.uint8)
    assert ssim_in_hole(noisy, true, hole) < 0.5
    with pytest.raises(ValueError, match="empty"):
        psnr_in_hole(pred, true, np.zeros((20, 20), bool))


# --------------------------------------------------------------------------- weights, training, export
def test_weights_round_trip_and_mismatch(tmp_path):
    m = tiny()
    p = str(tmp_path / "inpaint.safetensors")
    save_inpainter(m, p)
    back = load_inpainter(p)
    x, k = torch.rand(1, 3, 64, 64) * 2 - 1, torch.zeros(1, 1, 64, 64)
    k[..., 10:30, 20:40] = 1
    assert torch.allclose(back(x, k)[0], m(x, k)[0])
    save_inpainter(tiny("concat"), str(tmp_path / "other.safetensors"))
    os.replace(tmp_path / "other.safetensors", p)  # weights of another variant beside this config
    from fos.checkpoint import WeightsError

    with pytest.raises(WeightsError, match="does not fit its config"):
        load_inpainter(p)


def test_training_steps_on_real_photos_resume_exactly(data_root, tmp_path, monkeypatch):
    import fos.inpaint.train as tr

    common = dict(data=[data_root], steps=3, batch_size=2, size=64, limit=6, ckpt_every=1)
    a = tr.fit(InpaintTrainCfg(out=str(tmp_path / "a"), **common), str(tmp_path / "a.safetensors"))
    # the same run, killed right after its step-2 checkpoint, then run again: it resumes there
    save = tr.save_resumable

    def save_then_die(path, key, stateful, **state):
        save(path, key, stateful, **state)
        if state["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(tr, "save_resumable", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        tr.fit(InpaintTrainCfg(out=str(tmp_path / "b"), **common), str(tmp_path / "b.safetensors"))
    assert not os.path.exists(tmp_path / "b.safetensors")
    monkeypatch.setattr(tr, "save_resumable", save)
    b = tr.fit(InpaintTrainCfg(out=str(tmp_path / "b"), **common), str(tmp_path / "b.safetensors"))
    ma, mb = load_inpainter(a), load_inpainter(b)
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k
    hist = ma.checkpoint_info["history"]
    assert [h["step"] for h in hist] == [1, 2, 3] and all(np.isfinite(h["prior"]) for h in hist)
    # batches: real crops with holes of every kind, and the erased objects' pixels unknown
    photos = [os.path.join(data_root, "photos", f) for f in sorted(os.listdir(os.path.join(data_root, "photos")))[:3]]
    sizes = [Image.open(p).size for p in photos]
    objs = []
    for w, h in sizes:
        disc = np.hypot(*(np.mgrid[:h, :w] - np.array([h / 2, w / 2])[:, None, None])) <= min(h, w) / 5
        objs.append([disc])
    objs[2] = []  # a photo without instances still gives random holes
    mix = InpaintTrainCfg().hole_mix()
    hb = tr.HoleBatches(photos, objs, 64, mix, seed=0)
    img, mask, known = hb.batch(0, 32)
    assert img.shape == (32, 3, 64, 64) and mask.shape == known.shape == (32, 1, 64, 64)
    assert torch.equal(img, hb.batch(0, 32)[0]) and not torch.equal(img, hb.batch(1, 32)[0])
    fills = mask.mean((1, 2, 3))
    assert ((fills > 0.02) & (fills < 0.7)).all()

    def is_box(m):
        x1, y1, x2, y2 = hole_bbox(m)
        return m.sum() == (x2 - x1) * (y2 - y1)

    boxes = [is_box(m > 0) for m in mask[:, 0].numpy()]
    assert any(boxes) and not all(boxes)  # boxes and shapes
    unknown = (known < 1).flatten(1).any(1)
    assert unknown.any() and not unknown.all()  # some holes erased an object: its pixels are unknown
    # object-box and object-mask holes cover the object, whose pixels are unknown
    assert any((~k & m).any() for m, k in zip(mask[:, 0].numpy() > 0, known[:, 0].numpy() > 0))
    with pytest.raises(ValueError, match="kind=weight"):
        InpaintTrainCfg(holes="box=1,window=2")


def test_telea_init_corrects_the_telea_fill():
    """init=telea: the network sees the Telea-filled crop, and a zero correction returns Telea's fill exactly."""
    m = tiny(init="telea")
    torch.nn.init.zeros_(m.decoder[-2].weight)
    torch.nn.init.zeros_(m.decoder[-2].bias)  # tanh(0) = 0: no correction
    hole = np.zeros((213, 320), bool)
    hole[50:110, 40:120] = True
    a = np.asarray(Inpainter("spl", model=m).fill(PHOTO, hole)).astype(int)
    b = np.asarray(Inpainter("telea").fill(PHOTO, hole)).astype(int)
    assert np.abs(a - b).max() <= 1
    x, k = torch.rand(1, 3, 64, 64) * 2 - 1, torch.zeros(1, 1, 64, 64)
    k[..., 10:30, 10:30] = 1
    assert torch.equal(m(x, k)[0], x)  # the (pre-filled) input comes back unchanged


def test_prior_loss_teaches_the_semantic_learner(tmp_path):
    """One step with semantic supervision moves the learner's output conv towards the frozen features."""
    from fos.inpaint.model import PriorNet
    from fos.inpaint.train import losses

    m = tiny()
    prior = PriorNet(m.cfg, pretrained=False)
    x, k = torch.rand(2, 3, 64, 64) * 2 - 1, torch.zeros(2, 1, 64, 64)
    k[..., 16:40, 16:40] = 1
    cfg = InpaintTrainCfg(size=64)
    with_prior = losses(m, prior, x, k, cfg)
    with_prior["prior"].backward()
    assert m.learner.out.weight.grad.abs().sum() > 0
    assert prior.features[0][0].weight.grad is None  # frozen
    assert "prior" not in losses(m, None, x, k, cfg)


def test_onnx_graph_matches_torch_and_is_served(data_root, tmp_path):
    pytest.importorskip("onnxruntime")
    from fos.export.inpaint import export_inpainter

    w = str(tmp_path / "inpaint.safetensors")
    save_inpainter(tiny(), w)
    assert Inpainter("spl", w).backend == "torch"  # nothing exported yet
    meta = export_inpainter(w, data=data_root)
    assert meta["parity"]["max_abs_diff"] < 1e-3 and meta["parity"]["crops"] == 4
    ort_inp, torch_inp = Inpainter("spl", w), Inpainter("spl", w, backend="torch")
    assert ort_inp.backend == "onnxruntime"
    a = np.asarray(ort_inp.erase_box(PHOTO, (40, 50, 120, 110))).astype(int)
    b = np.asarray(torch_inp.erase_box(PHOTO, (40, 50, 120, 110))).astype(int)
    assert np.abs(a - b).max() <= 1
    save_inpainter(tiny(seed=1), w)  # new weights: the old graph is stale and not served
    assert Inpainter("spl", w).backend == "torch"
    with pytest.raises(InputError, match="exported from other weights"):
        Inpainter("spl", w, backend="onnxruntime")


def test_tensorrt_serves_the_inpainter_or_says_in_one_line_why_not(data_root, tmp_path):
    pytest.importorskip("onnxruntime")
    import importlib.util
    import json

    from fos.bootstrap import export_if_stale
    from fos.checkpoint import sidecar
    from fos.errors import BackendError
    from fos.inpaint.infer import onnx_path

    w = str(tmp_path / "inpaint.safetensors")
    save_inpainter(tiny(), w)
    export_if_stale(w, "inpaint", "tensorrt")  # the engine is built from the exported graph
    s = tiny().cfg.size
    assert json.load(open(sidecar(onnx_path(w))))["trt_profile"]["mask"] == \
        {"min": [1, 1, s, s], "opt": [1, 1, s, s], "max": [16, 1, s, s]}
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(BackendError, match="TensorRT is not installed"):
            Inpainter("spl", w, backend="tensorrt")
        return
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    from fos.export.trt import build_side_engine

    build_side_engine(onnx_path(w), str(tmp_path / "trt"))
    rt, pt = Inpainter("spl", w, backend="tensorrt"), Inpainter("spl", w, backend="torch")
    assert rt.backend == "tensorrt"
    a = np.asarray(rt.erase_box(PHOTO, (40, 50, 120, 110))).astype(int)
    b = np.asarray(pt.erase_box(PHOTO, (40, 50, 120, 110))).astype(int)
    assert np.abs(a - b).max() <= 2  # TF32 convolutions: within 2 of 255 levels


# --------------------------------------------------------------------------- command line and evaluation
def test_cli_writes_the_photo_and_keeps_it_on_failure(tmp_path, capsys):
    from fos.inpaint.__main__ import main

    out = tmp_path / "out.png"
    assert main(["--image", PHOTO, "--box", "40,50,120,110", "--out", str(out), "--method", "telea"]) == 0
    before = out.read_bytes()
    assert Image.open(out).size == (320, 213)
    assert main(["--image", PHOTO, "--box", "40,50,999,110", "--out", str(out), "--method", "ns"]) == 2
    assert "inside the 320x213 image" in capsys.readouterr().err
    missing = str(tmp_path / "missing.jpg")
    assert main(["--image", missing, "--box", "1,1,9,9", "--out", str(out), "--method", "ns"]) == 2
    assert out.read_bytes() == before
    assert main(["--image", PHOTO, "--box", "40,50,120,110", "--out", str(out), "--weights",
                 str(tmp_path / "none.safetensors")]) == 2
    assert "--method telea" in capsys.readouterr().err


def test_evaluation_holes_are_fixed_and_opencv_beats_the_mean_fill(data_root):
    from fos.inpaint.evaluate import MeanFill, evaluate, test_holes, visible_cases

    a, b = test_holes(data_root, seed=0), test_holes(data_root, seed=0)
    assert len(a) == len(b) > 100 and all((x["hole"] == y["hole"]).all() for x, y in zip(a, b))
    assert {c["kind"] for c in a} == {"box", "object", "object-box"}
    for c in a:
        if c["kind"] == "object-box":  # the box of the photo's own instance, scored off every instance
            x1, y1, x2, y2 = c["box"]
            assert c["hole"].sum() == (x2 - x1) * (y2 - y1)
            assert (c["region"] == (c["hole"] & c["known"])).all() and 0 < c["region"].sum() < c["hole"].sum()
    # the visible kinds: a pasted cutout covers part of the box, and only what shows is scored
    cutout = Image.new("RGBA", (40, 80), (0, 0, 0, 0))
    cutout.paste(Image.new("RGBA", (20, 80), (200, 50, 50, 255)), (10, 0))
    vis = visible_cases([c for c in a if c["kind"] == "object-box"][:5], lambda photo, box, cat: (cutout, None))
    assert [c["kind"] for c in vis[:2]] == ["visible", "visible-around"]
    for full, around in zip(vis[::2], vis[1::2]):
        assert (around["hole"] <= full["hole"]).all()
        assert (full["region"] == (full["hole"] & full["known"] & (full["cover"] == 0))).all()
        assert (around["region"] == full["region"]).all() and (around["region"] <= around["hole"]).all()
        assert around["hole"].sum() < full["hole"].sum()  # what the cutout hides (minus a margin) is not filled
    res = evaluate([data_root], {"telea": Inpainter("telea"), "mean": MeanFill()}, limit=12, progress=False,
                   paster=lambda photo, box, cat: (cutout, None))
    r = res["results"]
    assert r["msrc-fos/box/telea"]["n"] == 12 and r["msrc-fos/visible/telea"]["n"] == 12
    for kind in ("box", "object", "object-box", "visible"):
        assert r[f"msrc-fos/{kind}/telea"]["psnr"] > r[f"msrc-fos/{kind}/mean"]["psnr"]


# --------------------------------------------------------------------------- the holes users make
def test_user_holes_know_only_the_background():
    from fos.inpaint.masks import background_box_hole, object_box_hole, object_mask_hole

    objects = np.zeros((60, 80), bool)
    a = np.zeros_like(objects)
    a[10:30, 10:25] = True  # the object erased
    b = np.zeros_like(objects)
    b[40:55, 60:75] = True  # another object
    objects = a | b
    hole, known = object_box_hole(a, objects, margin=2)
    assert hole.sum() == 20 * 15 and hole[10:30, 10:25].all()
    assert not known[8:32, 10:25].any() and not known[10:30, 8:27].any()  # off both objects, margin 2
    assert known[0:7].all() and known[10:30, 28:].all() and not known[38:57, 60:75].any()
    hole, known = object_mask_hole(a, objects, dilate_px=4, margin=2)
    assert hole[6:34, 12:23].all() and not hole[0:5].any()
    assert (hole & known).sum() > 0 and not (hole & known)[10:30, 8:27].any()  # only the outer ring is known
    hole, known = background_box_hole(objects, np.random.default_rng(0))
    assert hole.any() and not (hole & objects).any()


def test_visible_region_against_hand_computed_values():
    """A 4x4 box whose left half the pasted cutout covers, one pixel of which was the erased object: the
    metrics count only the 7 other right-half pixels."""
    from fos.inpaint.evaluate import reference
    from fos.inpaint.metrics import visible_region

    hole = np.zeros((6, 6), bool)
    hole[1:5, 1:5] = True
    known = np.ones_like(hole)
    known[2, 3] = False  # a pixel of the erased object, not covered by the cutout
    cover = np.zeros((6, 6), np.uint8)
    cover[1:5, 1:3] = 200
    region = visible_region(hole, known, cover)
    assert region.sum() == 7 and region[1:5, 3:5].sum() == 7 and not region[2, 3]
    true = np.full((6, 6, 3), 100, np.uint8)
    true[2, 3] = 0  # what the erased object looked like: must not count
    pred = true.copy()
    pred[hole] = 110  # the fill: off by 10 everywhere in the box
    ref = reference(pred, true, region)
    assert (ref[region] == 100).all() and (ref[2, 3] == 110).all()
    assert l1_in_hole(pred, ref, region) == pytest.approx(10 / 255)
    assert psnr_in_hole(pred, ref, region) == pytest.approx(10 * np.log10(255 ** 2 / 100))


def test_feature_distance_is_zero_for_equal_crops_and_grows_with_the_error():
    from fos.inpaint.features import FeatureDistance

    fd = FeatureDistance(size=64, pretrained=False)
    true = np.asarray(Image.open(PHOTO).convert("RGB"))
    hole = np.zeros(true.shape[:2], bool)
    hole[50:110, 40:120] = True
    window = crop_window(hole_bbox(hole), true.shape[1], true.shape[0])
    assert fd(true, true, hole, window) == pytest.approx(0, abs=1e-9)
    small, big = true.copy(), true.copy()
    small[hole] = np.clip(true[hole].astype(int) + 10, 0, 255)
    big[hole] = 0
    assert 0 < fd(small, true, hole, window) < fd(big, true, hole, window)


@pytest.mark.parametrize("method", ["telea", "ns", "shiftmap", "fsr-fast", "fsr-best"])
def test_every_anchor_method_fills_a_real_photo(method):
    """Each classical method fills only the hole of a real photo, and beats a flat gray fill there."""
    true = np.asarray(Image.open(PHOTO).convert("RGB"))
    box = (140, 80, 170, 110) if method == "fsr-best" else (120, 70, 180, 120)  # fsr-best is slow: a small box
    hole = np.zeros(true.shape[:2], bool)
    hole[box[1]:box[3], box[0]:box[2]] = True
    out = np.asarray(Inpainter(method).erase_box(PHOTO, box))
    assert out.shape == true.shape and (out[~hole] == true[~hole]).all()
    gray = true.copy()
    gray[hole] = 128
    assert psnr_in_hole(out, true, hole) > psnr_in_hole(gray, true, hole) + 2


def test_missing_contrib_method_names_the_package(monkeypatch):
    import cv2

    monkeypatch.delattr(cv2, "xphoto", raising=False)
    with pytest.raises(InputError, match="opencv-contrib-python-headless"):
        Inpainter("shiftmap")


def test_bad_holes_get_clear_errors():
    inp = Inpainter("telea")
    with pytest.raises(InputError, match="empty"):
        inp.fill(PHOTO, np.zeros((213, 320), bool))
    with pytest.raises(InputError, match="covers 100%"):
        inp.fill(PHOTO, np.ones((213, 320), bool))
    with pytest.raises(InputError, match="the hole is 10x10, the photo 320x213"):
        inp.fill(PHOTO, np.ones((10, 10), bool))
