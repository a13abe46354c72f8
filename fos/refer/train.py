"""``python -m fos.refer train [--data ROOT ...]``: train the referring segmenter from phrases only.

1. **Phrases** (:mod:`fos.refer.phrases`) are written for the train photos of every root; the masks
   write the text and nothing else. Photos are also used mirrored, with left and right swapped.
2. **Frozen features** of the image encoder are computed once per photo (and its mirror image) and
   cached in the run folder.
3. **Stage 1**, the response: each step takes ``--batch-size`` photos, one positive phrase of each and
   ``--negatives`` same-category phrases with an attribute the photo lacks. Every photo is scored against
   every phrase of the step; the label of (photo, phrase) is whether the phrase holds in the photo.
   Loss: multi-label soft margin on :func:`fos.refer.model.class_logits`.
   The image encoder starts from the shipped localizer's backbone (``--image-init``; DA-WSOL trained on
   the category words of these photos), whose pixel features already tell the categories apart
   where they are. A location gate (:meth:`fos.refer.model.ReferNet.gate`) reads "on the left", "at
   the top" from the phrase.
4. **Pseudo masks**: for each instance, the response maps of its unique phrases are computed as at
   inference; the positive response map selection keeps the one that agrees best with all of them
   (the mean of the others' calibrated responses under it), and its pixels at ``--pseudo-fraction`` of
   its peak or more are the pseudo mask of every one of those phrases.
5. **Stage 2**: the segmenter head learns the pseudo masks (binary cross-entropy), from the stage-1
   outputs computed as at inference (the phrase, then the category bank), with the positive cells
   weighted by the negative-to-positive ratio of the batch.

``--holdout`` (default 0.2) keeps a fixed share of the train photos out of training, by a hash of the file
name: the dev split that designs are chosen on (``python -m fos.refer evaluate --split dev``). The saved
config says which mask is served (``--mask-from``: the segmenter's, or the response's component holding
its peak at ``--peak-fraction`` of it).

A checkpoint is written to ``--out`` every 250 steps and at each stage's end; rerunning the same command
resumes from it. The weights and their JSON config go to ``--save``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fos import cli
from fos.checkpoint import atomic_write_json, resume, save_resumable
from fos.config import to_dict
from fos.data import DatasetError
from fos.data.photos import load_photo_roots
from fos.preprocess import load_image, photo_input
from fos.refer.config import ReferCfg, ReferTrainCfg
from fos.refer.infer import DEFAULT_WEIGHTS, bank_phrases, save_referrer
from fos.refer.model import ReferNet, class_logits
from fos.refer.phrases import Phrase, PhotoPhrases, is_dev, photo_phrases, referents, words

log = logging.getLogger("fos.refer.train")
CKPT_EVERY = 250


def load_phrases(roots: list[str], split: str, limit: int = 0, cache: str | None = None,
                 progress: bool = True) -> list[PhotoPhrases]:
    """The :class:`PhotoPhrases` of a split's photos (photos with no instance large enough are left out);
    cached as JSON in ``cache`` when given."""
    if cache and os.path.isfile(cache):
        with open(cache, encoding="utf-8") as f:
            d = json.load(f)
        if d.get("roots") == [os.path.abspath(r) for r in roots] and d.get("split") == split and d.get("limit") == limit:
            return [PhotoPhrases.from_json(p) for p in d["photos"]]
    photos = []
    for r in roots:
        phs = load_photo_roots([r], split)
        photos += phs[:limit] if limit else phs
    out = [pp for pp in (photo_phrases(ph) for ph in tqdm(photos, desc=f"phrases ({split})", unit="photo",
                                                           disable=not progress)) if pp.instances]
    if cache:
        atomic_write_json(cache, {"roots": [os.path.abspath(r) for r in roots], "split": split, "limit": limit,
                                  "photos": [p.to_json() for p in out]})
    return out


def vocabulary(photos: list[PhotoPhrases], min_photos: int) -> tuple[list[str], list[str]]:
    """(categories with at least ``min_photos`` photos, every word of their phrases), sorted."""
    counts: dict[str, int] = {}
    for pp in photos:
        for c in {i.category for i in pp.instances}:
            counts[c] = counts.get(c, 0) + 1
    cats = sorted(c for c, n in counts.items() if n >= min_photos)
    vocab = set()
    for pp in photos:
        for p in pp.positives() + pp.negatives() + [p.flipped() for p in pp.positives()]:
            vocab.update(words(p.text))
    for c in cats:
        vocab.update(c.split())
    return cats, sorted(vocab)


@torch.no_grad()
def frozen_features(model: ReferNet, photos: list[PhotoPhrases], path: str, batch: int = 16,
                    progress: bool = True, init: str = "") -> torch.Tensor:
    """Image-encoder features of every photo, then of every mirrored photo: (2N, C, h, w) float16,
    cached in ``path`` (recomputed when the photo list, input size, encoders or ``init`` differ)."""
    key = {"photos": [p.path for p in photos], "size": model.cfg.input_size, "encoders": model.cfg.encoders,
           "init": init}
    if os.path.isfile(path):
        st = torch.load(path, map_location="cpu", weights_only=True)
        if st.get("key") == key:
            return st["feats"]
    out, flips = [], []
    for s in tqdm(range(0, len(photos), batch), desc="frozen features", unit="batch", disable=not progress):
        x = torch.stack([photo_input(load_image(p.path, "RGB", what="photo"), model.cfg.input_size)
                         for p in photos[s:s + batch]])
        out.append(model.image(x).half())
        flips.append(model.image(x.flip(3)).half())
    feats = torch.cat(out + flips)
    from fos.checkpoint import atomic_torch_save

    atomic_torch_save({"key": key, "feats": feats}, path)
    return feats


class Views:
    """The 2N training views: photo k (k < N) and its mirror image (k + N), with their phrases. Views of
    dev photos (``holdout``, :func:`fos.refer.phrases.is_dev`) keep no phrase: nothing trains on them."""

    def __init__(self, photos: list[PhotoPhrases], categories: list[str], holdout: float = 0.0):
        keep = set(categories)
        self.views = []
        for pp in photos + [p.flipped() for p in photos]:
            pp = PhotoPhrases(pp.path, pp.width, pp.height, [i for i in pp.instances if i.category in keep], pp.masks)
            self.views.append(pp)
        dev = [is_dev(v.path, holdout) for v in self.views]
        self.pos = [[] if d else v.positives() for v, d in zip(self.views, dev)]
        self.neg = [[] if d else v.negatives() for v, d in zip(self.views, dev)]

    def __len__(self):
        return len(self.views)

    def usable(self) -> np.ndarray:
        return np.array([bool(p) for p in self.pos])


def stage1_batch(views: Views, idx: np.ndarray, negatives: int, rng: np.random.Generator):
    """(phrases of the step, labels (B, T), own (B, T)): one positive per view, ``negatives``
    same-category negatives per view, duplicates dropped; label = the phrase holds in the view; own =
    the phrase's category is one the view shows."""
    phrases: dict[tuple, Phrase] = {}
    for k in idx:
        pos = views.pos[k]
        p = pos[rng.integers(len(pos))]
        phrases.setdefault(p.key, p)
        neg = views.neg[k]
        for j in rng.choice(len(neg), min(negatives, len(neg)), replace=False) if neg else []:
            phrases.setdefault(neg[j].key, neg[j])
    plist = list(phrases.values())
    y = torch.tensor([[float(any(p.fits(i) for i in views.views[k].instances)) for p in plist] for k in idx])
    shown = [{i.category for i in views.views[k].instances} for k in idx]
    own = torch.tensor([[p.category in cats for p in plist] for cats in shown])
    return plist, y, own


def tokens_for(model: ReferNet, phrases: list[Phrase]) -> torch.Tensor:
    return model.text.tokenize([p.text for p in phrases])


def query_lists(model: ReferNet, queries: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query: [query] + the category bank, as at inference. Returns (tokens (Q + K, L), index
    (Q, 1 + K) into them, valid (Q, 1 + K): the bank phrase equal to the query is left out)."""
    bank = bank_phrases(model.cfg)
    toks = model.text.tokenize(list(queries) + bank)
    q = len(queries)
    index = torch.cat([torch.arange(q)[:, None], q + torch.arange(len(bank)).expand(q, -1)], 1)
    norm = [" ".join(w for w in words(t) if w != "the") for t in queries]
    valid = torch.ones(q, 1 + len(bank), dtype=torch.bool)
    for i, t in enumerate(norm):
        for j, b in enumerate(bank):
            if b == t:
                valid[i, 1 + j] = False
    return toks, index, valid


def stage_outputs(model: ReferNet, feats: torch.Tensor, queries: list[str]):
    """Stage-1 outputs of each photo (B, C, h, w) with its query (B) and the bank, as at inference:
    (scores, maps, vis, lan, valid), phrase 0 the query."""
    toks, index, valid = query_lists(model, queries)
    lan = model.phrases(toks)[index]  # (B, 1 + K, dim)
    scores, vis, plan = model.respond(feats, lan)
    return scores, model.maps(scores, valid), vis, plan, valid


@torch.no_grad()
def pseudo_masks(model: ReferNet, feats: torch.Tensor, views: Views, fraction: float, progress: bool = True):
    """Per view: {instance position: (pseudo mask (h, w) bool, its unique phrases)} by positive response
    map selection. Views of one instance's phrases are computed as at inference."""
    out = []
    for k in tqdm(range(len(views)), desc="pseudo masks", unit="view", disable=not progress):
        v = views.views[k]
        groups: dict[int, list[Phrase]] = {}
        for p in views.pos[k]:
            r = referents(p, v.instances)
            if len(r) == 1:
                groups.setdefault(r[0], []).append(p)
        res = {}
        if groups:
            plist = [p for ps in groups.values() for p in ps]
            f = feats[k:k + 1].float().expand(len(plist), -1, -1, -1)
            _, maps, _, _, _ = stage_outputs(model, f, [p.text for p in plist])
            m = maps[:, 0]  # (n, h, w)
            s = 0
            for inst, ps in groups.items():
                g = m[s:s + len(ps)]
                s += len(ps)
                w = g / g.flatten(1).max(-1).values.clamp_min(1e-6)[:, None, None]
                # agreement of each candidate map with all the instance's phrases' responses under it
                agree = torch.einsum("jhw,khw->jk", w, g) / w.flatten(1).sum(-1).clamp_min(1e-6)[:, None]
                j = int(agree.sum(1).argmax())
                best = g[j]
                res[inst] = (best >= fraction * best.max(), ps)
        out.append(res)
    return out


def init_image_encoder(model: ReferNet, path: str) -> str:
    """Load a localizer's backbone (``features.*`` of a :mod:`fos.localize` checkpoint) into the image
    encoder; returns a description for the cache key ("" when ``path`` is empty)."""
    if not path:
        return ""
    from fos.localize.infer import load_localizer

    if not os.path.isfile(path):
        raise DatasetError(f"--image-init {path} does not exist: train the localizer first "
                           "(python -m fos.localize train), or pass --image-init '' for ImageNet features")
    loc = load_localizer(path)
    missing, unexpected = model.image.features.load_state_dict(loc.features.state_dict(), strict=False)
    if missing or unexpected:
        raise DatasetError(f"--image-init {path}: its backbone does not fit the image encoder "
                           f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    from fos.checkpoint import file_sha256

    return f"{os.path.abspath(path)}:{file_sha256(path)}"


def model_cfg(cfg: ReferTrainCfg, categories: list[str], vocab: list[str]) -> ReferCfg:
    """The :class:`ReferCfg` a run of ``cfg`` trains and saves: its network and its served mask."""
    return ReferCfg(categories=categories, vocab=vocab, input_size=cfg.input_size, dim=cfg.dim,
                    pretrained=bool(cfg.pretrained), coords=bool(cfg.coords), spatial_gate=bool(cfg.spatial_gate),
                    gate_gain=cfg.gate_gain, prompt=bool(cfg.prompt), pooling=cfg.pooling,
                    seg_features=bool(cfg.seg_features), calibration=bool(cfg.calibration), mask_from=cfg.mask_from,
                    peak_fraction=cfg.peak_fraction, prompt_method=cfg.prompt_method,
                    region_margin=cfg.region_margin, box_pad=cfg.box_pad)


def fit(cfg: ReferTrainCfg, save: str, restart: bool = False, command: str = "") -> str:
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.out, exist_ok=True)
    photos = load_phrases(cfg.data, "train", cfg.limit, os.path.join(cfg.out, "phrases-train.json"))
    cats, vocab = vocabulary([p for p in photos if not is_dev(p.path, cfg.holdout)], cfg.min_photos)
    if not photos or not cats:
        raise DatasetError(f"no training photos with a category of at least {cfg.min_photos} photos in {cfg.data}")
    model = ReferNet(model_cfg(cfg, cats, vocab))
    views = Views(photos, cats, cfg.holdout)
    ndev = sum(is_dev(p.path, cfg.holdout) for p in photos)
    usable = np.nonzero(views.usable())[0]
    log.info("%d training photos (x2 mirrored; %d more kept out as the dev split), %d categories, %d words; "
             "%d phrases, %d negatives", len(photos) - ndev, ndev, len(cats), len(vocab), sum(map(len, views.pos)),
             sum(map(len, views.neg)))
    init = init_image_encoder(model, cfg.image_init if cfg.pretrained else "")
    if init:
        log.info("image encoder: the backbone of %s", cfg.image_init)
    feats = frozen_features(model, photos, os.path.join(cfg.out, "features.pt"), init=init)
    opt1 = torch.optim.AdamW(model.trainable(1), lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt2 = torch.optim.AdamW(model.trainable(2), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = os.path.join(cfg.out, "last.pt")
    key = {"cfg": to_dict(cfg), "categories": cats, "vocab": vocab}
    stateful = {"model": model, "opt1": opt1, "opt2": opt2}
    state = resume(ckpt, key, stateful, restart)
    step = state.get("step", 0)
    if state:
        log.info("resuming %s at step %d", ckpt, step)
    total = cfg.steps + cfg.seg_steps
    bar = tqdm(total=total, initial=step, desc="train refer", unit="step", dynamic_ncols=True)
    history: list[dict] = state.get("history", [])
    t0 = time.time()
    pseudo = None
    sums: dict[str, float] = {}
    while step < total:
        stage = 1 if step < cfg.steps else 2
        rng = np.random.default_rng([cfg.seed, step])  # each step's draws depend on the step alone: resumable
        if stage == 2 and pseudo is None:
            model.eval()
            pseudo = pseudo_masks(model, feats, views, cfg.pseudo_fraction)
            triples = [(k, inst, p) for k, res in enumerate(pseudo) for inst, (_, ps) in res.items() for p in ps]
            log.info("pseudo masks: %d instances, %d phrases", sum(map(len, pseudo)), len(triples))
            if not triples:
                raise DatasetError("no instance has a phrase that names it alone: no pseudo masks to train on")
        model.train()
        if stage == 1:
            idx = rng.choice(usable, min(cfg.batch_size, len(usable)), replace=False)
            plist, y, own = stage1_batch(views, idx, cfg.negatives, rng)
            scores, _, _ = model.respond(feats[idx].float(), model.phrases(tokens_for(model, plist)))
            logits = class_logits(scores, cfg.calibration, cfg.focal_p, cfg.focal_lambda, cfg.pooling)
            loss = F.multilabel_soft_margin_loss(logits, y)
            if cfg.hard_weight and own.any():
                loss = loss + cfg.hard_weight * F.binary_cross_entropy_with_logits(logits[own], y[own])
            opt, name = opt1, "cls"
        else:
            pick = rng.choice(len(triples), min(cfg.batch_size, len(triples)), replace=False)
            ks = [triples[i][0] for i in pick]
            with torch.no_grad():
                scores, maps, vis, lan, _ = stage_outputs(model, feats[ks].float(), [triples[i][2].text for i in pick])
            logits = model.segment(vis, lan, scores, maps, torch.zeros(len(ks), dtype=torch.long))
            target = torch.stack([pseudo[triples[i][0]][triples[i][1]][0] for i in pick]).float()[:, None]
            # balanced: a pseudo mask covers a few cells of 256, and plain BCE learned to say "nothing"
            pos = target.mean().clamp(1e-3, 0.5)
            loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=(1 - pos) / pos)
            opt, name = opt2, "seg"
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        value = float(loss.detach())
        sums[name] = sums[name] * 0.98 + value * 0.02 if name in sums else value  # a running mean
        bar.update(1)
        bar.set_postfix({k: f"{v:.4f}" for k, v in sums.items()})
        if step % CKPT_EVERY == 0 or step in (cfg.steps, total):
            history.append({"step": step, **sums})
            save_resumable(ckpt, key, stateful, step=step, history=history)
    bar.close()
    model.eval()
    save_referrer(model, save, train_cfg=to_dict(cfg), history=history, train_photos=len(photos) - ndev, dev_photos=ndev,
                  train_seconds=round(time.time() - t0, 1), command=command)
    log.info("wrote %s and %s", save, os.path.splitext(save)[0] + ".json")
    return save


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fos.refer train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_training_args(p, ReferTrainCfg(), (), "runs/refer", DEFAULT_WEIGHTS)
    return p


def main(argv=None) -> int:
    return cli.run_training("fos.refer train", build_parser(), argv, ReferTrainCfg, lambda a: fit,
                            out=lambda a: "runs/refer", save=lambda a: DEFAULT_WEIGHTS)


if __name__ == "__main__":
    sys.exit(main())
