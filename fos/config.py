"""Configuration dataclasses. Every config round-trips through ``asdict`` / ``from_dict``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


BACKENDS = ("torch", "onnxruntime", "tensorrt")  # the runtimes of fos.runtime, in the order "auto" does not try them
INDEXES = ("flat", "hnsw", "ivf")  # the local vector store's indexes (fos.library.store): exact, then approximate
STORES = ("local", "milvus")  # the vector stores of the prefilter


class Cfg:
    """Mixin: ``from_dict`` that names unknown and missing fields. A saved config holds every field (the
    shipped weights' JSON included), so none is guessed: a config saved by another version is refused
    with a message that names what it lacks."""

    @classmethod
    def from_dict(cls, d: dict[str, Any] | Any):
        if isinstance(d, cls):
            return d
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__} must be an object of fields, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown, missing = set(d) - names, names - set(d)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; expected some of {sorted(names)}")
        if missing:
            raise ValueError(f"the {cls.__name__} lacks the fields {sorted(missing)}: it was saved by another "
                             "version of fos; save it again with every field (or retrain)")
        return cls(**d)


@dataclass
class PreprocessCfg(Cfg):
    """How images become tensors. Shared by training, evaluation, export, benchmark and app."""

    image_size: int = 224  # square network input, as in the paper
    mean: float = 0.5  # the paper normalizes with mean = std = 0.5 on every channel
    std: float = 0.5
    fill_value: int = 128  # gray that fills the query box in the background
    pad_value: int = 255  # white used to pad foregrounds to a square
    crop_scale: float = 2**0.5  # teacher crop: box width and height enlarged by sqrt(2) (twice the area)
    max_pixels: int = 40_000_000  # refuse larger images with a clear error
    # what the student's background encoder sees: "context", a crop around the box with its width and
    # height grown ``student_context`` times (the teacher's crop then spans about 5 of the 7x7 cells,
    # whatever the box's size), or "whole", the whole photo (a small box gets about 2 cells; the
    # shipped student's)
    student_view: str = "context"
    student_context: float = 2.0

    def __post_init__(self):
        if self.student_view not in ("context", "whole"):
            raise ValueError(f"student_view must be 'context' or 'whole', got {self.student_view!r}")
        if self.student_context < self.crop_scale:
            raise ValueError(f"student_context ({self.student_context}) must be at least crop_scale "
                             f"({self.crop_scale}): the student's view has to hold the teacher's crop")



@dataclass
class ModelCfg(Cfg):
    """Architecture of a teacher or a student. Stored next to every checkpoint.

    The defaults are the registered ``student``.
    """

    kind: str = "student"  # "student" or "teacher"
    backbone: str = "mobilenet_v2"  # "mobilenet_v2", "efficientnet_lite0", "vgg19" or "tiny" (random-init test network)
    pretrained: bool = True  # ImageNet init of the backbone when building from scratch
    # MobileNetV2 up to its last 1x1 conv + ReLU6 (1280 channels, what checkpoints made before this
    # field used), or up to the last inverted residual, linear, 320 channels (False): the ReLU6 stage
    # died in training (see fos.models.backbones.Backbone)
    backbone_relu_out: bool = False
    proj_dim: int | None = 128  # 1x1 projection of the backbone map; None keeps the backbone width
    embed_dim: int | None = 128  # linear embedding for the triplet loss / prefilter; None = pooled map
    geometry: bool = True  # feed box and foreground geometry (fos.preprocess.geometry_batch) to the classifier
    # how many geometry columns the classifier reads: 3 = aspect terms only (checkpoints made before
    # the field existed), 5 = aspect and resolution (scale) terms
    geometry_dims: int = 5
    # projections and the distillation feature without ReLU. A ReLU projection trained at the heads'
    # learning rate died (1 of 128 live channels in the background encoder); a linear map cannot.
    # False (ReLU) is what checkpoints made before this field existed use.
    linear_features: bool = True
    # activation after the head's first conv: "leaky" (LeakyReLU 0.1) or "relu". The ReLU head of the
    # student shipped until now died in training: every unit negative on every test pair, so its score
    # did not depend on the cutout's pixels at all. A leaky unit cannot die.
    head_act: str = "leaky"
    # a background-by-cutout product inside the head's first layer (see DistillHead). Without it the
    # head is a sum of a background half and a cutout half; with a leaky unit that is nearly linear, so
    # its appearance logit ranks the cutouts of a category the same way for every photo.
    interaction: bool = True
    # a photometric term beside the geometry term (fos.models.discofos.PhotometricTerm): a small MLP on
    # the CIELAB mean and spread of the context ring around the box and of the cutout's object pixels
    # (columns 5-16 of fos.preprocess.geometry_batch; the cutout's are cached per library item)
    photometric: bool = False
    photometric_hidden: int = 32
    align_size: int = 7  # RoIAlign output size
    sampling_ratio: int = 2  # RoIAlign samples per bin side; <= 0 means adaptive (torchvision's -1)



@dataclass
class TrainCfg(Cfg):
    """Hyper-parameters of ``python -m fos.train``."""

    # dataset roots in FOSD layout (--data A --data B trains on all of them; names must not collide)
    data: list[str] = field(default_factory=lambda: ["../shared/data/msrc-fos"])
    out: str = "runs/student"
    model: str = ""  # registered model to train; "" = the kind ("teacher" or "student")
    labels: str = "sfosd"  # which train json: train_sfosd.json or train_rfosd.json
    epochs: int = 6
    batch_size: int = 8  # backgrounds per step
    num_neg: int = 3  # negatives per background
    neg_bg: int = 0  # also score the positive cutout on this many other backgrounds of its class, as negatives
    hard_neg: float = 0.0  # chance that a negative is drawn from the 2*num_neg closest in aspect ratio to the box
    # negatives that differ from the positive only in lighting: the positive cutout under another random
    # photometric change (fos.photometric.random_change) than the one its background and the positive share
    # (relight_prob), so that "the untouched cutout is the positive" cannot be learned; with it on, the
    # positive's colour jitter is off (it taught the models to ignore a lighting mismatch), blur stays
    neg_relight: int = 0
    relight_prob: float = 0.8  # chance that a background and its positive get one shared random change
    lr: float = 3e-4  # backbone stages
    head_lr_mult: float = 10.0  # projections, heads and geometry weights learn this much faster
    geom_prior: float = 4.0  # init the geometry weights at [0, 0, -geom_prior, 0, -scale_prior]: start from
    scale_prior: float = 2.0  # the aspect + resolution ranking (1 : 0.5: best on train, scripts/geometry_mix.py)
    weight_decay: float = 1e-4
    trainable_blocks: int = 6  # train only the last N backbone stages (rest frozen, faster on CPU)
    box_jitter: float = 0.5  # enlarge the box by up to this fraction per side (R-FOSD box jitter)
    aug_prob: float = 0.5  # chance that a positive gets colour jitter or blur
    # resize every cutout by a random factor in [1/(1+r), 1+r] (aspect kept) before it is composited and
    # its geometry computed, so that a cutout's pixel size no longer equals its box's (0 = off)
    fg_rescale: float = 0.0
    amp: bool = True  # mixed precision (bfloat16 autocast) when training on CUDA
    triplet_margin: float = 0.1
    w_triplet: float = 1.0
    w_distill: float = 1.0
    w_bce: float = 1.0
    # student: softmax over each background's candidates (own cutout first): cross-entropy to the own
    # cutout (w_rank) and KL to the teacher's softmax over the same composites (w_kd). BCE alone lets
    # the score split into a background term plus a cutout term, which ranks every query alike.
    w_rank: float = 0.0
    w_kd: float = 0.0
    kd_on: str = "score"  # "score": the full logits; "appearance": both logits without their geometry terms
    teacher: str = "weights/teacher.safetensors"  # used by the student only
    # how images become tensors, saved with the weights (``--student-view`` sets its student_view)
    preprocess: PreprocessCfg = field(default_factory=PreprocessCfg)
    seed: int = 0
    threads: int = 0  # torch threads; 0 = fos.threads.default_threads()
    workers: int = 2  # data loader processes
    max_steps: int = 0  # stop after this many steps (0 = no limit); for smoke tests
    limit: int = 0  # use only the first N training backgrounds (0 = all)
    ckpt_every: int = 25  # steps between checkpoints (also at every epoch end)

    def __post_init__(self):
        if isinstance(self.data, str):  # configs saved when data was one root
            self.data = [self.data]
        self.data = list(self.data)
        if not self.data:
            raise ValueError("--data needs at least one dataset root")
        if self.fg_rescale < 0:
            raise ValueError(f"--fg-rescale must be >= 0, got {self.fg_rescale}")
        self.preprocess = PreprocessCfg.from_dict(self.preprocess)
        if self.kd_on not in ("score", "appearance"):
            raise ValueError(f"--kd-on must be 'score' or 'appearance', got {self.kd_on!r}")



@dataclass
class EngineCfg(Cfg):
    """The search cascade (:class:`fos.search.SearchEngine`)."""

    prefilter_k: int = 200  # embedding prefilter keeps this many per query; 0 = score every candidate
    index: str = "flat"  # local store index: flat (exact), hnsw or ivf (approximate)
    store: str = "local"  # local or milvus
    milvus_uri: str | None = None  # e.g. fos_milvus.db (Milvus Lite) or http://host:19530
    head_batch: int = 512  # candidates per head batch
    rerank: int = 0  # teacher re-scores the top N (0 = off)

    def __post_init__(self):
        for name in ("prefilter_k", "head_batch", "rerank"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "head_batch" else 0):
                raise ValueError(f"{name.replace('_', '-')} must be a whole number >= "
                                 f"{1 if name == 'head_batch' else 0}, got {v!r}")
        if self.index not in INDEXES:
            raise ValueError(f"unknown index {self.index!r}; use flat (exact), hnsw or ivf")
        if self.store not in STORES:
            raise ValueError(f"unknown vector store {self.store!r}; use local or milvus")


def to_dict(cfg) -> dict[str, Any]:
    return asdict(cfg)


__all__ = ["BACKENDS", "INDEXES", "STORES", "Cfg", "PreprocessCfg", "ModelCfg", "TrainCfg", "EngineCfg", "to_dict", "field"]
