import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

import fos.train.losses as L
from fos.checkpoint import save_checkpoint
from fos.config import TrainCfg
from fos.registry import build_model, load_checkpoint
from fos.train import fit
from fos.train.__main__ import main as train_main
from fos.train.data import PairDataset
from fos.train.loop import _prepare


def cfg(data_root, out, **kw):
    base = dict(data=data_root, out=str(out), epochs=2, batch_size=2, num_neg=1, limit=4, workers=0,
                ckpt_every=1, trainable_blocks=2, seed=3)
    base.update(kw)
    return TrainCfg(**base)


def test_teacher_steps_on_real_images_and_resume_is_exact(data_root, tmp_path, monkeypatch):
    # uninterrupted: 4 steps (2 epochs of 2 steps)
    ref = fit("teacher", cfg(data_root, tmp_path / "ref"), str(tmp_path / "ref.safetensors"))
    lines = [json.loads(x) for x in open(tmp_path / "ref" / "log.jsonl")]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(x["loss"])) for x in lines)

    # interrupted during step 3, then resumed by running the same command again
    real, calls = L.step_losses, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(L, "step_losses", flaky)
    c = cfg(data_root, tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        fit("teacher", c, str(tmp_path / "run.safetensors"))
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 2
    assert not os.path.exists(tmp_path / "run.safetensors")
    monkeypatch.setattr(L, "step_losses", real)
    fit("teacher", c, str(tmp_path / "run.safetensors"))
    a, b = load_file(ref), load_file(str(tmp_path / "run.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    info = json.load(open(tmp_path / "run.json"))
    assert info["steps"] == 4 and info["model_name"] == "teacher"
    # another configuration on the same run folder is refused, not silently mixed
    with pytest.raises(ValueError, match="other settings"):
        fit("teacher", cfg(data_root, tmp_path / "run", lr=1.0), str(tmp_path / "x.safetensors"))


def test_student_step_on_real_images(data_root, tmp_path):
    teacher = build_model("teacher", pretrained=False).eval()
    tpath = str(tmp_path / "teacher.safetensors")
    save_checkpoint(teacher, tpath)
    out = fit("student", cfg(data_root, tmp_path / "s", epochs=1, limit=2, teacher=tpath),
                str(tmp_path / "student.safetensors"))
    log = [json.loads(x) for x in open(tmp_path / "s" / "log.jsonl")]
    assert len(log) == 1 and {"triplet", "distill", "bce", "loss"} <= log[0].keys()
    assert log[0]["loss"] == pytest.approx(log[0]["triplet"] + log[0]["distill"] + log[0]["bce"], rel=1e-4)
    s = load_checkpoint(out)
    assert s.cfg.kind == "student"


def test_losses_hand_computed():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[1.0, 0.0]])  # distance 0
    n = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # distances 1 and 0
    # relu(0 - 1 + 0.1) = 0, relu(0 - 0 + 0.1) = 0.1 -> mean 0.05
    assert L.triplet_loss(a, p, n, 0.1).item() == pytest.approx(0.05)


def test_negative_backgrounds(data_root):
    from torch.utils.data import default_collate

    from fos.config import PreprocessCfg
    from fos.data import load_train

    recs = [r for r in load_train(data_root) if r.category == "cat"][:3]
    c = cfg(data_root, "unused", num_neg=1, neg_bg=1, aug_prob=0.0, w_rank=1.0, w_kd=0.5)
    teacher_ds = PairDataset(recs, c, PreprocessCfg(), student_inputs=False)
    item = teacher_ds[0]
    # own cutout on its background (1), one other cutout (0), own cutout on another cat background (0)
    assert item["comp"].shape == (3, 3, 224, 224) and item["label"].tolist() == [1.0, 0.0, 0.0]
    assert not torch.equal(item["comp"][2], item["comp"][0])  # a different background around the cutout
    student_ds = PairDataset(recs, c, PreprocessCfg(), student_inputs=True)
    s_item = student_ds[0]
    assert s_item["nbg"].shape == (1, 3, 224, 224) and s_item["ngeom"].shape == (1, 17)
    assert s_item["comp"].shape[0] == 2  # distillation targets only for the pairs on the own background
    assert not torch.equal(s_item["nbg"][0], s_item["bg"])
    batch = default_collate([student_ds[0], student_ds[1]])
    student, teacher = build_model("student", pretrained=False), build_model("teacher", pretrained=False)
    parts = L.step_losses("student", student, teacher, batch, c)
    assert all(torch.isfinite(v) for v in parts.values()) and {"rank", "kd"} <= parts.keys()
    assert parts["loss"].item() == pytest.approx(
        sum(parts[k].item() for k in ("triplet", "distill", "bce", "rank")) + 0.5 * parts["kd"].item(), rel=1e-5)
    assert parts["kd"].item() >= 0 and parts["rank"].item() > 0  # KL is non-negative; CE of 2 finite logits > 0
    # KL on the appearance logits: the geometry terms are taken out of both sides
    with torch.no_grad():
        student.head.geom_fc.weight.fill_(3.0)
        teacher.geom_fc.weight.fill_(-2.0)
    app = L.step_losses("student", student, teacher, batch, cfg(data_root, "unused", num_neg=1, neg_bg=1, w_kd=1.0,
                                                                 kd_on="appearance"))
    with torch.no_grad():
        student.head.geom_fc.weight.zero_()
        teacher.geom_fc.weight.zero_()
    zero = L.step_losses("student", student, teacher, batch, cfg(data_root, "unused", num_neg=1, neg_bg=1, w_kd=1.0))
    assert app["kd"].item() == pytest.approx(zero["kd"].item(), rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="kd-on"):
        L.step_losses("student", student, teacher, batch, cfg(data_root, "unused", num_neg=1, neg_bg=1, kd_on="pixels"))


def test_relit_negatives_differ_from_the_positive_only_in_lighting(data_root):
    """neg_relight: the positive cutout under another photometric change, on the same background; the
    background and its positive share one change, so the untouched cutout is not the answer."""
    from torch.utils.data import default_collate

    from fos.config import PreprocessCfg
    from fos.data import load_train

    recs = [r for r in load_train(data_root) if r.category == "cow"][:3]
    c = cfg(data_root, "unused", num_neg=1, neg_relight=2, relight_prob=1.0, aug_prob=0.0, box_jitter=0.0)
    ds = PairDataset(recs, c, PreprocessCfg(), student_inputs=True)
    item = ds[0]
    assert item["label"].tolist() == [1.0, 0.0, 0.0, 0.0] and item["fg"].shape[0] == 4
    pos, relit = item["fg"][0], item["fg"][2:]
    white = (pos == 1.0).all(0)  # the cutout's white surround (normalised 255 -> 1) stays white in every copy
    for x in relit:
        assert (x[:, white] == 1.0).all() and (x - pos).abs()[:, ~white].mean() > 0.01
    assert torch.equal(item["geom"][2, :5], item["geom"][0, :5])  # same cutout, same box: same geometry ...
    assert not torch.equal(item["geom"][2, 11:], item["geom"][0, 11:])  # ... but other colour statistics
    # the background was changed too: it differs from the stored photo outside the box
    plain = PairDataset(recs, cfg(data_root, "unused", num_neg=1, aug_prob=0.0, box_jitter=0.0), PreprocessCfg(),
                          student_inputs=True)[0]
    assert not torch.equal(item["bg"], plain["bg"])
    assert torch.equal(PairDataset(recs, c, PreprocessCfg(), student_inputs=True)[0]["fg"], item["fg"])  # seeded
    batch = default_collate([ds[0], ds[1]])
    student, teacher = build_model("student", pretrained=False), build_model("teacher", pretrained=False)
    parts = L.step_losses("student", student, teacher, batch, c)
    assert all(torch.isfinite(v) for v in parts.values())


def test_hard_negatives_are_the_closest_in_aspect(data_root):
    from fos.config import PreprocessCfg
    from fos.data import load_train

    recs = [r for r in load_train(data_root) if r.category == "cow"]
    ds = PairDataset(recs, cfg(data_root, "unused", num_neg=2, hard_neg=1.0, aug_prob=0.0), PreprocessCfg(),
                       student_inputs=False)
    logar = {n: math.log(w / h) for n, (w, h) in ds.fg_size.items()}
    for i in range(3):
        item = ds[i]
        lb = float(item["geom"][0, 0])  # log aspect of this item's (jittered) box
        close = sorted(ds.neg_pool[i], key=lambda n: abs(logar[n] - lb))[:4]
        allowed = {round(logar[n], 4) for n in close}
        assert {round(float(g[1]), 4) for g in item["geom"][1:]} <= allowed  # every negative's log aspect


def test_train_cli_errors_are_one_line(data_root, tmp_path, capsys):
    assert train_main(["teacher", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "file not found" in err and "Traceback" not in err


def test_two_gloo_processes_train_identical_weights_and_the_loss_falls(data_root, tmp_path):
    """torchrun with 2 CPU processes (gloo): a few real steps on real images; DDP keeps both ranks' weights
    identical (each rank's sha256 is gathered into the JSON) and the loss on the training batch fell."""
    import subprocess
    import sys

    from torch.utils.data import default_collate

    from fos.config import PreprocessCfg
    from fos.data import load_train

    out, save = tmp_path / "run", tmp_path / "t.safetensors"
    args = ["--model", "teacher_tiny", "--data", data_root, "--limit", "8", "--batch-size", "2", "--epochs", "3",
            "--workers", "0", "--num-neg", "1", "--aug-prob", "0", "--box-jitter", "0", "--lr", "0.003",
            "--threads", "1", "--seed", "3"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                        "-m", "fos.train", "teacher", *args, "--out", str(out), "--save", str(save)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.load(open(tmp_path / "t.json"))
    shas = info["rank_weights_sha256"]
    assert info["world_size"] == 2 and len(shas) == 2 and shas[0] == shas[1]
    assert info["steps"] == 6 and len(open(out / "log.jsonl").readlines()) == 6  # rank 0 alone logs
    # the loss on the 8 training backgrounds (epoch 0's draws), before and after
    c = cfg(data_root, out, model="teacher_tiny", limit=8, num_neg=1, aug_prob=0.0, box_jitter=0.0, seed=3)
    torch.manual_seed(c.seed)
    before, _ = _prepare("teacher", c)
    after = load_checkpoint(str(save))
    ds = PairDataset(load_train(data_root)[:8], c, PreprocessCfg(), student_inputs=False)
    batch = default_collate([ds[i] for i in range(8)])
    with torch.no_grad():
        l0 = L.step_losses("teacher", before.eval(), None, batch, c)["loss"].item()
        l1 = L.step_losses("teacher", after.eval(), None, batch, c)["loss"].item()
    assert l1 < l0, (l0, l1)
