"""The configs of :mod:`fos.inpaint`: the SPL generator (stored next to its weights) and its training."""
from __future__ import annotations

from dataclasses import dataclass, field

from fos.config import Cfg


@dataclass
class InpaintCfg(Cfg):
    """The SPL inpainting generator of :mod:`fos.inpaint` (stored next to its weights).

    It works on ``size`` x ``size`` crops around the hole. The image encoder and the semantic learner
    each down-sample three times (stride 8); the decoder runs ``blocks`` ResBlocks at stride 8, then
    up-samples three times. The semantic learner is trained to reproduce ``prior_layers`` of the frozen
    ImageNet MobileNetV2 (computed on the complete crop), resampled to stride 8 and concatenated.
    """

    size: int = 128  # working resolution of the crop (a multiple of 8)
    variant: str = "spade"  # "spade": priors modulate the decoder's normalization; "concat": concatenated once
    widths: tuple[int, int, int] = (32, 64, 96)  # channels after each of the three down-samplings
    blocks: int = 8  # decoder ResBlocks at stride 8
    spade_hidden: int = 32  # hidden channels of each SPADE's shared conv
    prior_layers: tuple[int, ...] = (6, 13)  # MobileNetV2 stages whose output is the prior (32 ch @ s8, 96 ch @ s16)
    init: str = "gray"  # the hole as the generator sees it: "gray" (SPL) or "telea" (pre-filled; output = correction)
    context: float = 2.0  # the crop around a hole is this many times the hole's longer side
    min_crop: int = 64  # ... and at least this many pixels a side (clamped to the photo)

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        self.prior_layers = tuple(int(i) for i in self.prior_layers)
        if self.variant not in ("spade", "concat"):
            raise ValueError(f"variant must be 'spade' or 'concat', got {self.variant!r}")
        if self.init not in ("gray", "telea"):
            raise ValueError(f"init must be 'gray' or 'telea', got {self.init!r}")
        if self.size % 8 or self.size < 32:
            raise ValueError(f"size must be a multiple of 8 and at least 32, got {self.size}")
        if len(self.widths) != 3:
            raise ValueError(f"widths needs three channel counts, got {self.widths}")
        if not set(self.prior_layers) <= {6, 13}:
            raise ValueError(f"prior_layers must be among (6, 13) (stride 8 and 16 outputs), got {self.prior_layers}")


@dataclass
class InpaintTrainCfg(Cfg):
    """Hyper-parameters of ``python -m fos.inpaint.train``."""

    data: list[str] = field(default_factory=lambda: ["../shared/data/msrc-fos"])  # FOSD roots with photos/
    out: str = "runs/inpaint-spl"
    variant: str = "spade"
    init: str = "gray"  # "telea": the hole is pre-filled by OpenCV's Telea and the generator learns a correction
    prior: bool = True  # False: the ablation without semantic supervision (the learner trains only through L1)
    steps: int = 3000
    batch_size: int = 16
    lr: float = 5e-4  # Adam, decayed to 0 (cosine)
    w_hole: float = 6.0  # L1 weight of hole pixels (valid pixels weigh 1)
    w_prior: float = 1.0  # weight of the semantic prior (distillation) loss
    # the mix of hole kinds (fos.inpaint.masks.KINDS), kind=weight: random boxes and other photos' object
    # shapes anywhere, and the holes users make: an object's box, its mask dilated, a box on background
    holes: str = "box=0.2,object=0.2,object-box=0.3,object-mask=0.1,background-box=0.2"
    # working resolution: 64 px trains 4.7x more crops per second than 128 px; at 128 px and 1,500 steps
    # (12k crops) SPL stayed below OpenCV's Telea inside the hole (README, "Erase what is in the box")
    size: int = 64
    seed: int = 0
    threads: int = 0
    limit: int = 0  # use only the first N photos (0 = all); for smoke tests
    ckpt_every: int = 250  # steps between checkpoints (<out>/last.pt)

    def __post_init__(self):
        if isinstance(self.data, str):
            self.data = [self.data]
        if not self.data:
            raise ValueError("--data needs at least one dataset root")
        if self.variant not in ("spade", "concat"):
            raise ValueError(f"--variant must be spade or concat, got {self.variant!r}")
        self.hole_mix()  # checks it

    def hole_mix(self) -> dict[str, float]:
        """``holes`` parsed: kind -> share (summing to 1)."""
        from fos.inpaint.masks import KINDS

        mix: dict[str, float] = {}
        for part in filter(None, (x.strip() for x in str(self.holes).split(","))):
            kind, _, w = part.partition("=")
            try:
                mix[kind.strip()] = float(w)
            except ValueError:
                raise ValueError(f"--holes takes kind=weight pairs, got {part!r}") from None
        bad = [k for k in mix if k not in KINDS]
        if bad or not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError(f"--holes takes kind=weight pairs with kinds among {', '.join(KINDS)} and positive "
                             f"weights, got {self.holes!r}")
        total = sum(mix.values())
        return {k: w / total for k, w in mix.items() if w > 0}
