"""``python -m fos.inpaint.evaluate``: PSNR, SSIM and L1 inside holes on held-out photos, every method side by side.

The test photos of each ``--data`` root (msrc-fos test; the coco128 test split of ``fos.data from-coco``)
get two holes each, drawn from a generator seeded by (``--seed``, photo index) so every method sees the
same holes: a **box** (sides 15-45% of the photo's) and an **object**-shaped hole (the instance mask of
another test photo of the same root, its longer side 15-45% of the photo's shorter side, dilated 2 px),
placed at random on the real background. The true photo is the reference. Every method runs through
the serving path (:class:`fos.inpaint.infer.Inpainter`: crop around the hole, fill, paste back).
Controls that learn nothing: ``mean`` fills the hole with the mean colour of the crop's visible pixels;
``telea`` and ``ns`` are OpenCV's inpainting.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from fos import cli
from fos.data import DatasetError
from fos.inpaint.infer import DEFAULT_WEIGHTS, Inpainter
from fos.inpaint.masks import box_hole, crop_window, hole_bbox, load_shapes, object_hole
from fos.inpaint.metrics import l1_in_hole, psnr_in_hole, ssim_in_hole
from fos.data.photos import load_photos
from fos.preprocess import load_image

log = logging.getLogger("fos.inpaint.evaluate")
KINDS = ("box", "object")
# the README's models: the paper's SPL and its two ablations (trained into runs/), and the shipped weights
# (the telea-init variant)
ABLATIONS = {"spl": "runs/inpaint/spl.safetensors", "spl-noprior": "runs/inpaint/spl-noprior.safetensors",
             "spl-concat": "runs/inpaint/spl-concat.safetensors", "spl-telea-init": DEFAULT_WEIGHTS}


def test_holes(root: str, seed: int = 0, split: str = "test") -> list[dict]:
    """The evaluation cases of a root: per photo of ``split``, one box and one object-shaped hole."""
    photos = load_photos(root, split)
    shapes = [load_shapes([p for ps in ph.masks.values() for p in ps]) for ph in photos]
    cases = []
    for i, ph in enumerate(photos):
        rng = np.random.default_rng([seed, i])
        w, h = ph.width, ph.height
        others = [s for j, ss in enumerate(shapes) if j != i for s in ss]
        holes = {"box": box_hole(h, w, rng, 0.15, 0.45)}
        if others:
            holes["object"] = object_hole(h, w, others[int(rng.integers(len(others)))], rng, 0.15, 0.45)
        for kind, hole in holes.items():
            cases.append({"photo": ph.path, "kind": kind, "hole": hole})
    return cases


class MeanFill:
    """The no-training control: the hole takes the mean colour of the visible pixels of its crop."""

    description = "mean (visible pixels of the crop)"

    def fill(self, photo, hole):
        arr = np.asarray(load_image(photo, "RGB", what="photo")).copy()
        x1, y1, x2, y2 = crop_window(hole_bbox(hole), arr.shape[1], arr.shape[0])
        crop, chole = arr[y1:y2, x1:x2], hole[y1:y2, x1:x2]
        vis = crop[~chole]
        crop[chole] = vis.mean(0).round().astype(np.uint8) if len(vis) else 128
        return Image.fromarray(arr)


def methods(weights: dict[str, str], backend: str = "torch") -> dict[str, object]:
    out: dict[str, object] = {}
    for name, path in weights.items():
        out[name] = Inpainter("spl", path, backend=backend)
    out["telea"], out["ns"], out["mean"] = Inpainter("telea"), Inpainter("ns"), MeanFill()
    return out


def evaluate(roots: list[str], ms: dict[str, object], seed: int = 0, figure: str | None = None,
             figure_rows: int = 4, progress: bool = True, limit: int = 0, split: str = "test") -> dict:
    """Every method on every case of every root (the first ``limit`` of each kind per root when > 0)."""
    rows: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    timing: dict[str, float] = {m: 0.0 for m in ms}
    examples = []
    for root in roots:
        name = os.path.basename(os.path.normpath(root))
        cases = test_holes(root, seed, split)
        if limit:
            cases = [c for k in KINDS for c in [c for c in cases if c["kind"] == k][:limit]]
        if not cases:
            raise DatasetError(f"{root} has no test photos")
        for ci, c in enumerate(tqdm(cases, desc=f"inpaint {name}", unit="hole", disable=not progress)):
            true = np.asarray(load_image(c["photo"], "RGB", what="photo"))
            outs = {}
            for m, inp in ms.items():
                t0 = time.perf_counter()
                pred = np.asarray(inp.fill(true, c["hole"]))
                timing[m] += time.perf_counter() - t0
                outs[m] = pred
                for key in ((name, c["kind"], m), ("all", c["kind"], m)):
                    rows.setdefault(key, []).append((psnr_in_hole(pred, true, c["hole"]),
                                                     ssim_in_hole(pred, true, c["hole"]),
                                                     l1_in_hole(pred, true, c["hole"])))
            if figure and ci % max(1, len(cases) // figure_rows) == 0:
                examples.append((true, c["hole"], outs))
    table = {f"{d}/{k}/{m}": {"n": len(v), "psnr": float(np.mean([r[0] for r in v])),
                              "ssim": float(np.mean([r[1] for r in v])), "l1": float(np.mean([r[2] for r in v]))}
             for (d, k, m), v in rows.items()}
    n_fills = max(len(v) for v in rows.values()) if rows else 0
    result = {"seed": seed, "split": split, "roots": roots,
              "methods": {m: getattr(i, "description", m) for m, i in ms.items()},
              "results": table, "ms_per_fill": {m: 1e3 * t / max(1, sum(len(v) for (d, _, mm), v in rows.items()
                                                                        if d != "all" and mm == m))
                                                 for m, t in timing.items()}, "cases": n_fills}
    if figure and examples:
        save_figure(examples[: 2 * figure_rows], list(ms), figure)
        result["figure"] = figure
    return result


def save_figure(examples, names: list[str], path: str, cell: int = 160) -> None:
    """Rows: cases; columns: input (hole in red), each method, ground truth; each cell the crop around the hole."""
    cols = ["input"] + names + ["true"]
    head = 18
    fig = Image.new("RGB", (cell * len(cols), head + cell * len(examples)), "white")
    d = ImageDraw.Draw(fig)
    for j, c in enumerate(cols):
        d.text((j * cell + 4, 3), c, fill="black")
    for i, (true, hole, outs) in enumerate(examples):
        x1, y1, x2, y2 = crop_window(hole_bbox(hole), true.shape[1], true.shape[0])
        shown = true.copy()
        shown[hole] = (shown[hole] * 0.4 + np.array([255, 0, 0]) * 0.6).astype(np.uint8)
        imgs = [shown] + [outs[n] for n in names] + [true]
        for j, a in enumerate(imgs):
            tile = Image.fromarray(a[y1:y2, x1:x2]).resize((cell, cell), Image.BILINEAR)
            fig.paste(tile, (j * cell, head + i * cell))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.save(path)
    log.info("figure written to %s", path)


def format_table(res: dict) -> str:
    lines = ["| data | hole | method | n | PSNR (dB) | SSIM | L1 |", "|---|---|---|---|---|---|---|"]
    for key, v in res["results"].items():
        d, k, m = key.split("/")
        lines.append(f"| {d} | {k} | {m} | {v['n']} | {v['psnr']:.2f} | {v['ssim']:.3f} | {v['l1']:.4f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fos.inpaint.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", default=None,
                   help="FOSD root with photos/ (its test split is used); repeat (default ../shared/data/msrc-fos)")
    p.add_argument("--weights", action="append", default=None, metavar="NAME=PATH",
                   help="an SPL model to evaluate; repeat (default: those of ABLATIONS that exist: the README's "
                        "runs/inpaint/ models and spl-telea-init=weights/inpaint.safetensors)")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "auto"], default="torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="whose photos get the holes (train: for choosing a model without looking at test)")
    p.add_argument("--limit", type=int, default=0, help="only the first N holes of each kind per root (0: all)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--figure", default=None, help="write the figure (PNG) here")
    cli.add_threads(p)
    return p


def main(argv=None) -> int:
    def run(a) -> int:
        if a.weights:
            bad = [w for w in a.weights if "=" not in w]
            if bad:
                raise ValueError(f"--weights takes NAME=PATH, got {bad[0]!r}")
            weights = dict(w.split("=", 1) for w in a.weights)
        else:
            weights = {k: v for k, v in ABLATIONS.items() if os.path.isfile(v)}
        res = evaluate(a.data or ["../shared/data/msrc-fos"], methods(weights, a.backend), a.seed, a.figure,
                       limit=a.limit, split=a.split)
        print(format_table(res))
        print("ms per fill: " + ", ".join(f"{m} {t:.1f}" for m, t in res["ms_per_fill"].items()))
        if a.json:
            cli.write_json(a.json, res)
            log.info("results written to %s", a.json)
        return 0

    return cli.run(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
