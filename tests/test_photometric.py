"""The photometric term: its training on frozen student features, its checkpoint through every path,
and the colour statistics a library stores."""
import json
import os

import numpy as np
import pytest
import torch

from fos.registry import load_checkpoint
from fos.preprocess import InputError, prepare_background
from fos.runtime import TorchBackend
from fos.scoring import Scoring
from tests.conftest import save_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    from fos.train.photometric import main

    w = save_tiny(tmp_path_factory.mktemp("base"), teacher=False)
    out = str(tmp_path_factory.mktemp("photo") / "student.safetensors")
    # the README's command, on 120 records
    assert main(["--student", os.path.join(w, "student.safetensors"), "--data", data_root, "--limit", "120",
                 "--epochs", "20", "--batch-size", "16", "--threads", "1", "--save", out]) == 0
    return w, out


def test_training_learns_lighting_and_keeps_the_student(trained):
    w, out = trained
    info = json.load(open(out.replace(".safetensors", ".json")))
    hist = info["history"]
    assert info["model_cfg"]["photometric"] is True and info["train_records"] == 120
    # on its training groups the term finds the own cutout's lighting well above chance (1/5)
    assert np.mean([h["lighting_top1"] for h in hist[-3:]]) > 0.35 and hist[-1]["loss"] < hist[0]["loss"]
    new, base = load_checkpoint(out), load_checkpoint(os.path.join(w, "student.safetensors"))
    assert new.head.photo is not None
    for k, v in base.state_dict().items():  # everything but the term is the frozen student
        assert torch.equal(new.state_dict()[k], v), k


def test_score_moves_with_the_photos_lighting(trained, data_root):
    """The same cutout in the same box: relighting the background changes which cast scores best."""
    from PIL import Image

    from fos.data import load_test
    from fos.photometric import cast_gains, outside_box, photo_cast, relight
    from fos.preprocess import foreground_colour, foreground_mask, load_image, norm_to_pixel_box

    _, out = trained
    scoring = Scoring(TorchBackend(student=load_checkpoint(out)))
    q = load_test(data_root).categories["cow"].queries[0]
    bg = load_image(q.bg_path)
    box = norm_to_pixel_box(q.bbox, *bg.size)
    fg = load_image(q.bg_path.replace("bg_set1", "fg"))
    own = photo_cast(bg, box)
    casts = [own, own * np.array([1.6, 1.2, 0.7]), own * np.array([0.6, 0.8, 1.4])]
    cands = [relight(fg, cast_gains(own, c), foreground_mask(fg)) for c in casts]
    fp, _ = scoring.encode_foregrounds(cands)
    best = []
    for c in casts:
        b = relight(bg, cast_gains(own, c), outside_box(bg.size, box))
        qq = scoring.encode(prepare_background(b, box, scoring.pcfg))
        s = scoring.student(qq, fp, [im.size for im in cands], [foreground_colour(im) for im in cands])
        best.append(int(np.argmax(s)))
    assert len(set(best)) > 1, best  # an appearance term that ignored the photo would pick one cast every time
    assert isinstance(cands[0], Image.Image)


def test_exported_photometric_student_matches_torch(trained, tmp_path, data_root):
    import shutil

    from fos.export.onnx import export_and_check

    w, out = trained
    wd = tmp_path / "w"
    wd.mkdir()
    shutil.copy(out, wd / "student.safetensors")
    shutil.copy(out.replace(".safetensors", ".json"), wd / "student.json")
    res = export_and_check(str(wd), data=data_root, fp16=False)
    diffs = res["parity"]["float32"]["max_abs_diff"]
    assert any(k.startswith("student_head") for k in diffs) and max(diffs.values()) < 1e-3


def test_scoring_refuses_missing_colour_statistics(trained, data_root):
    from fos.data import load_test
    from fos.preprocess import load_image, norm_to_pixel_box

    _, out = trained
    scoring = Scoring(TorchBackend(student=load_checkpoint(out)))
    q = load_test(data_root).categories["cow"].queries[0]
    bg = load_image(q.bg_path)
    qq = scoring.query(bg, norm_to_pixel_box(q.bbox, *bg.size))
    fp, _ = scoring.encode_foregrounds([load_image(q.bg_path.replace("bg_set1", "fg"))])
    with pytest.raises(InputError, match="no colour statistics"):
        scoring.student(qq, fp, [(50, 40)], [np.full(6, np.nan)])


def test_library_stores_colours_and_computes_them_for_older_libraries(data_root, tmp_path):
    from fos.library import Library
    from fos.library.build import write_library
    from fos.preprocess import foreground_colour, load_image
    from tests.test_data import _copy_test

    w = save_tiny(tmp_path / "w", teacher=False)
    root, _ = _copy_test(data_root, tmp_path / "src", cats=("cat",))
    write_library(TorchBackend(w), str(root), str(tmp_path / "lib"), progress=False)
    lib = Library(str(tmp_path / "lib"))
    expect = np.stack([foreground_colour(load_image(lib.path(i), "RGBA")) for i in range(len(lib))])
    assert lib.colour.shape == (len(lib), 6) and np.allclose(lib.colour, expect, atol=1e-5)
    # a library written before the field existed: the statistics come from its cutout files
    shard = json.load(open(tmp_path / "lib" / "library.json"))["shards"][0]
    p = tmp_path / "lib" / "shards" / f"{shard}.json"
    items = json.load(open(p))
    for it in items:
        it.pop("colour")
    p.write_text(json.dumps(items))
    assert np.allclose(Library(str(tmp_path / "lib")).colour, expect, atol=1e-5)
