"""Benchmarks (print a table, write JSON). Timings are measured side by side in one run.

* ``python -m fos.bench retrieval``: per-stage latency and queries/s of the search cascade for
  libraries of 1k, 10k and 100k items, against the official evaluation's way (both encoders rerun for
  every pair) and the teacher on every pair; plus Recall@1 on msrc-fos as the prefilter K varies.
* ``python -m fos.bench latency --backend torch,onnxruntime --batch 1,8,64``: p50/p90 ms and items/s
  per graph and backend.
* ``python -m fos.bench inpaint``: ms to erase one box, per method and backend (SPL in torch and ONNX
  Runtime, OpenCV Telea and NS), on a real photo at several sizes (the box is a third of each side).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

from fos.weights import SHIPPED
from fos.preprocess import GEOMETRY_DIM


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}"


def timeit(fn, min_iters: int = 5, min_seconds: float = 1.0, warmup: int = 2) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    t_end = time.perf_counter() + min_seconds
    while len(times) < min_iters or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 1000:
            break
    a = np.array(times)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)), "iters": len(a)}


def table(rows: list[dict], cols: list[str]) -> str:
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [cols] + [[fmt(r.get(c, "")) for c in cols] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.rjust(x) for v, x in zip(r, w)) for r in cells)


# --------------------------------------------------------------------------- latency
CPU_RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")
GPU_RUNTIMES = ("torch-cuda-fp32", "torch-cuda-fp16", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")


def make_runtime(label: str, weights: str):
    """The backend a latency row names, or the reason it cannot run here (a string)."""
    import torch as _torch

    from fos.errors import BackendError, WeightsError
    from fos.runtime import OrtBackend, TorchBackend, get_backend, have
    from fos.weights import WeightsDir

    w = WeightsDir(weights)
    gpu = _torch.cuda.is_available()
    try:
        if label in ("torch", "tensorrt"):
            if label == "tensorrt" and not gpu:
                return "no CUDA GPU (torch.cuda.is_available() is False)"
            return get_backend(label, w)
        if label.startswith("torch-cuda"):
            if not gpu:
                return "no CUDA GPU (torch.cuda.is_available() is False)"
            return TorchBackend(w, device="cuda", half=label.endswith("fp16"))
        if not have("onnxruntime"):
            return "onnxruntime is not installed"
        if label in ("onnxruntime", "onnxruntime-int8"):
            b = OrtBackend(w, precision="int8" if label.endswith("int8") else "float32",
                           providers=["CPUExecutionProvider"])
            if label.endswith("int8") and not b.int8:
                return "no int8 graph passed the ranking check (python export/to_onnx.py --int8)"
            return b
        import onnxruntime as ort

        provider = {"onnxruntime-cuda": "CUDAExecutionProvider", "onnxruntime-tensorrt": "TensorrtExecutionProvider"}[label]
        if provider not in ort.get_available_providers():
            return f"this onnxruntime has no {provider} (pip install onnxruntime-gpu; a CUDA GPU)"
        b = OrtBackend(w, providers=[provider, "CPUExecutionProvider"])
        got = b.session("student_bg").get_providers()[0]
        return b if got == provider else f"onnxruntime fell back to {got}: {provider} did not start"
    except (BackendError, WeightsError, OSError) as e:
        return str(e)


def bench_latency(runtimes: list[str], batches: list[int], weights: str = SHIPPED, seconds: float = 1.0) -> list[dict]:
    """p50/p90 per graph, runtime and batch; a runtime that cannot run here gets one row saying why."""
    rows = []
    made = {}
    for label in runtimes:
        b = make_runtime(label, weights)
        if isinstance(b, str):
            rows.append({"graph": "all", "backend": label, "skipped": b})
            print(f"  {label}: skipped ({b})", file=sys.stderr)
        else:
            made[label] = b
    if not made:
        return rows
    any_b = next(iter(made.values()))
    s = any_b.preprocess_cfg.image_size
    bg_part, _ = any_b.student_bg(np.zeros((1, 3, s, s), np.float32), np.array([[20, 20, 180, 200.0]], np.float32))
    d = bg_part.shape[1:]
    rng = np.random.default_rng(0)
    for bs in batches:
        img = rng.uniform(-1, 1, (bs, 3, s, s)).astype(np.float32)
        box = np.tile(np.array([[20, 30, 180, 200.0]], np.float32), (bs, 1))
        geom = rng.normal(size=(bs, GEOMETRY_DIM)).astype(np.float32)
        fgp = rng.uniform(0, 1, (bs, *d)).astype(np.float32)
        bgp = fgp[:1].copy()
        for label, b in made.items():
            jobs = {
                "teacher": lambda b=b: b.teacher(img, geom),
                "student_bg": lambda b=b: b.student_bg(img, box),
                "student_fg": lambda b=b: b.student_fg(img),
                "student_head": lambda b=b: b.student_head(bgp, fgp, geom),
            }
            for graph, fn in jobs.items():
                r = timeit(fn, min_seconds=seconds)
                rows.append({"graph": graph, "backend": label, "batch": bs, **r,
                             "items_per_s": bs / r["p50_ms"] * 1e3})
                print(f"  {graph:13s} {label:22s} batch {bs:4d}: p50 {r['p50_ms']:.2f} ms", file=sys.stderr)
    return rows


# --------------------------------------------------------------------------- retrieval
def synthetic_library(real, n: int, seed: int = 0):
    """A library with ``n`` synthetic items in one category (worst case: all are candidates)."""
    from fos.library import Library

    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, real.emb.shape[1])).astype(np.float32)
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float16)
    pick = rng.integers(0, len(real), n)
    items = [{**real.items[i], "id": f"synthetic-{j}", "category": "bench"} for j, i in enumerate(pick)]
    return Library.from_arrays(items, emb, real.fmap[pick], dict(real.meta), real.root)  # its files are real's


def check_k(k: int, sizes: list[int]) -> None:
    from fos.errors import InputError

    if k > min(sizes):
        raise InputError(f"--k {k} is larger than the smallest library of --sizes ({min(sizes)} items): the "
                         "prefilter would keep everything; pass a smaller --k or larger --sizes")


def bench_retrieval(backends: dict, real, sizes: list[int], k: int, rerank: int, data: str | None,
                    seconds: float, prefilter=None) -> dict:
    """Per-stage query latency on synthetic libraries of ``sizes`` items made from the real library ``real``,
    for each backend of ``backends`` (label -> backend; the first is the reference), side by side. Each
    row's ``teacher_forwards`` is its end-to-end query over one teacher forward per pair of the first
    backend, measured in the same run."""
    from fos.composite import teacher_input
    from fos.examples import load_examples
    from fos.preprocess import foreground_colour, foreground_input, load_image
    from fos.scoring import Scoring
    from fos.search import EngineCfg, SearchEngine

    check_k(k, sizes)
    ref = next(iter(backends.values()))
    scoring = Scoring(ref)
    exs = load_examples()
    bg_img, box = (exs[0]["image"], exs[0]["box"]) if exs else (real.path(0), (0, 0, real.sizes[0][0], real.sizes[0][1]))
    q = scoring.query(bg_img, box)
    # per-pair costs of the two slow ways, measured on one batch of real cutouts, scaled linearly by library size
    fgs = [load_image(real.path(i), "RGBA") for i in range(min(32, len(real)))]
    bgs = np.stack([q.bg.tensor.numpy()] * len(fgs))
    boxes = np.stack([q.bg.crop_box_net.numpy()] * len(fgs))
    fg_x = np.stack([foreground_input(im, ref.preprocess_cfg).numpy() for im in fgs])  # inputs made once
    comp_x = np.stack([teacher_input(q.bg, im, ref.preprocess_cfg).numpy() for im in fgs])
    geom = scoring.geometry(q, [im.size for im in fgs], [foreground_colour(im) for im in fgs])

    def official_pairs():  # both encoders rerun for every pair, then the head (network cost only)
        bp, _ = ref.student_bg(bgs, boxes)
        fp, _ = ref.student_fg(fg_x)
        # every pair has the same background here, and the head's graph takes one bg_part (batch 1)
        return ref.student_head(bp[:1], fp, geom)

    def teacher_pairs():  # composite + teacher forward for every pair
        return scoring.teacher(q, fgs)

    def teacher_forward():  # the network alone, on composites made beforehand
        return ref.teacher(comp_x, geom)

    per_pair_official = timeit(official_pairs, 3, seconds)["p50_ms"] / len(fgs)
    per_pair_teacher = timeit(teacher_pairs, 3, seconds)["p50_ms"] / len(fgs)
    teacher_fwd = timeit(teacher_forward, 3, seconds)["p50_ms"] / len(fgs)
    rows = []
    for label, b in backends.items():
        for n in sizes:
            lib = synthetic_library(real, n)
            eng = SearchEngine(lib, b, EngineCfg(prefilter_k=k), prefilter=prefilter)
            stages: dict[str, list[float]] = {}

            def query():
                out = eng.query(bg_img, box, "bench", k=10, rerank=rerank)
                for st, v in out.timings_ms.items():
                    stages.setdefault(st, []).append(v)

            r = timeit(query, 5, seconds)
            row = {"precision": label, "items": n, "K": k, "end_to_end_ms": r["p50_ms"], "qps": 1e3 / r["p50_ms"],
                   **{f"{st}_ms": float(np.median(v)) for st, v in stages.items()},
                   "teacher_forwards": r["p50_ms"] / teacher_fwd,
                   "official_every_pair_ms": per_pair_official * n, "teacher_every_pair_ms": per_pair_teacher * n}
            row["speedup_vs_teacher"] = row["teacher_every_pair_ms"] / row["end_to_end_ms"]
            row["speedup_vs_official"] = row["official_every_pair_ms"] / row["end_to_end_ms"]
            rows.append(row)
            print(f"  {label} {n} items: {r['p50_ms']:.1f} ms/query", file=sys.stderr)
    for label in backends:  # the scale target: the largest library against the smallest, same precision
        mine = [r for r in rows if r["precision"] == label]
        for r in mine:
            r["vs_smallest"] = r["end_to_end_ms"] / mine[0]["end_to_end_ms"]
    recall = recall_vs_k(ref, data, [1, 3, 5, 10, 20, 0], prefilter=prefilter) if data and os.path.isdir(data) else []
    return {"machine": machine(), "backends": {lb: b.description for lb, b in backends.items()}, "rows": rows,
            "recall_vs_k": recall,
            "per_pair_ms": {"official_both_encoders": per_pair_official, "teacher": per_pair_teacher,
                            "teacher_forward": teacher_fwd},
            "note": "scale points use synthetic items in one category (all are candidates); the two "
                    "every-pair columns are per-pair times measured on a batch of 32 real pairs, times n; "
                    "teacher_forwards divides the end-to-end query by one float32 teacher forward per pair "
                    "(the network on a composite made beforehand, batch 32)"}


def recall_vs_k(backend, data: str, ks: list[int], box_jitter: float = 0.5, prefilter=None) -> list[dict]:
    """Recall@1 and @5 on msrc-fos test queries against a library of all msrc-fos cutouts (train + test),
    as the prefilter K varies (0 = every candidate), with the loose-box protocol of fos.evaluate; for the
    embedding-cosine prefilter and, given ``prefilter``, the distilled one (``prefilter`` column)."""
    import tempfile

    from fos.data import load_sfosd_test
    from fos.evaluate import query_box
    from fos.library import Library
    from fos.library.build import write_library
    from fos.preprocess import load_image
    from fos.search import EngineCfg, SearchEngine

    with tempfile.TemporaryDirectory() as tmp:
        write_library(backend, data, os.path.join(tmp, "lib"), progress=False)
        lib = Library(os.path.join(tmp, "lib"))
        ts = load_sfosd_test(data)
        out = []
        engines = {"embedding": SearchEngine(lib, backend, EngineCfg())}
        if prefilter is not None:
            engines["distilled"] = SearchEngine(lib, backend, EngineCfg(), prefilter=prefilter)
        for kind, eng in engines.items():
            per_query = []
            for cat, cs in ts.categories.items():
                for q in cs.queries:
                    img = load_image(q.bg_path)
                    eng.set_background(img, query_box(q, *img.size, box_jitter, 0))
                    per_query.append((cat, q.name, {kk: [r.id for r in eng.search(cat, 5, prefilter_k=kk).results]
                                                     for kk in ks}))
            for kk in ks:
                row = {"prefilter": kind, "K": kk or "all"}
                for at in (1, 5):
                    per_cat: dict[str, list[float]] = {}
                    for cat, name, top in per_query:
                        per_cat.setdefault(cat, []).append(float(name in top[kk][:at]))
                    row[f"recall@{at}"] = float(np.mean([np.mean(v) for v in per_cat.values()]))
                out.append({**row, "library_items": len(lib), "queries": len(per_query)})
        return out


def bench_inpaint(weights: str, photo: str, sizes: list[int], seconds: float,
                  methods: tuple[str, ...] | None = None) -> list[dict]:
    """Per-fill latency of each inpainting method (default all: SPL in torch and, when its graph is
    current, ONNX Runtime, then the classical ones) on ``photo`` resized so its longer side is each of
    ``sizes``, with a box a third of each side."""
    from PIL import Image

    from fos.bootstrap import prepare_inpainter
    from fos.inpaint.infer import CV2_METHODS, XPHOTO_METHODS, Inpainter, xphoto_problem
    from fos.preprocess import load_image

    wanted = methods or ("spl", *CV2_METHODS, *XPHOTO_METHODS)
    runners = {}
    if "spl" in wanted:
        runners["spl torch"] = Inpainter("spl", os.path.join(weights, "inpaint.safetensors"), backend="torch")
        ort = prepare_inpainter(weights, "spl", "auto")  # exports the graph once when it is missing
        if ort.backend == "onnxruntime":
            runners["spl onnxruntime"] = ort
    skipped = {}
    for m in wanted:
        if m == "spl":
            continue
        problem = xphoto_problem(m) if m in XPHOTO_METHODS else None
        if problem:
            skipped[m] = problem
            continue
        runners[m] = Inpainter(m)
    img = load_image(photo, "RGB", what="photo")
    rows = [{"method": m, "skipped": why} for m, why in skipped.items()]
    for side in sizes:
        f = side / max(img.size)
        im = img.resize((max(8, round(img.size[0] * f)), max(8, round(img.size[1] * f))), Image.BILINEAR)
        w, h = im.size
        box = (w // 3, h // 3, 2 * w // 3, 2 * h // 3)
        for name, r in runners.items():
            slow = name in XPHOTO_METHODS  # seconds per fill: one warm-up, at least 2 runs
            t = timeit(lambda: r.erase_box(im, box), 2 if slow else 3, 0 if slow else seconds, 1)
            rows.append({"photo": f"{w}x{h}", "box": f"{box[2] - box[0]}x{box[3] - box[1]}", "method": name,
                         "p50_ms": t["p50_ms"], "p90_ms": t["p90_ms"]})
            print(f"  {w}x{h} {name}: {t['p50_ms']:.1f} ms", file=sys.stderr)
    return rows


def main(argv=None) -> int:
    from fos import cli
    from fos.errors import InputError

    p = argparse.ArgumentParser(prog="python -m fos.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["retrieval", "latency", "inpaint"])
    p.add_argument("--weights", default=SHIPPED)
    p.add_argument("--backend", default=None,
                   help="retrieval: one backend (default auto); latency: a comma list of runtimes from "
                        f"{', '.join(CPU_RUNTIMES + GPU_RUNTIMES)} (default the CPU ones; --gpu adds the GPU ones)")
    p.add_argument("--gpu", action="store_true", help="latency: add the GPU runtimes (each skipped with its reason "
                                                       "where its library or the GPU is missing)")
    p.add_argument("--precision", default="float32,int8",
                   help="retrieval on onnxruntime: a comma list of float32 and int8 (int8: the graphs that passed "
                        "the export's ranking check)")
    p.add_argument("--batch", type=cli.positive_int_list, default=[1, 8, 64], help="latency: batch sizes")
    p.add_argument("--library", default=None,
                   help="retrieval: a built library for real feature maps (default: the app's default library)")
    p.add_argument("--sizes", type=cli.positive_int_list, default=None,
                   help="retrieval: library sizes (default 1000,10000,100000); inpaint: photo sides (default 320,1024,2048)")
    p.add_argument("--methods", default=None, help="inpaint: a comma list of methods (default all)")
    p.add_argument("--photo", default=os.path.join("assets", "backgrounds", "1_14_s.jpg"), help="inpaint: the photo")
    p.add_argument("--k", type=cli.positive_int, default=200, help="retrieval: the prefilter keeps this many")
    p.add_argument("--rerank", type=cli.nonneg_int, default=0)
    p.add_argument("--data", default="../shared/data/msrc-fos", help="retrieval: dataset for the Recall@1-vs-K table")
    p.add_argument("--seconds", type=float, default=2.0, help="minimum measuring time per point")
    p.add_argument("--json", default=None)
    cli.add_threads(p)

    def run(a) -> int:
        if a.what == "inpaint":
            from fos.inpaint.infer import METHODS

            wanted = tuple(m for m in (a.methods or ",".join(METHODS)).split(",") if m)
            if not wanted or [m for m in wanted if m not in METHODS]:
                raise InputError(f"--methods takes some of {', '.join(METHODS)}, got {a.methods!r}")
            rows = bench_inpaint(a.weights, a.photo, a.sizes or [320, 1024, 2048], a.seconds, wanted)
            res = {"machine": machine(), "threads": torch.get_num_threads(), "rows": rows}
            print(f"machine: {res['machine']}; {res['threads']} threads")
            print(table([r for r in rows if "skipped" not in r], ["photo", "box", "method", "p50_ms", "p90_ms"]))
            for r in rows:
                if "skipped" in r:
                    print(f"{r['method']}: skipped ({r['skipped']})")
        elif a.what == "latency":
            names = a.backend.split(",") if a.backend else list(CPU_RUNTIMES + (GPU_RUNTIMES if a.gpu else ()))
            unknown = [n for n in names if n not in CPU_RUNTIMES + GPU_RUNTIMES]
            if unknown:
                raise InputError(f"unknown runtime {', '.join(unknown)} for --backend; use some of "
                                 f"{', '.join(CPU_RUNTIMES + GPU_RUNTIMES)}")
            rows = bench_latency(names, a.batch, a.weights, a.seconds)
            res = {"machine": machine(), "rows": rows}
            print(f"machine: {res['machine']}")
            print(table([r for r in rows if "skipped" not in r], ["graph", "backend", "batch", "p50_ms", "p90_ms",
                                                                  "items_per_s"]))
            for r in rows:
                if "skipped" in r:
                    print(f"{r['backend']}: skipped ({r['skipped']})")
        else:
            from fos.bootstrap import prepare

            precisions = [p for p in a.precision.split(",") if p]
            bad = [p for p in precisions if p not in ("float32", "int8")]
            if bad or not precisions:
                raise InputError(f"--precision takes float32 and/or int8, got {a.precision!r}")
            sizes = a.sizes or [1000, 10000, 100000]
            check_k(a.k, sizes)  # before anything loads
            real, b = prepare(a.weights, a.library, a.backend or "auto")
            backends = {"float32": b}
            if "int8" in precisions:
                if b.name != "onnxruntime":
                    print(f"int8: skipped (the {b.name} backend has no int8 graphs; use --backend onnxruntime)")
                else:
                    b8 = make_runtime("onnxruntime-int8", a.weights)
                    if isinstance(b8, str):
                        print(f"int8: skipped ({b8})")
                    else:
                        backends["int8"] = b8
            if "float32" not in precisions and len(backends) > 1:
                backends.pop("float32")
            from fos.search import weights_prefilter

            res = bench_retrieval(backends, real, sizes, a.k, a.rerank, a.data, a.seconds,
                                  weights_prefilter(a.weights, b.student_sha256))
            print(f"machine: {res['machine']}; backends: {res['backends']}")
            print(table(res["rows"], ["precision", "items", "K", "end_to_end_ms", "qps", "preprocess_ms",
                                      "background_encode_ms", "prefilter_ms", "head_ms", "rerank_ms",
                                      "teacher_forwards", "vs_smallest", "teacher_every_pair_ms", "speedup_vs_teacher",
                                      "official_every_pair_ms", "speedup_vs_official"]))
            if res["recall_vs_k"]:
                print(table(res["recall_vs_k"], ["prefilter", "K", "recall@1", "recall@5", "library_items", "queries"]))
        cli.write_json(a.json or f"runs/bench_{a.what}.json", res)
        return 0

    return cli.run(run, p, argv)


if __name__ == "__main__":
    sys.exit(main())
