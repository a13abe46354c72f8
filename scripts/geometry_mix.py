"""How the ``geometry`` control's scale weight was chosen: on msrc-fos *train*, never on test.

Each training background is a query (loose boxes, as ``fos.evaluate --box-jitter 0.5``), its own
cutout the answer, the other cutouts of its class the candidates; the score is
``-(|aspect difference| + w * |s|)`` (columns 2 and 4 of ``fos.preprocess.geometry_batch``).
Prints mean ± std Recall@1 over box seeds 0-4 for each ``w``.

    python scripts/geometry_mix.py [--data ../shared/data/msrc-fos]
"""
import argparse

import numpy as np
from PIL import Image

from fos.data import load_train
from fos.evaluate import query_box
from fos.evaluate.metrics import average_over_categories, sfosd_metrics
from fos.preprocess import geometry_batch

p = argparse.ArgumentParser()
p.add_argument("--data", default="../shared/data/msrc-fos")
a = p.parse_args()
by = {}
for r in load_train(a.data):
    by.setdefault(r.category, []).append(r)
fg_sizes = {c: [Image.open(r.fg_path).size for r in rs] for c, rs in by.items()}
geo = {}
for seed in range(5):
    for c, rs in by.items():
        rows = []
        for r in rs:
            with Image.open(r.bg_path) as im:
                box = query_box(r, *im.size, box_jitter=0.5, seed=seed)  # the loose boxes of fos.evaluate
            rows.append(geometry_batch(box, fg_sizes[c]))
        geo[(seed, c)] = np.stack(rows)
print("w      train R@1 (loose boxes, seeds 0-4)")
for wt in (0, 0.25, 0.5, 0.75, 1, 2):
    r1 = [average_over_categories({c: sfosd_metrics(np.eye(len(by[c]), dtype=int), -(g[..., 2] + wt * g[..., 4]))
                                   for (s, c), g in geo.items() if s == seed})["recall@1"] for seed in range(5)]
    print(f"{wt:<6} {np.mean(r1):.3f} ± {np.std(r1):.3f}")
