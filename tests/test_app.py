"""The app, launched for real in a subprocess and driven through gradio_client and a browser."""
import concurrent.futures as cf
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BG = os.path.join(ROOT, "assets", "backgrounds", "1_14_s.jpg")
BOX = {"xmin": 20, "ymin": 60, "xmax": 150, "ymax": 170, "label": "object", "color": "rgb(255, 64, 64)"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, shipped_exported):
    port = free_port()
    work = tmp_path_factory.mktemp("app")
    # the shipped weights with their exported graphs (shared with the export tests), in a scratch copy
    # where the app builds its default library
    w = work / "weights"
    shutil.copytree(shipped_exported[0], w)
    env = dict(os.environ, PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1", FOS_WEIGHTS=str(w),
               GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    log = open(work / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail("app exited:\n" + open(work / "app.log").read()[-3000:])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("app did not start:\n" + open(work / "app.log").read()[-3000:])
    yield url
    proc.terminate()
    proc.wait(20)
    text = open(work / "app.log").read()
    assert "Traceback" not in text, text[-3000:]


def search(client, box=BOX, typed="", category="cow", k=5, teacher=False, erase=False, image=BG):
    ann = {"image": handle_file(image), "boxes": [box] if box else []}
    return client.predict(ann, typed, category, k, teacher, 3, erase, api_name="/search")


def test_search_end_to_end(app_url):
    c = Client(app_url, verbose=False)
    gallery, table, info, big, filled = search(c)
    rows = table["data"]
    assert table["headers"] == ["rank", "ranked by", "id", "teacher probability", "student probability",
                                "appearance logit", "lighting logit", "geometry logit",
                                "share: geometry / lighting / appearance", "source"]
    assert len(gallery) == len(rows) == 5
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    scores = [r[4] for r in rows]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert all(r[1] == "student" and r[3] == "" and r[2].startswith("cow/") for r in rows)
    # short captions: rank and the ranking model's probability (the id is in the table's row)
    caption = lambda g: (g["caption"].split()[0], float(g["caption"].split()[1]))  # noqa: E731
    assert [caption(g)[0] for g in gallery] == [f"#{r[0]}" for r in rows] and all(len(g["caption"]) <= 8 for g in gallery)
    assert all(caption(g)[1] == pytest.approx(r[4], abs=0.0051) for g, r in zip(gallery, rows))
    size = Image.open(BG).size
    # the gallery shows close-ups around the box (twice the box per side, clamped to the photo),
    # the large view the whole composite
    # box (20, 60)-(150, 170), centre (85, 115), 260x220 around it, clamped to 320x213: (0, 5)-(215, 213)
    assert all(Image.open(item["image"]).size == (215, 208) for item in gallery)
    assert Image.open(big).size == size
    assert "backend:" in info and "background_encode" in info and "rerank" not in info  # no rerank ran
    assert "ranked by the student" in info
    # the teacher reranks the top 3: they come first, by teacher probability; the rest by student probability
    gallery, table, info, _, _ = search(c, teacher=True)
    top, rest = table["data"][:3], table["data"][3:]
    assert [r[1] for r in top] == ["teacher"] * 3 and all(r[1] == "student" and r[3] == "" for r in rest)
    assert [r[3] for r in top] == sorted((r[3] for r in top), reverse=True)
    assert [r[4] for r in rest] == sorted((r[4] for r in rest), reverse=True)
    assert all(caption(g)[1] == pytest.approx(r[3], abs=0.0051) for g, r in zip(gallery, top))
    assert "rerank" in info and "the top 3 ranked by the teacher" in info
    # the student's score splits into its appearance, lighting and geometry logits, and the share column
    # gives each term's part of their sum of sizes
    import math

    for r in table["data"]:
        assert r[4] == pytest.approx(1 / (1 + math.exp(-(r[5] + r[6] + r[7]))), abs=2e-3)
        shares = [float(v.rstrip("%")) / 100 for v in r[8].split(" / ")]
        total = abs(r[7]) + abs(r[6]) + abs(r[5])
        assert shares == pytest.approx([abs(r[7]) / total, abs(r[6]) / total, abs(r[5]) / total], abs=0.006)


def test_bad_inputs_give_messages_and_the_app_keeps_serving(app_url, tmp_path):
    c = Client(app_url, verbose=False)
    cases = [
        (dict(box=None), "no box"),
        (dict(typed="10,10,9999,20"), "inside the 320x213 image"),
        (dict(typed="50,50,51,51"), "too small"),
        (dict(typed="0.1,0.2,0.5,0.6"), "looks normalised to 0..1, but boxes are in pixels"),
        (dict(category=None), "no category"),
    ]
    for kw, msg in cases:
        with pytest.raises(Exception, match=msg):
            search(c, **kw)
    big = tmp_path / "huge.png"
    Image.new("RGB", (8000, 6000), (9, 9, 9)).save(big)
    with pytest.raises(Exception, match="over the limit"):
        c.predict(handle_file(str(big)), api_name="/upload_background")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    with pytest.raises(Exception, match="could not be read as an image") as e:
        c.predict(handle_file(str(bad)), api_name="/upload_background")
    assert "'broken.png'" in str(e.value) and "/tmp" not in str(e.value)  # no server paths in messages
    white = tmp_path / "white.png"
    Image.new("RGB", (50, 50), (255, 255, 255)).save(white)
    msg = c.predict([handle_file(str(white))], api_name="/upload_foregrounds")
    assert "0 foreground(s)" in msg and "no object pixels" in msg
    assert len(search(c)[0]) == 5  # still serving


def test_uploaded_foregrounds_are_ranked(app_url, tmp_path):
    c = Client(app_url, verbose=False)
    rgba = Image.new("RGBA", (60, 40), (0, 0, 0, 0))
    rgba.paste(Image.new("RGBA", (40, 30), (120, 90, 60, 255)), (10, 5))
    p = tmp_path / "mine.png"
    rgba.save(p)
    ann = {"image": handle_file(BG), "boxes": [BOX]}
    job = c.submit([handle_file(str(p))], api_name="/upload_foregrounds")
    assert "1 foreground(s) encoded" in job.result()
    # gradio_client keeps the session, so the next call sees the uploaded cutout
    gallery, table, _, _, _ = c.predict(ann, "", "cow", 20, False, 3, False, api_name="/search")
    assert "mine.png" in [r[2] for r in table["data"]]
    assert any(r[9] == "your upload" for r in table["data"])


COW_PHOTO = os.path.join(ROOT, "..", "shared", "data", "msrc-fos", "photos", "1_18_s.jpg")


def test_cut_out_from_a_photo_then_rank_it(app_url, tmp_path):
    if not os.path.isfile(COW_PHOTO):
        pytest.skip("msrc-fos photos not found beside the repository")
    c = Client(app_url, verbose=False)
    view, cut, box_text, msg, resp = c.predict(handle_file(COW_PHOTO), "cow", "", "grabcut", "", api_name="/cut_out")
    assert resp is None  # no phrase: the localizer, and no response map
    x1, y1, x2, y2 = (int(v) for v in box_text.split(","))
    size = Image.open(COW_PHOTO).size
    assert 0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1]
    assert Image.open(view).size == size
    cutout = Image.open(cut)
    assert cutout.size == (x2 - x1, y2 - y1) and cutout.mode == "RGBA"
    assert "cow" in msg and "proposed" in msg
    # the person adjusts the box, and the cutout follows it; then it joins the session's library
    adj = f"{x1 + 2},{y1 + 2},{x2 - 2},{y2 - 2}"
    _, cut2, box2, msg2, _ = c.predict(handle_file(COW_PHOTO), "cow", adj, "grabcut", "", api_name="/add_cutout")
    assert box2 == adj and Image.open(cut2).size == (x2 - x1 - 4, y2 - y1 - 4)
    assert "typed" in msg2 and "added as" in msg2
    _, table, _, _, _ = c.predict({"image": handle_file(BG), "boxes": [BOX]}, "", "cow", 20, False, 3, False,
                               api_name="/search")
    assert any(r[2] == "cut: 1_18_s (cow)" and r[9] == "your upload" for r in table["data"])
    with pytest.raises(Exception, match="inside the 320x213 image"):
        c.predict(handle_file(COW_PHOTO), "cow", "0,0,999,50", "grabcut", "", api_name="/cut_out")
    with pytest.raises(Exception, match="no photo"):
        c.predict(None, "cow", "", "grabcut", "", api_name="/cut_out")


def test_describe_the_object_cuts_out_the_one_it_names(app_url):
    """With a phrase, the panel uses the referring segmenter and shows its response map; "left" and "right"
    give two different cows of one photo; a phrase it cannot read is one clear message."""
    if not os.path.isfile(COW_PHOTO):
        pytest.skip("msrc-fos photos not found beside the repository")
    if not os.path.isfile(os.path.join(ROOT, "weights", "refer.safetensors")):
        pytest.skip("shipped referring weights missing")
    c = Client(app_url, verbose=False)
    boxes = {}
    for side in ("left", "right"):
        view, cut, box_text, msg, resp = c.predict(handle_file(COW_PHOTO), None, "", "grabcut", f"the cow on the {side}",
                                                   api_name="/cut_out")
        assert "referring segmenter" in msg and "(cow)" in msg
        assert Image.open(resp).size == Image.open(COW_PHOTO).size == Image.open(view).size
        x1, y1, x2, y2 = (int(v) for v in box_text.split(","))
        assert Image.open(cut).size == (x2 - x1, y2 - y1) and Image.open(cut).mode == "RGBA"
        boxes[side] = (x1, x2)
    assert sum(boxes["left"]) < sum(boxes["right"])  # the left cow's box lies left of the right one's
    with pytest.raises(Exception, match="names no category the model saw"):
        c.predict(handle_file(COW_PHOTO), None, "", "grabcut", "kangaroo on the left", api_name="/cut_out")


def test_erase_what_is_in_the_box_first(app_url):
    """With erasing ticked, the search ranks on, and composites onto, the erased photo."""
    if not os.path.isfile(COW_PHOTO):
        pytest.skip("msrc-fos photos not found beside the repository")
    c = Client(app_url, verbose=False)
    box = {**BOX, "xmin": 40, "ymin": 40, "xmax": 200, "ymax": 180}  # the cow of 1_18_s
    _, table_keep, info_keep, big_keep, filled_keep = search(c, box=box, image=COW_PHOTO, erase=False)
    _, table_erased, info, big, filled = search(c, box=box, image=COW_PHOTO, erase=True)
    assert filled_keep is None  # nothing was filled
    f = np.asarray(Image.open(filled).convert("RGB")).astype(int)
    assert f.shape[:2] == (213, 320)
    redness = f[..., 0] - (f[..., 1] + f[..., 2]) / 2
    assert redness[45:175, 45:195].mean() > redness[:, 220:].mean() + 20  # the filled box is tinted red ...
    assert redness[40, 60:180].mean() > 100  # ... and outlined
    assert "box erased with** spl (onnxruntime)" in info and "erase" in info.split("\n")[-1]
    assert "box erased" not in info_keep
    a = np.asarray(Image.open(big_keep).convert("RGB")).astype(int)
    b = np.asarray(Image.open(big).convert("RGB")).astype(int)
    inside = np.zeros(a.shape[:2], bool)
    inside[40:180, 40:200] = True
    assert np.abs(a - b)[inside].mean() > 5  # the box's content changed ...
    assert np.abs(a - b)[~inside].mean() < 2  # ... the rest of the photo did not (JPEG noise aside)
    with pytest.raises(Exception, match="covers 9[0-9]% of the photo"):
        search(c, box={**BOX, "xmin": 0, "ymin": 0, "xmax": 320, "ymax": 210}, image=COW_PHOTO, erase=True)


def test_eight_clients_at_once(app_url):
    ref = [r[2] for r in search(Client(app_url, verbose=False))[1]["data"]]

    def one(i):
        return [r[2] for r in search(Client(app_url, verbose=False))[1]["data"]]

    with cf.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one, range(8)))
    assert all(r == ref for r in results)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does)")
def test_browser_draws_box_and_searches(app_url, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    shot = os.environ.get("FOS_SCREENSHOT", str(tmp_path / "screenshot.png"))  # the README's: docs/screenshot.png
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.goto(app_url, wait_until="domcontentloaded")
        canvas = page.locator("#annotator canvas").first
        canvas.wait_for(timeout=60_000)
        bb = canvas.bounding_box()
        # the example image (320x213) is fitted inside the canvas: find where it is drawn
        iw, ih = Image.open(os.path.join(ROOT, "assets", "backgrounds", "12_12_s.jpg")).size
        scale = min(bb["width"] / iw, bb["height"] / ih)
        x0, y0 = bb["x"] + (bb["width"] - iw * scale) / 2, bb["y"] + (bb["height"] - ih * scale) / 2
        # switch the annotator to its "Create box" tool, then drag a new box in the top-left part of the
        # image, away from the example's box (80,44)-(253,176)
        page.locator("#annotator button[aria-label='Create box']").click()
        page.mouse.move(x0 + 0.04 * iw * scale, y0 + 0.04 * ih * scale)
        page.mouse.down()
        page.mouse.move(x0 + 0.22 * iw * scale, y0 + 0.45 * ih * scale, steps=15)
        page.mouse.up()
        page.locator("#search").click()
        page.locator("#gallery img").first.wait_for(timeout=60_000)
        page.wait_for_function("document.querySelector('#info') && document.querySelector('#info').innerText.includes('box:')")
        info = page.locator("#info").inner_text()
        assert page.locator("#gallery img").count() >= 1 and "backend:" in info
        drawn = [int(v) for v in info.split("box:")[1].split("(")[1].split(")")[0].split(",")]
        assert drawn != [80, 44, 253, 176], "the drawn box did not reach the search"
        assert drawn[0] < 40 and drawn[1] < 40 and drawn[2] < 100, drawn
        # cut an object out of a photo: upload, choose the category, propose, add
        if os.path.isfile(COW_PHOTO):
            page.get_by_text("Cut out from a photo").first.click()
            page.locator("#cut_upload input[type=file]").set_input_files(COW_PHOTO)
            page.locator("#cut_category input").fill("cow")
            page.keyboard.press("Enter")
            page.locator("#cut_propose").click()
            page.locator("#cut_view img").first.wait_for(timeout=60_000)
            page.locator("#cut_img img").first.wait_for(timeout=60_000)
            page.wait_for_function("document.querySelector('#cut_box textarea, #cut_box input').value.split(',').length == 4")
            page.locator("#cut_add").click()
            page.wait_for_function("document.querySelector('#cut_msg').innerText.includes('added as')", timeout=60_000)
        os.makedirs(os.path.dirname(shot), exist_ok=True)
        page.screenshot(path=shot, full_page=True)
        browser.close()
    assert Image.open(shot).size[0] >= 1000


# app.main() once per case, in one process (each case reloads the app module, which reads its settings on
# import); every case must end in SystemExit, so a case that started serving would hang until the timeout
START_DRIVER = r"""
import contextlib, importlib, io, json, os, sys
sys.path.insert(0, os.getcwd())
out = []
for env in json.loads(sys.argv[1]):
    saved = dict(os.environ)
    os.environ.update(env)
    err, code = io.StringIO(), None
    try:
        with contextlib.redirect_stderr(err):
            import app
            importlib.reload(app)
            app.main()
    except SystemExit as e:
        code = e.code
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


def test_bad_start_up_settings_are_one_line(tmp_path):
    """Each bad setting ends the app with one `error:` line (exit 2), not a traceback; the cheap ones are
    checked before any model loads."""
    import json

    from fos.library.build import write_library
    from fos.runtime import TorchBackend
    from tests.conftest import save_tiny

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "student.safetensors").write_bytes(b"not safetensors at all")
    (garbage / "teacher.safetensors").write_bytes(b"nor this")
    empty_lib = tmp_path / "empty_lib"
    empty_lib.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "library.json").write_text("{not json")
    # a library built with other weights than the shipped ones
    src = tmp_path / "src" / "cow"
    src.mkdir(parents=True)
    cow_dir = os.path.join(ROOT, "assets", "library", "cow")
    Image.open(os.path.join(cow_dir, sorted(os.listdir(cow_dir))[0])).save(src / "a.png")
    write_library(TorchBackend(save_tiny(tmp_path / "tiny")), str(tmp_path / "src"), str(tmp_path / "lib"),
                  progress=False)
    cases = [
        ({"FOS_BACKEND": "bogus"}, "FOS_BACKEND must be auto or one of torch, onnxruntime, tensorrt, got 'bogus'"),
        ({"PORT": "abc"}, "PORT must be a port number such as 7860, got 'abc'"),
        ({"FOS_INPAINT": "paint"}, "FOS_INPAINT must be one of"),
        ({"FOS_THREADS": "two"}, "FOS_THREADS must be a whole number"),
        ({"FOS_WEIGHTS": str(tmp_path / "nowhere")}, "is not a folder"),
        ({"FOS_WEIGHTS": str(garbage)}, "could not be read as weights"),
        ({"FOS_LIBRARY": str(tmp_path / "nolib")}, "FOS_LIBRARY="),
        ({"FOS_LIBRARY": str(empty_lib)}, "is not a foreground library"),
        ({"FOS_LIBRARY": str(corrupt)}, "is corrupt or incomplete"),
        ({"FOS_LIBRARY": str(tmp_path / "lib"), "FOS_BACKEND": "torch"}, "built with other weights"),
    ]
    base = {"GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", "GRADIO_SERVER_NAME": "127.0.0.1",
            "PORT": str(free_port())}
    r = subprocess.run([sys.executable, "-c", START_DRIVER, json.dumps([{**base, **env} for env, _ in cases])],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    for (env, msg), (code, err) in zip(cases, json.loads(r.stdout.strip().splitlines()[-1])):
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert code == 2 and len(lines) == 1 and msg in lines[0], (env, code, err[-2000:])


def test_raw_requests_get_clear_messages(app_url, tmp_path):
    """Files and values sent straight to the endpoints: one message each, no server path, no traceback
    in the log (the fixture checks the log when the app stops)."""
    c = Client(app_url, verbose=False)
    for name, data in (("garbage.jpg", b"\x00garbage" * 50), ("empty.png", b""),
                       ("truncated.png", open(BG, "rb").read()[:300])):
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(Exception) as e:
            search(c, image=str(p))
        text = str(e.value)
        assert f"'{name}'" in text and "/tmp" not in text and "gradio" not in text.lower(), text
    # a decompression bomb: 20000 x 20000 pixels in a small PNG, refused from its header
    bomb = tmp_path / "bomb.png"
    Image.new("L", (20000, 20000), 0).save(bomb, optimize=True)
    assert bomb.stat().st_size < 2_000_000
    with pytest.raises(Exception, match="400 MP, over the limit of 40 MP"):
        search(c, image=str(bomb))
    for kw, msg in [(dict(k=0), "how many results must be a whole number from 1 to 20, got 0"),
                    (dict(k=-5), "got -5"), (dict(k=1000), "got 1000"), (dict(k=2.7), "got 2.7"),
                    (dict(k="abc"), "got 'abc'"), (dict(category="unicorn"), "category 'unicorn' has no cutouts")]:
        with pytest.raises(Exception, match=msg):
            search(c, **kw)
    with pytest.raises(Exception, match="N for the teacher rerank must be a whole number from 0 to 20, got 0.5"):
        c.predict({"image": handle_file(BG), "boxes": [BOX]}, "", "cow", 5, True, 0.5, False, api_name="/search")
    # more foregrounds than a session keeps: the message says how many were left out
    rgba = Image.new("RGBA", (30, 20), (0, 0, 0, 0))
    rgba.paste(Image.new("RGBA", (20, 10), (200, 30, 30, 255)), (5, 5))
    files = []
    for i in range(25):
        rgba.save(tmp_path / f"fg{i:02d}.png")
        files.append(handle_file(str(tmp_path / f"fg{i:02d}.png")))
    msg = c.predict(files, api_name="/upload_foregrounds")
    assert "20 foreground(s) encoded" in msg and "only the first 20 of 25 files are used, 5 left out" in msg
    assert len(search(c)[0]) == 5  # still serving


def test_upload_starts_with_no_box_no_erase_and_no_category(app_url):
    c = Client(app_url, verbose=False)
    annot, erase, category = c.predict(handle_file(BG), api_name="/upload_background")
    assert annot["boxes"] == [] and erase is False and category is None
    with pytest.raises(Exception, match="no box"):
        c.predict({"image": handle_file(BG), "boxes": annot["boxes"]}, "", "cow", 5, False, 3, False,
                  api_name="/search")


def test_zoom_box_by_hand():
    """The close-up around the box: twice the box per side around its centre, at least 96 px, clamped."""
    from app import zoom_box
    from fos.preprocess import prepare_background

    bg = prepare_background(Image.new("RGB", (400, 400)), (100, 100, 200, 300))
    assert zoom_box(bg) == (50, 0, 250, 400)  # centre (150, 200), 200x400 around it, clamped
    small = prepare_background(Image.new("RGB", (400, 400)), (10, 10, 20, 20))
    assert zoom_box(small) == (0, 0, 63, 63)  # at least 96 px where the image allows: centre 15 +- 48



def test_a_taken_port_is_one_line_before_the_models_load():
    """Something already listens on PORT: one ``error:`` line naming the port and what to do, exit 2,
    no traceback, and no model loaded first (nothing of the start-up's steps is logged)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        env = dict(os.environ, PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1", GRADIO_ANALYTICS_ENABLED="False")
        r = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(lines) == 1 and f"port {port} on 127.0.0.1 is taken" in lines[0] and "PORT=" in lines[0], lines
    assert "loading" not in r.stderr, r.stderr[-2000:]


def test_the_side_models_run_on_the_backend_the_app_is_told(monkeypatch):
    """``FOS_BACKEND`` picks the backend of every graph the app runs: the inpainter and the referring
    segmenter follow it, as the teacher and student do (before, the side models were left on auto)."""
    import app

    monkeypatch.setattr(app, "BACKEND", "torch")
    monkeypatch.setattr(app, "INPAINT_METHOD", "spl")
    assert app.load_inpainter().backend == "torch"
    assert app.load_referrer().backend == "torch"
