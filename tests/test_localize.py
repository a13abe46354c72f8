"""Weakly supervised localization: metrics on hand-computed cases, DA-WSOL's pieces, training on real
photos, box-to-mask, and the commands (``python -m fos.localize``, ``fos.library grow``) on real photos."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fos.localize.config import WsolCfg, WsolTrainCfg
from fos.localize import metrics as M
from fos.data.photos import load_photos, mean_relative_size, vocabulary
from fos.localize.masks import box_to_mask, cutout, grabcut_mask, u2netp_path
from fos.localize.model import TargetSampleAssigner, WsolNet, dal_loss, kmeans3, mmd_rbf, normalize_cams
from fos.preprocess import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "weights", "localizer.safetensors")
shipped = pytest.mark.skipif(not os.path.isfile(SHIPPED), reason="shipped localizer weights missing")


# --------------------------------------------------------------------------- metrics, by hand
def test_box_iou_and_mask_iou_by_hand():
    assert M.box_iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert M.box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # x2 exclusive: touching boxes do not overlap
    a = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b = np.zeros((4, 4), bool)
    b[:2, :3] = True  # 6 pixels, 4 shared
    assert M.mask_iou(a, b) == pytest.approx(4 / 6)
    assert M.mask_iou(a, b, (0, 0, 2, 2)) == 1.0  # inside the box they agree
    assert M.mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_pxap_by_hand():
    # pixels by CAM, high to low: pos (P=1, R=.5), neg (P=.5, R=.5), pos (P=2/3, R=1), neg (P=.5, R=1)
    cam = np.array([[0.9, 0.8, 0.3, 0.1]])
    gt = np.array([[True, False, True, False]])
    assert M.pxap([cam], [gt]) == pytest.approx(0.5 * 1 + 0.5 * (2 / 3))
    assert M.pxap([gt.astype(float)], [gt]) == pytest.approx(1.0)  # a perfect map
    with pytest.raises(ValueError, match="differ in shape"):
        M.pxap([cam], [gt.T])


def test_box_accuracy_and_max_box_acc_v2_by_hand():
    cam = np.zeros((10, 10))
    cam[2:6, 2:6] = 1.0  # a strong 4x4 block
    cam[2:6, 6:8] = 0.4  # a weaker 4x2 extension to its right
    gt = [(2, 2, 8, 6)]  # the object is the block and its extension
    # tau in (0, 0.4]: box (2,2,8,6), IoU 1; tau in (0.4, 1]: box (2,2,6,6), IoU 16/24; tau = 0: the image, IoU .24
    curve = M.box_accuracy_curve([cam], [gt], thresholds=[0.0, 0.3, 0.5], iou_thresholds=[0.3, 0.5, 0.7])
    np.testing.assert_allclose(curve, [[0, 0, 0], [1, 1, 1], [1, 1, 0]])
    mba, per = M.max_box_acc_v2(curve)
    assert per == [1, 1, 1] and mba == 1.0
    # all components count: a second blob far away does not hurt BoxAccV2
    cam2 = cam.copy()
    cam2[8:10, 0:2] = 0.9
    assert M.box_accuracy_curve([cam2], [gt], [0.3], [0.5])[0, 0] == 1.0
    # the user's single box is the component with the most CAM mass
    assert M.cam_box(cam2, 0.3) == (2, 2, 8, 6)
    assert M.cam_box(np.zeros((3, 3)), 0.5) is None


def test_top1_loc_by_hand():
    acc = M.top1_loc(["cow", "dog", "cow"], [["cow"], ["cow"], ["cow", "sheep"]],
                     [(0, 0, 10, 10), (0, 0, 10, 10), (0, 0, 2, 2)],
                     [{"cow": [(0, 0, 10, 10)]}, {"cow": [(0, 0, 10, 10)]}, {"cow": [(0, 0, 10, 10)]}])
    assert acc == pytest.approx(1 / 3)  # right class and box; wrong class; right class, IoU .04


# --------------------------------------------------------------------------- DA-WSOL pieces
def test_kmeans_and_target_sample_assigner_split_pixels():
    torch.manual_seed(0)
    c, h, w = 8, 8, 8
    pix = torch.zeros(c, h, w)
    # background pixels near 0, object pixels near e0 * 4 (left half), part pixels near e1 * 4 (top-right)
    pix[0, :, :4] = 4
    pix[1, :4, 4:] = 4
    pix = pix + 0.05 * torch.randn_like(pix)
    labels, centres = kmeans3(pix.reshape(c, -1).t(), torch.stack([torch.zeros(c), 4 * torch.eye(c)[0],
                                                                    4 * torch.eye(c)[1]]))
    assert labels.view(h, w)[:, :4].eq(1).all() and labels.view(h, w)[:4, 4:].eq(2).all()
    assert labels.view(h, w)[4:, 4:].eq(0).all()
    tsa = TargetSampleAssigner(num_classes=2, dims=c, samples=4)
    tsa.class_centres[1] = (4 * torch.eye(c)[1]).numpy()  # the class's running target centre
    tsa.class_counts[1] = 1
    image_feature = 4 * torch.eye(c)[0]
    src, tgt, uni, lab = tsa.split(image_feature, pix, 1)
    assert lab[:, :4].eq(tsa.SOURCE).all() and lab[:4, 4:].eq(tsa.TARGET).all() and lab[4:, 4:].eq(tsa.UNIVERSUM).all()
    assert src.shape == (4, c) and tgt.shape == (4, c) and uni.shape == (16, c)
    assert torch.equal(src[0], image_feature)  # the source side starts with the image feature itself
    assert tsa.class_counts[1] == 2 and tsa.universum_count == 1  # the memories moved
    assert np.abs(tsa.universum).max() < 0.2  # the universum centre is the background's


def test_mmd_is_zero_for_equal_samples_and_grows_with_shift():
    torch.manual_seed(0)
    x = torch.randn(32, 5)
    assert mmd_rbf(x, x).item() == pytest.approx(0.0, abs=1e-6)
    near, far = mmd_rbf(x, torch.randn(32, 5) + 0.5).item(), mmd_rbf(x, torch.randn(32, 5) + 3).item()
    assert far > near
    with pytest.raises(ValueError, match="equal sample sizes"):
        mmd_rbf(x, x[:3])


def test_normalize_cams():
    n = normalize_cams(torch.tensor([[[1.0, 3.0], [2.0, 5.0]]]))
    assert n.min() == 0 and n.max() == 1 and n[0, 0, 1] == pytest.approx(0.5)


# --------------------------------------------------------------------------- data and training on real photos
def test_photos_have_image_labels_boxes_and_masks(data_root):
    train, test = load_photos(data_root, "train"), load_photos(data_root, "test")
    assert len(train) == 317 and len(test) == 95  # the dataset README's counts
    assert not {p.path for p in train} & {p.path for p in test}  # split by photo
    assert len(vocabulary(train)) == 15
    ph = train[0]
    for c in ph.labels:
        m = ph.gt_mask(c)
        assert m.shape == (ph.height, ph.width) and m.any()
        for x1, y1, x2, y2 in ph.boxes[c]:
            assert 0 <= x1 < x2 <= ph.width and 0 <= y1 < y2 <= ph.height
    w, h = mean_relative_size(train)
    assert 0.2 < w < 0.9 and 0.2 < h < 0.9


@pytest.mark.parametrize("method", ["cam", "dawsol"])
def test_one_training_step_on_real_photos(data_root, method):
    from fos.localize.train import frozen_features, label_matrix, train_step

    photos = [p for p in load_photos(data_root, "train") if len(p.labels) == 1][:6]
    classes = vocabulary(photos)
    torch.manual_seed(0)
    model = WsolNet(WsolCfg(classes=classes, method=method, input_size=128)).train()
    feats = frozen_features(model, photos, progress=False)
    assert feats.shape == (12, 96, 8, 8)  # photo and mirror image, stride 16
    y = label_matrix(photos, classes)
    cfg = WsolTrainCfg(method=method, samples=8)
    tsa = TargetSampleAssigner(len(classes), 1280, cfg.samples) if method == "dawsol" else None
    frozen0 = model.features[3].conv[0][0].weight.clone()
    tail0 = model.features[17].conv[0][0].weight.clone()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = train_step(model, tsa, feats[:6], y, cfg, use_dal=True)
    assert all(torch.isfinite(v) for v in losses.values())
    if method == "dawsol":
        assert losses["universum"] > 0 and set(losses) == {"cls", "mmd", "universum", "total"}
    opt.zero_grad()
    losses["total"].backward()
    opt.step()
    assert torch.equal(model.features[3].conv[0][0].weight, frozen0)  # stages 0-13 frozen
    assert not torch.equal(model.features[17].conv[0][0].weight, tail0)
    logits, cams = model(torch.zeros(1, 3, 128, 128))
    assert logits.shape == (1, len(classes)) and cams.shape == (1, len(classes), 8, 8)
    # the CAM of a class averages to its logit (linear classifier on the mean pixel feature)
    torch.testing.assert_close(cams.mean((2, 3)), logits, rtol=1e-4, atol=1e-4)


def test_dal_loss_skips_multi_label_photos():
    tsa = TargetSampleAssigner(2, 4, samples=2)
    pix = torch.rand(2, 4, 4, 4)
    ld, lu = dal_loss(tsa, pix, torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
    assert ld.item() == 0 and lu.item() == 0 and tsa.universum_count == 0


def test_fit_saves_reloads_and_resumes(data_root, tmp_path):
    from fos.localize.infer import Localizer, load_localizer
    from fos.localize.train import fit

    root = tmp_path / "data"
    _small_root(data_root, root, n=8)
    cfg = WsolTrainCfg(data=[str(root)], out=str(tmp_path / "run"), method="dawsol", epochs=2, batch_size=4,
                       input_size=128, samples=8, min_photos=1, start_epoch=1)
    save = str(tmp_path / "w.safetensors")
    fit(cfg, save)
    info = json.load(open(str(tmp_path / "w.json")))
    assert len(info["history"]) == 2 and 0 <= info["wsol_cfg"]["box_threshold"] < 1
    assert "mmd" in info["history"][1] and "mmd" not in info["history"][0]  # DAL from the start epoch on
    loc = Localizer(save)
    assert loc.cfg.input_size == 128
    # resuming a finished run trains nothing more and gives the same weights
    fit(cfg, str(tmp_path / "w2.safetensors"))
    a, b = load_localizer(save).state_dict(), load_localizer(str(tmp_path / "w2.safetensors")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(Exception, match="other settings"):
        fit(WsolTrainCfg(**{**cfg.__dict__, "epochs": 3}), save)


def _small_root(data_root, dst, n):
    """A FOSD root with the first ``n`` train instances of msrc-fos and their photos."""
    anno = json.load(open(os.path.join(data_root, "train", "labels", "train_sfosd.json")))
    keep = dict(list(anno.items())[:n])
    os.makedirs(dst / "train" / "labels", exist_ok=True)
    os.makedirs(dst / "photos", exist_ok=True)
    json.dump(keep, open(dst / "train" / "labels" / "train_sfosd.json", "w"))
    for name in keep:
        stem = name[:-4]
        photo = stem.rsplit("_", 1)[0] + ".jpg"
        shutil.copy(os.path.join(data_root, "photos", photo), dst / "photos" / photo)
        md = dst / "train" / "labels" / "masks" / stem[0]
        os.makedirs(md, exist_ok=True)
        shutil.copy(os.path.join(data_root, "train", "labels", "masks", stem[0], stem + ".png"), md)


# --------------------------------------------------------------------------- box to mask
def _square_photo():
    arr = np.full((60, 80, 3), 235, np.uint8)
    arr[20:40, 30:50] = (30, 60, 160)  # a blue square on a light background
    gt = np.zeros((60, 80), bool)
    gt[20:40, 30:50] = True
    return arr, gt


def test_grabcut_finds_the_object_in_its_box():
    arr, gt = _square_photo()
    box = (24, 14, 58, 46)
    m = grabcut_mask(arr, box)
    assert M.mask_iou(m, gt, box) > 0.9
    assert not m[:, :24].any() and not m[:14].any()  # nothing outside the box
    whole = grabcut_mask(arr, (0, 0, 80, 60))  # no background to learn from: the whole box
    assert whole.all()


def test_cam_mask_and_cutout():
    arr, gt = _square_photo()
    cam = gt.astype(np.float32)
    m = box_to_mask("cam", arr, (24, 14, 58, 46), cam, 0.5)
    assert M.mask_iou(m, gt) == 1.0
    fg, mask_img = cutout(arr, (24, 14, 58, 46), m)
    assert fg.size == (34, 32) and mask_img.size == (34, 32)
    a = np.asarray(fg)
    assert (a[0, 0] == 255).all() and tuple(a[16, 16]) == (30, 60, 160)  # white outside, object inside
    assert set(np.unique(np.asarray(mask_img))) == {0, 255}
    with pytest.raises(InputError, match="unknown mask method"):
        box_to_mask("magic", arr, (0, 0, 5, 5))


def test_u2netp_masks_a_salient_object():
    try:
        u2netp_path()
    except InputError as e:
        pytest.skip(str(e))
    arr, gt = _square_photo()
    m = box_to_mask("u2netp", arr, (20, 10, 60, 50))
    assert M.mask_iou(m, gt, (20, 10, 60, 50)) > 0.7


# --------------------------------------------------------------------------- the commands, on real photos
def _photo_folder(data_root, dst, cls, n):
    """``n`` test photos showing ``cls``, plus one unreadable file."""
    photos = [p for p in load_photos(data_root, "test") if cls in p.labels][:n]
    os.makedirs(dst, exist_ok=True)
    for p in photos:
        shutil.copy(p.path, dst / p.name)
    (dst / "broken.jpg").write_bytes(b"not a jpeg")
    return photos


@shipped
def test_localize_cli_on_real_photos(data_root, tmp_path, capsys):
    from fos.localize.__main__ import main

    photos = _photo_folder(data_root, tmp_path / "cows", "cow", 4)
    out = tmp_path / "boxes.json"
    assert main(["--images", str(tmp_path / "cows"), "--category", "cow", "--json", str(out),
                 "--masks", str(tmp_path / "masks")]) == 0
    res = json.load(open(out))
    assert sorted(res) == sorted(p.name for p in photos)  # the broken file is listed, not fatal
    assert "broken.jpg" in capsys.readouterr().err
    hits = 0
    for p in photos:
        x1, y1, x2, y2 = res[p.name]["box"]
        assert 0 <= x1 < x2 <= p.width and 0 <= y1 < y2 <= p.height
        assert 0 <= res[p.name]["score"] <= 1
        hits += M.best_iou([(x1, y1, x2, y2)], p.boxes["cow"]) >= 0.3
        m = np.asarray(Image.open(tmp_path / "masks" / (p.name[:-4] + ".png")))
        assert m.shape == (p.height, p.width) and set(np.unique(m)) <= {0, 255} and m.any()
    assert hits >= 3  # the shipped localizer finds most of these cows
    assert main(["--images", str(tmp_path / "cows"), "--category", "unicorn", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown category 'unicorn'" in err and "cow" in err and "Traceback" not in err


@shipped
def test_photo_without_the_category_scores_low(data_root):
    from fos.localize.infer import Localizer

    loc = Localizer(SHIPPED)
    test = load_photos(data_root, "test")
    with_cow = [p for p in test if p.labels == ["cow"]][:5]
    no_cow = [p for p in test if "cow" not in p.labels and len(p.labels) == 1][:5]
    s_with = [loc.localize(p.path, "cow").score for p in with_cow]
    s_without = [loc.localize(p.path, "cow").score for p in no_cow]
    assert min(s_with) > max(s_without)
    assert np.mean(np.array(s_without) < loc.cfg.score_threshold) >= 0.8


@shipped
def test_library_grow_adds_cutouts_with_provenance(data_root, tiny_weights, tmp_path, capsys):
    from fos.library import Library
    from fos.library.__main__ import main

    photos = _photo_folder(data_root, tmp_path / "cows", "cow", 3)
    lib = tmp_path / "lib"
    argv = ["grow", "--photos", str(tmp_path / "cows"), "--category", "cow", "--out", str(lib),
            "--weights", tiny_weights, "--backend", "torch", "--min-score", "0.3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    L = Library(str(lib))
    grown = [it for it in L.items if it["id"].startswith("grown/cow/")]
    assert 1 <= len(grown) <= 3 and len(L) == len(grown)
    for it in grown:
        prov = it["provenance"]
        assert prov["mask_method"] and 0.3 <= prov["score"] <= 1 and len(prov["box"]) == 4
        fg = Image.open(L.path(L.ids.index(it["id"])))
        assert fg.size == (prov["box"][2] - prov["box"][0], prov["box"][3] - prov["box"][1])
    report = json.load(open(lib / "grow-report.json"))
    assert any(s["photo"].endswith("broken.jpg") for s in report["skipped"]) and "broken.jpg" in out
    assert not os.path.exists(lib / ".pending-grow")
    # growing again adds nothing new; a threshold no photo reaches skips them all and keeps the library
    before = open(lib / "library.json").read()
    assert main(argv[:-1] + ["0.999"]) == 0
    assert open(lib / "library.json").read() == before
    assert "score" in capsys.readouterr().out
    # an empty result on a new library writes nothing
    assert main(argv[:6] + [str(tmp_path / "none")] + argv[7:-1] + ["0.999"]) == 2
    assert not os.path.exists(tmp_path / "none")
    _ = photos


def test_bad_weights_and_folders_are_clear_errors(tmp_path, capsys):
    from fos.localize.__main__ import main
    from fos.localize.infer import load_localizer, save_localizer

    model = WsolNet(WsolCfg(classes=["cow", "dog"], pretrained=False, input_size=64))
    w = str(tmp_path / "loc.safetensors")
    save_localizer(model, w)
    assert load_localizer(w).cfg.classes == ["cow", "dog"]
    info = json.load(open(tmp_path / "loc.json"))
    info["wsol_cfg"]["classes"] = ["cow", "dog", "cat"]  # the config no longer fits the weights
    json.dump(info, open(tmp_path / "loc.json", "w"))
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 48), (90, 120, 30)).save(photos / "a.jpg")
    assert main(["--images", str(photos), "--category", "cow", "--json", str(tmp_path / "o.json"), "--weights", w]) == 2
    err = capsys.readouterr().err
    assert "does not fit its config" in err and "Traceback" not in err
    (tmp_path / "loc.json").unlink()
    assert main(["--images", str(photos), "--category", "cow", "--json", str(tmp_path / "o.json"), "--weights", w]) == 2
    assert "has no config" in capsys.readouterr().err
    assert main(["--images", str(tmp_path / "nope"), "--category", "cow", "--json", str(tmp_path / "o.json")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.json")  # nothing written on failure
    # a folder of only unreadable files is an error, not an empty {} and exit 0
    save_localizer(model, w)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"not a jpeg")
    (junk / "b.png").write_bytes(b"")
    assert main(["--images", str(junk), "--category", "cow", "--json", str(tmp_path / "o.json"), "--weights", w]) == 2
    err = capsys.readouterr().err
    assert "none of the 2 images" in err and "a.jpg" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "o.json")
