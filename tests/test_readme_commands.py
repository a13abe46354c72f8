"""Every command the README and the pages of ``docs/`` show is run: here, on small inputs (tiny random weights, a few real
photos), or by the named test or CI step. A README command in neither list fails
``test_every_readme_command_is_run``, so a new or renamed command cannot go untested."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest


from tests.conftest import ROOT, SHIPPED, save_tiny

README = os.path.join(ROOT, "README.md")


def doc_pages() -> list[str]:
    """The README and every page under docs/ (lab notes included)."""
    out = [README]
    for d, _, files in os.walk(os.path.join(ROOT, "docs")):
        out += [os.path.join(d, f) for f in sorted(files) if f.endswith(".md")]
    return out

# commands run by another test (file::function, checked to exist) or by a CI step
ELSEWHERE = {
    "pip install": ".ci/run (the README's set-up line)",
    "python -m pytest": ".ci/run (the README's test line)",
    "python -m venv": ".ci/run (the README's set-up line)",
    "python app.py": "tests/test_app.py::app_url",
    "python -m fos.train teacher": "tests/test_train.py::test_teacher_steps_on_real_images_and_resume_is_exact",
    "python -m fos.train student": "tests/test_train.py::test_student_step_on_real_images",
    "python -m fos.train": "tests/test_train.py::test_train_cli_errors_are_one_line",
    "python -m fos.train.photometric": "tests/test_photometric.py::trained",
    "python -m fos.train.prefilter": "tests/test_prefilter.py::test_trained_prefilter_keeps_the_head_top_items_on_the_test_split",
    "torchrun": "tests/test_train.py::test_two_gloo_processes_train_identical_weights_and_the_loss_falls",
    "python -m fos.data from-coco": "tests/test_readme_commands.py::small_coco_root",
    "python -m fos.localize.train": "tests/test_readme_commands.py::test_localize_train_and_evaluate_commands",
    "python -m fos.localize.evaluate": "tests/test_readme_commands.py::test_localize_train_and_evaluate_commands",
    "python -m fos.localize": "tests/test_localize.py::test_localize_cli_on_real_photos",
    "python -m fos.library grow": "tests/test_localize.py::test_library_grow_adds_cutouts_with_provenance",
    "python -m fos.inpaint": "tests/test_inpaint.py::test_cli_writes_the_photo_and_keeps_it_on_failure",
    "python -m fos.inpaint.train": "tests/test_readme_commands.py::test_inpaint_train_and_evaluate_commands",
    "python -m fos.inpaint.evaluate": "tests/test_readme_commands.py::test_inpaint_train_and_evaluate_commands",
    "python -m fos.evaluate": "tests/test_evaluate.py::test_cli_json_has_exact_keys",
    "python -m fos.refer": "tests/test_refer.py::test_cli_on_a_real_photo_writes_mask_cutout_and_json",
    "python -m fos.refer train": "tests/test_refer.py::test_training_is_seeded_resumable_and_saves_a_loadable_model",
    "python -m fos.refer evaluate": "tests/test_refer.py::test_evaluate_command_prints_the_table_with_baselines",
    "python -m fos.library build": "tests/test_readme_commands.py::tiny_exported",
    "python -m fos.library add": "tests/test_library_search.py::test_folder_build_skips_broken_and_add_appends",
    "python -m fos.search": "tests/test_library_search.py::test_search_cli_json",
    "python export/to_trt.py": "tests/test_export.py::test_tensorrt_missing_is_one_clear_line",
    "python -m fos.examples build": "tests/test_readme_commands.py::test_examples_build",
    "python -m fos.examples add-coco": "tests/test_readme_commands.py::test_examples_add_coco",
    # a reproduction recipe (an hour of CPU on the shipped weights): every line it runs is one of the
    # commands of this table, which test_recipes_only_run_covered_commands checks
    "bash scripts/results.sh": "recipe",
    "bash scripts/ship_eval.sh": "recipe",
    "python -m fos.train.cache": "tests/test_cached.py::test_cache_cli_and_its_errors",
    "python -m fos.train.cached": "tests/test_cached.py::test_cache_cli_and_its_errors",
    "bash scripts/variants.sh": "tests/test_readme_commands.py::test_variants_script",
    "python scripts/variants_table.py": "tests/test_readme_commands.py::test_variants_script",
}
# commands this file runs, on small inputs (the test below)
RUN_HERE = ("python -m fos.bench retrieval", "python -m fos.bench latency", "python -m fos.bench inpaint",
            "python -m fos.cost", "python export/to_onnx.py", "python scripts/results_table.py",
            "python scripts/geometry_mix.py", "python scripts/ship_table.py")


def command_key(line: str) -> str | None:
    """``python -m fos.bench retrieval --threads 2`` -> ``python -m fos.bench retrieval``: the program
    and its sub-command, without options, placeholders or comments; None for what is not a command."""
    words = line.split("#")[0].split()
    if not words:
        return None
    if words[0] == "pip":
        return " ".join(words[:2])
    if words[0] == "torchrun":
        return "torchrun"
    if words[0] == "bash" and len(words) > 1:
        return " ".join(words[:2])
    if words[0] in ("python", "python3") and len(words) > 1:
        if words[1] != "-m":
            return f"python {words[1]}"
        if len(words) > 2:
            sub = words[3:4] if len(words) > 3 and re.fullmatch(r"[a-z][a-z-]*", words[3]) else []
            return " ".join(["python", "-m", words[2], *sub])
    return None


def readme_commands() -> set[str]:
    text = "\n".join(open(p, encoding="utf-8").read() for p in doc_pages())
    lines = [ln[4:] for ln in text.splitlines() if ln.startswith("    ") and re.match(r"    (python|bash|torchrun|pip|\. )", ln)]
    lines += re.findall(r"`((?:python|bash|torchrun|pip) [^`]+)`", text)
    keys = {command_key(part) for ln in lines for part in ln.split("&&")}  # the set-up line chains several
    return {k for k in keys if k and "fos.*" not in k and "<" not in k and "export/*" not in k and "scripts/*" not in k}


def test_command_key_by_hand():
    assert command_key("python -m fos.bench retrieval --threads 2") == "python -m fos.bench retrieval"
    assert command_key("python -m fos.evaluate --data X --model student") == "python -m fos.evaluate"
    assert command_key("python -m fos.library build --src DIR --out LIB   # comment") == "python -m fos.library build"
    assert command_key("python export/to_onnx.py [--weights weights/]") == "python export/to_onnx.py"
    assert command_key("bash scripts/results.sh") == "bash scripts/results.sh"
    assert command_key("torchrun --nproc_per_node 8 -m fos.train teacher") == "torchrun"
    assert command_key("pip install -r requirements-dev.txt") == "pip install"


def test_every_readme_command_is_run():
    shown = readme_commands()
    assert {"python -m fos.bench retrieval", "python app.py", "python -m fos.search"} <= shown
    missing = sorted(shown - set(ELSEWHERE) - set(RUN_HERE))
    assert not missing, f"README commands that no test runs: {missing}"
    for key, where in ELSEWHERE.items():
        if "::" in where:
            path, name = where.split("::")
            src = open(os.path.join(ROOT, path), encoding="utf-8").read()
            assert re.search(rf"def {name}\(", src), f"{key}: {where} does not exist"


def test_recipes_only_run_covered_commands():
    for script in ("scripts/results.sh", "scripts/variants.sh", "scripts/ship_eval.sh"):
        text = open(os.path.join(ROOT, script), encoding="utf-8").read()
        keys = {command_key(ln.strip()) for ln in text.splitlines() if ln.strip().startswith("python ")}
        keys.discard(None)
        assert keys and keys <= set(ELSEWHERE) | set(RUN_HERE), (script, keys - set(ELSEWHERE) - set(RUN_HERE))


def run(args, cwd=ROOT, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1", FOS_THREADS="1")
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)} exited {r.returncode}:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def tiny_exported(tmp_path_factory, data_root):
    """Tiny weights with their ONNX graphs (through the README's export command) and a small library."""
    from tests.test_data import _copy_test

    w = save_tiny(tmp_path_factory.mktemp("w") / "weights")
    r = run(["export/to_onnx.py", "--weights", w, "--out", os.path.join(w, "onnx")])
    assert "parity" in r.stdout
    src, _ = _copy_test(data_root, tmp_path_factory.mktemp("src"), cats=("cat", "dog"))
    lib = str(tmp_path_factory.mktemp("lib") / "lib")
    run(["-m", "fos.library", "build", "--src", str(src), "--out", lib, "--weights", w])
    return w, lib, str(src)


def test_bench_retrieval_on_onnxruntime(tiny_exported, tmp_path):
    """The README's `python -m fos.bench retrieval` crashed on ONNX Runtime (bg_part is batch 1)."""
    w, lib, src = tiny_exported
    out = tmp_path / "r.json"
    r = run(["-m", "fos.bench", "retrieval", "--weights", w, "--library", lib, "--backend", "onnxruntime",
             "--sizes", "40,200", "--k", "20", "--seconds", "0.1", "--data", src, "--threads", "1", "--json", str(out)])
    res = json.load(open(out))
    assert "onnxruntime" in res["backends"]["float32"] and [row["items"] for row in res["rows"]] == [40, 200]
    assert all(row["end_to_end_ms"] > 0 and row["official_every_pair_ms"] > 0 for row in res["rows"])
    assert res["rows"][0]["vs_smallest"] == 1 and all(row["teacher_forwards"] > 0 for row in res["rows"])
    assert [row["K"] for row in res["recall_vs_k"]][-1] == "all" and "recall@1" in r.stdout
    assert "int8: skipped (no int8 graph passed the ranking check" in r.stdout  # none exported here


def test_bench_latency_both_backends(tiny_exported, tmp_path):
    w, _, _ = tiny_exported
    out = tmp_path / "l.json"
    run(["-m", "fos.bench", "latency", "--weights", w, "--backend", "torch,onnxruntime", "--batch", "1,3",
         "--seconds", "0.05", "--json", str(out)])
    rows = json.load(open(out))["rows"]
    assert {(r["backend"], r["batch"]) for r in rows} == {(b, n) for b in ("torch", "onnxruntime") for n in (1, 3)}
    assert len(rows) == 4 * 4 and all(r["p50_ms"] > 0 for r in rows)
    # a runtime that cannot run here is one row with its reason, never a number
    r = run(["-m", "fos.bench", "latency", "--weights", w, "--backend", "torch,onnxruntime-int8,torch-cuda-fp16,"
             "onnxruntime-tensorrt,tensorrt", "--batch", "1", "--seconds", "0.05", "--json", str(out)])
    skipped = {row["backend"]: row["skipped"] for row in json.load(open(out))["rows"] if "skipped" in row}
    assert set(skipped) == {"onnxruntime-int8", "torch-cuda-fp16", "onnxruntime-tensorrt", "tensorrt"}
    assert "no CUDA GPU" in skipped["torch-cuda-fp16"] and "TensorrtExecutionProvider" in skipped["onnxruntime-tensorrt"]
    assert "tensorrt: skipped (" in r.stdout


@pytest.mark.parametrize("args, msg", [(["latency", "--batch", "0"], "--batch: every value must be at least 1"),
                                       (["latency", "--batch", "-1"], "--batch: every value must be at least 1"),
                                       (["retrieval", "--sizes", "0,10"], "--sizes: every value must be at least 1"),
                                       (["retrieval", "--k", "0"], "--k: must be at least 1")])
def test_bench_bad_numbers_are_usage_errors(args, msg, capsys, tmp_path):
    from fos.bench import main

    with pytest.raises(SystemExit) as e:
        main([*args, "--json", str(tmp_path / "x.json")])
    assert e.value.code == 2 and msg in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_bench_k_larger_than_the_library_is_refused_before_loading(capsys, tmp_path):
    from fos.bench import main

    assert main(["retrieval", "--sizes", "100,1000", "--k", "200", "--weights", str(tmp_path / "none"),
                 "--json", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "--k 200 is larger than the smallest library of --sizes (100 items)" in err and "Traceback" not in err
    assert main(["latency", "--backend", "torch,warp-drive", "--json", str(tmp_path / "x.json")]) == 2
    assert "unknown runtime warp-drive" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_bench_inpaint(tmp_path):
    import torch

    from fos.inpaint.infer import save_inpainter
    from tests.test_inpaint import tiny

    w = tmp_path / "weights"
    w.mkdir()
    torch.manual_seed(0)
    save_inpainter(tiny(), str(w / "inpaint.safetensors"))
    out = tmp_path / "i.json"
    run(["-m", "fos.bench", "inpaint", "--weights", str(w), "--sizes", "96", "--seconds", "0.05", "--json", str(out),
         "--methods", "spl,telea,ns,shiftmap"])  # fsr-best takes seconds a fill: tests/test_inpaint.py runs it
    rows = json.load(open(out))["rows"]
    assert {r["method"] for r in rows} == {"spl torch", "spl onnxruntime", "telea", "ns", "shiftmap"}
    assert all(r["p50_ms"] > 0 for r in rows)
    from fos.bench import main

    assert main(["inpaint", "--methods", "telea,magic"]) == 2


def test_cost():
    r = run(["-m", "fos.cost"])
    assert "teacher_macs_per_pair" in r.stdout and "head_cached_over_teacher" in r.stdout


def test_ship_table_pools_over_queries(tmp_path, data_root):
    """`python scripts/ship_table.py DIR`: a category's Recall@1 weighted by its queries, over sources;
    here on `geometry`'s JSON for every row (it ties on harmony, so every clause compares equal numbers)."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import ship_table

    a = {"per_category": {"x": {"recall@1": 1.0, "n_queries": 1}, "y": {"recall@1": 0.0, "n_queries": 3}}}
    b = {"per_category": {"z": {"recall@1": 0.5, "n_queries": 4}}}
    assert ship_table.pooled([a, b, None]) == (pytest.approx(3 / 8), 8)  # (1 + 0 + 2) / 8
    from fos import evaluate as E
    from fos.data import load_test
    from fos.evaluate.harmony import evaluate_harmony

    ts = load_test(data_root)
    g = E.make_scorer("geometry")
    runs = {"harmony": evaluate_harmony(ts, g, categories=["cow"], progress=False),
            "matched": E.evaluate_matched(ts, g, categories=["cow"], progress=False, max_candidates=5),
            "loose": E.evaluate(ts, g, box_jitter=0.5, categories=["cow"], progress=False)}
    for proto, res in runs.items():
        for tag, _ in ship_table.ROWS:
            (tmp_path / f"msrc.{proto}.{tag}.json").write_text(json.dumps(res))
    env = dict(os.environ, SOURCES=f"msrc={data_root}")
    r = subprocess.run([sys.executable, "scripts/ship_table.py", str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"| **new student** | {runs['harmony']['recall@1']:.3f}" in r.stdout
    # equal numbers: every "beats the shipped one" clause fails, so nothing ships
    assert "| student harmony > shipped | 0.200 | 0.200 | **no** |" in r.stdout and r.stdout.rstrip().endswith("ship: no")


def test_results_table(tmp_path):
    """`python scripts/results_table.py DIR` on a folder of evaluation JSON written by fos.evaluate."""
    from fos.evaluate.__main__ import main as evaluate_main
    from tests.conftest import DATA

    if not os.path.isdir(os.path.join(DATA, "test")):
        pytest.skip("msrc-fos not found")
    for m in ("random", "aspect"):
        for kind, extra in (("exact", []), ("loose", ["--box-jitter", "0.5"])):
            assert evaluate_main(["--data", DATA, "--model", m, "--categories", "cat,dog", *extra,
                                  "--json", str(tmp_path / f"{m}.{kind}.json")]) == 0
    r = run(["scripts/results_table.py", str(tmp_path)])
    assert "| `aspect` | 1.000 |" in r.stdout and "| `random` |" in r.stdout


def test_geometry_mix(data_root):
    r = run(["scripts/geometry_mix.py", "--data", data_root])
    assert "R@1" in r.stdout or "w" in r.stdout


def test_examples_add_coco(small_coco_root, tmp_path):
    """`python -m fos.examples add-coco` keeps only permissively licensed photos and attributes each."""
    from fos.examples import PERMISSIVE, main

    out = tmp_path / "assets"
    (out / "library" / "cow").mkdir(parents=True)
    (out / "library" / "cow" / "mine.jpg").write_bytes(b"kept")
    ann = os.path.join(COCO128, "annotations", "instances_train2017.json")
    assert main(["add-coco", "--data", small_coco_root, "--annotations", ann, "--out", str(out)]) == 0
    added = [f for _, _, fs in os.walk(out / "library") for f in fs if f.startswith("coco-")]
    rows = [ln for ln in open(out / "ATTRIBUTION-coco.md") if ln.startswith("| `")]
    assert rows and len(rows) == len(added) and (out / "library" / "cow" / "mine.jpg").read_bytes() == b"kept"
    lic = {im["id"]: im["license"] for im in json.load(open(ann))["images"]}
    assert all(lic[int(r.split("(id ")[1].split(")")[0])] in PERMISSIVE for r in rows)


def test_examples_build(data_root, tmp_path):
    from fos.examples import main

    out = tmp_path / "assets"
    assert main(["build", "--data", data_root, "--out", str(out)]) == 0
    ex = json.load(open(out / "backgrounds" / "examples.json"))
    assert ex and all(os.path.isfile(out / "backgrounds" / e["file"]) for e in ex)
    assert os.path.isdir(out / "library" / ex[0]["category"])
    shutil.rmtree(out)


COCO128 = os.path.join(ROOT, "..", "shared", "data", "coco128")


@pytest.fixture(scope="module")
def small_coco_root(tmp_path_factory):
    """The README's `python -m fos.data from-coco` on coco128 (98 photos): a small FOSD root with
    photos, masks, train and test."""
    if not os.path.isdir(COCO128):
        pytest.skip("coco128 not found beside the repository")
    out = tmp_path_factory.mktemp("coco") / "fos"
    r = run(["-m", "fos.data", "from-coco", "--images", os.path.join(COCO128, "images", "train2017"),
             "--annotations", os.path.join(COCO128, "annotations", "instances_train2017.json"), "--out", str(out)])
    assert (out / "test" / "labels" / "test_set1.json").is_file() and (out / "photos").is_dir(), r.stdout
    return str(out)


def test_localize_train_and_evaluate_commands(small_coco_root, tmp_path):
    w = str(tmp_path / "loc.safetensors")
    run(["-m", "fos.localize.train", "--method", "dawsol", "--data", small_coco_root, "--out", str(tmp_path / "run"),
         "--save", w, "--epochs", "1", "--batch-size", "4", "--input-size", "64", "--max-steps", "2",
         "--min-photos", "2", "--limit", "12"])
    assert os.path.isfile(w)
    out = tmp_path / "eval.json"
    run(["-m", "fos.localize.evaluate", "--weights", w, "--data", small_coco_root, "--mask-methods", "grabcut",
         "--limit", "4", "--json", str(out), "--figure", str(tmp_path / "fig.png")])
    assert json.load(open(out)) and os.path.getsize(tmp_path / "fig.png") > 0


def test_inpaint_train_and_evaluate_commands(small_coco_root, tmp_path):
    w = str(tmp_path / "spl.safetensors")
    run(["-m", "fos.inpaint.train", "--data", small_coco_root, "--out", str(tmp_path / "run"), "--save", w,
         "--steps", "2", "--batch-size", "2", "--init", "telea"])
    assert os.path.isfile(w)
    out = tmp_path / "eval.json"
    run(["-m", "fos.inpaint.evaluate", "--data", small_coco_root, "--weights", f"spl={w}", "--limit", "2",
         "--methods", "telea,mean", "--kinds", "box,object,object-box", "--json", str(out),
         "--figure", str(tmp_path / "fig.png")])
    res = json.load(open(out))
    assert {k.split("/")[1] for k in res["results"]} >= {"box", "object", "object-box"}
    assert all("feature" in v for v in res["results"].values())
    assert os.path.getsize(tmp_path / "fig.png") > 0


def test_variants_script(data_root, tmp_path):
    """`bash scripts/variants.sh NAME=MODEL:CHECKPOINT` on two categories with a tiny student."""
    from tests.test_data import _copy_test

    w = save_tiny(tmp_path / "w", teacher=False)
    src, _ = _copy_test(data_root, tmp_path / "src", cats=("cow", "book"))
    env = dict(os.environ, DATA=str(src), OUT=str(tmp_path / "out"), FOS_THREADS="1", SEEDS="0,1")
    r = subprocess.run(["bash", "scripts/variants.sh", f"tiny=student_tiny:{w}/student.safetensors"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "out")) == ["tiny.appearance.loose.json", "tiny.appearance.matched.json",
                                                   "tiny.loose.json", "tiny.matched.json"]
    assert r.stdout.splitlines()[-1].startswith("| tiny | ")


# --------------------------------------------------------------------------- the README and docs/ as a newcomer reads them
def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    t = re.sub(r"[^\w\- ]", "", heading.lstrip("#").strip().lower())
    return t.replace(" ", "-")


def test_the_readme_is_short_and_every_link_lands():
    """The README stays under 250 lines, and every relative link of it and of docs/ names a file that
    exists and, with an anchor, a heading of that file."""
    assert len(open(README, encoding="utf-8").read().splitlines()) < 250
    bad = []
    for page in doc_pages():
        text = open(page, encoding="utf-8").read()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(dest):
                bad.append(f"{os.path.relpath(page, ROOT)}: {target} (no such file)")
            elif anchor and dest.endswith(".md"):
                heads = {slug(ln) for ln in open(dest, encoding="utf-8").read().splitlines() if ln.startswith("#")}
                if anchor not in heads:
                    bad.append(f"{os.path.relpath(page, ROOT)}: {target} (no such heading)")
    assert not bad, bad


def readme_python() -> str:
    """The README's "Use from Python" snippet (its indented block)."""
    text = open(README, encoding="utf-8").read()
    block = text.split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    lines = [ln[4:] if ln.startswith("    ") else ln for ln in block.split("\n\n", 1)[1].split("\n\n`", 1)[0].splitlines()]
    return "\n".join(lines).strip() + "\n"


@pytest.mark.skipif(not os.path.exists(SHIPPED), reason="shipped weights missing")
def test_the_readme_python_snippet_runs_from_another_folder(tmp_path, shipped_exported):
    """The snippet as written, from a scratch folder, on a scratch copy of the shipped weights with their
    graphs exported (``prepare()`` alone would write the default library into the repository's weights/)."""
    code = readme_python()
    assert code.startswith("from fos.bootstrap import prepare") and "library, backend = prepare()" in code
    w = tmp_path / "weights"
    shutil.copytree(shipped_exported[0], w)
    code = code.replace("prepare()", f"prepare({str(w)!r})")
    code = code.replace('"assets/', '"' + os.path.join(ROOT, "assets") + '/')  # the photo path is the repo's
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = r.stdout.strip().splitlines()
    assert len(rows) == 3 and all(0.0 <= float(ln.split()[0]) <= 1.0 and "bird" in ln for ln in rows), rows
