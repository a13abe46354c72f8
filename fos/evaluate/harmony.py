"""The harmony protocol (``fos.evaluate --protocol harmony``): does a score see lighting?

Each S-FOSD test query's own cutout is offered under ``n_casts`` colour casts: its own photo's and
those of ``n_casts - 1`` other test photos (other photos than the query's, with casts that differ from
each other and from the own one by at least :data:`MIN_CAST_DISTANCE`, the largest per-channel log
ratio). A cast is a photo's mean colour outside its box (:func:`fos.photometric.photo_cast`); a
cutout moves from its own cast to another by per-channel gains (exposure and white balance), its
object pixels only. The background then moves to one of the casts, chosen at random (seeded), its
pixels outside the box only, and the candidate with that cast is the answer.

Shape, size and identity are the same for every candidate, so no property of a cutout alone finds the
answer: ``geometry`` and ``aspect`` tie everything, and a rule such as "the most neutral cutout"
picks the answer only when the background kept its own cast. The candidates are shuffled (seeded)
and named by position, and ties count at random (:func:`fos.evaluate.tied_recall`), so neither their
order nor their names leak. Chance is ``1 / n_casts`` at Recall@1.
"""
from __future__ import annotations

import random

import numpy as np
from tqdm import tqdm

from fos.data import TestSet, photo_of
from fos.evaluate.baselines import Candidates, Scorer
from fos.evaluate.metrics import average_over_categories
from fos.photometric import cast_distance, cast_gains, outside_box, photo_cast, relight
from fos.preprocess import InputError, foreground_mask, load_image, norm_to_pixel_box, prepare_background

N_CASTS = 5
MIN_CAST_DISTANCE = 0.08  # casts closer than this (max per-channel |log ratio|) count as the same


def pick_casts(own: np.ndarray, pool: list[tuple[str, np.ndarray]], photo: str, n: int, rng: random.Random,
               min_distance: float = MIN_CAST_DISTANCE) -> list[np.ndarray] | None:
    """``n - 1`` casts of other photos than ``photo``, each at least ``min_distance`` from the own cast
    and from the others (drawn in a seeded order); None when the pool has too few."""
    order = list(range(len(pool)))
    rng.shuffle(order)
    chosen = [own]
    seen_photos = {photo}
    for i in order:
        p, c = pool[i]
        if p in seen_photos or any(cast_distance(c, o) < min_distance for o in chosen):
            continue
        chosen.append(c)
        seen_photos.add(p)
        if len(chosen) == n:
            return chosen
    return None


def harmony_group(bg_img, box, cutout, casts: list[np.ndarray], rng: random.Random):
    """(relit background, candidates in shuffled order, index of the answer) for one query.

    ``casts[0]`` is the query photo's own cast; candidate k is ``cutout`` moved from it to ``casts[k]``
    (object pixels only), and the background is moved to a random one of them (outside ``box`` only)."""
    own = casts[0]
    mask = foreground_mask(cutout)
    relit = [relight(cutout, cast_gains(own, c), mask) for c in casts]
    target = rng.randrange(len(casts))
    bg = relight(bg_img, cast_gains(own, casts[target]), outside_box(bg_img.size, box))
    perm = list(range(len(casts)))
    rng.shuffle(perm)
    return bg, [relit[k] for k in perm], perm.index(target)


def evaluate_harmony(ts: TestSet, scorer: Scorer, box_jitter: float = 0.5, seed: int = 0, n_casts: int = N_CASTS,
                     categories: list[str] | None = None, progress: bool = True,
                     min_distance: float = MIN_CAST_DISTANCE) -> dict:
    """Recall@1/@3 of ``scorer`` on the harmony protocol (loose boxes), per category then averaged, with
    chance beside each. Queries for which too few other photos have distinct casts are skipped and
    counted; when none can be built, an error says how many were possible."""
    from fos.evaluate.protocols import query_box, tied_recall

    if ts.kind != "sfosd":
        raise InputError("the harmony protocol needs an S-FOSD test set (one true cutout per background)")
    if n_casts < 2:
        raise InputError(f"--casts must be at least 2, got {n_casts}")
    cats = categories or list(ts.categories)
    unknown = [c for c in cats if c not in ts.categories]
    if unknown:
        raise InputError(f"unknown categories {unknown}; the test set has {sorted(ts.categories)}")
    # every test photo's cast (outside its exact box), the pool the other casts come from
    pool, seen = [], set()
    for cs in ts.categories.values():
        for q in cs.queries:
            if photo_of(q.name) in seen:
                continue
            img = load_image(q.bg_path, what="background")
            pool.append((photo_of(q.name), photo_cast(img, norm_to_pixel_box(q.bbox, *img.size))))
            seen.add(photo_of(q.name))
    per_cat, skipped, total = {}, 0, 0
    bar = tqdm(total=sum(len(ts.categories[c].queries) for c in cats), desc=f"harmony {scorer.name}", unit="query",
               disable=not progress, dynamic_ncols=True)
    for cat in cats:
        cs = ts.categories[cat]
        rows = []
        for q in cs.queries:
            bar.update(1)
            total += 1
            rng = random.Random(f"harmony:{seed}:{q.name}")
            bg_img = load_image(q.bg_path, what="background")
            own = photo_cast(bg_img, norm_to_pixel_box(q.bbox, *bg_img.size))
            casts = pick_casts(own, pool, photo_of(q.name), n_casts, rng, min_distance)
            if casts is None:
                skipped += 1
                continue
            cutout = load_image(cs.fg_paths[cs.fg_names.index(q.name)], what="foreground")
            box = query_box(q, *bg_img.size, box_jitter, seed)
            bg, cands, answer = harmony_group(bg_img, box, cutout, casts, rng)
            c = Candidates([f"candidate{k}" for k in range(n_casts)], cands, {})
            scorer.prepare(c)
            scores = np.asarray(scorer.score(prepare_background(bg, box, scorer.pcfg), c), dtype=np.float64)
            mine = scores[answer]
            rows.append((int((scores > mine).sum()), int((scores == mine).sum()) - 1))
        if rows:
            r = np.array(rows)
            per_cat[cat] = {"recall@1": float(np.mean(tied_recall(r[:, 0], r[:, 1], 1))),
                            "recall@3": float(np.mean(tied_recall(r[:, 0], r[:, 1], 3))),
                            "chance@1": 1.0 / n_casts, "chance@3": min(3, n_casts) / n_casts, "n_queries": len(rows)}
    bar.close()
    if not per_cat:
        raise InputError(f"no harmony group could be built: 0 of {total} queries found {n_casts - 1} other photos "
                         f"with distinct casts among the {len(pool)} test photos; lower --casts")
    overall = average_over_categories({c: {k: v for k, v in m.items() if k != "n_queries"} for c, m in per_cat.items()})
    return {"model": scorer.name, "protocol": f"harmony ({n_casts} casts, box jitter {box_jitter})",
            "n_queries": sum(m["n_queries"] for m in per_cat.values()), "n_skipped": skipped, **overall,
            "per_category": per_cat}
