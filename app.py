"""Foreground object search demo (Gradio): ``python app.py`` locally, or as a Hugging Face Space.

Loads once at start (:func:`fos.bootstrap.prepare`): the shipped weights (``weights/``), the best
available backend (TensorRT, then ONNX Runtime, exporting the graphs once if needed, then torch) and
the default foreground library (``assets/library``, encoded into ``weights/library-<sha12>`` on first
start) or the library named by ``FOS_LIBRARY``. A person uploads a background or picks an example,
draws a box, picks a category, and sees the ranked cutouts with their composites.
"""

import logging
import math
import os
import sys
import tempfile
import time
import traceback
import uuid
import warnings

import numpy as np
from PIL import Image

from fos.weights import SHIPPED
from fos.bootstrap import prepare
from fos.config import BACKENDS
from fos.errors import USER_ERRORS, BackendError, InputError, LibraryError, WeightsError
from fos.examples import load_examples
from fos.preprocess import Box, PreparedBackground, load_image, parse_box
from fos.search import EngineCfg, PhotoSearch, SearchEngine, weights_prefilter
from fos.threads import default_threads, set_threads

log = logging.getLogger("fos.app")
WEIGHTS = os.environ.get("FOS_WEIGHTS", SHIPPED)
LIBRARY = os.environ.get("FOS_LIBRARY") or None  # None: the default library, built from assets/library
BACKEND = os.environ.get("FOS_BACKEND", "auto")
LOCALIZER = os.environ.get("FOS_LOCALIZER") or os.path.join(WEIGHTS, "localizer.safetensors")
REFER = os.environ.get("FOS_REFER") or os.path.join(WEIGHTS, "refer.safetensors")
# "erase what is in the box first": the shipped SPL model (telea-init) had the best mean PSNR inside the
# hole on the train-split selection, a tie with Telea on the test photos (README, "Erase what is in the
# box"); telea / ns are OpenCV's
INPAINT_METHOD = os.environ.get("FOS_INPAINT", "spl")
MAX_UPLOADS = 20
MAX_K = 20  # the "how many results" slider's range is 1..MAX_K
# Composites are written here under unique names and handed to Gradio as paths: Gradio copies a path
# into its cache atomically, while returning PIL images makes it rewrite one content-hashed file per
# identical image, which races with a concurrent download of that file (identical queries).
OUT_DIR = os.path.join(tempfile.gettempdir(), f"fos-app-{os.getpid()}")
OUT_TTL_S = 600
TABLE_HEADERS = ["rank", "ranked by", "id", "teacher probability", "student probability", "appearance logit",
                 "lighting logit", "geometry logit", "share: geometry / lighting / appearance", "source"]

try:  # the box-drawing component; a two-click fallback works without it
    from gradio_image_annotation import image_annotator

    HAVE_ANNOTATOR = True
except ImportError:  # pragma: no cover - depends on the install
    HAVE_ANNOTATOR = False


def server_port() -> int:
    text = os.environ.get("PORT", os.environ.get("GRADIO_SERVER_PORT", "7860"))
    try:
        port = int(text)
    except ValueError:
        raise InputError(f"PORT must be a port number such as 7860, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise InputError(f"PORT must be between 1 and 65535, got {port}")
    return port


def check_port_free(port: int, host: str | None = None) -> None:
    """Fail in one line, before the models load, when something already listens on ``port``
    (Gradio would otherwise end in a long traceback after the slow start-up)."""
    import socket

    host = host or os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise InputError(f"port {port} on {host} is taken ({e.strerror or e}): stop what uses it or "
                             f"start on another, e.g. PORT={port + 1 if port < 65535 else 7861} python app.py") from None


def check_environment() -> int:
    """Check every setting the app reads from the environment, before anything slow is loaded; returns
    the port. Each bad value raises one of :data:`USER_ERRORS` with a message that says what to set."""
    port = server_port()
    if BACKEND not in ("auto", *BACKENDS):
        raise BackendError(f"FOS_BACKEND must be auto or one of {', '.join(BACKENDS)}, got {BACKEND!r}")
    from fos.inpaint.infer import METHODS

    if INPAINT_METHOD not in METHODS:
        raise InputError(f"FOS_INPAINT must be one of {', '.join(METHODS)}, got {INPAINT_METHOD!r}")
    default_threads()  # FOS_THREADS
    if not os.path.isdir(WEIGHTS):
        raise WeightsError(f"FOS_WEIGHTS={WEIGHTS!r} is not a folder: point it at a folder holding "
                           "student.safetensors and teacher.safetensors (the shipped ones are in weights/)")
    if LIBRARY and not os.path.isdir(LIBRARY):
        raise LibraryError(f"FOS_LIBRARY={LIBRARY!r} is not a folder: point it at a library built with "
                           "`python -m fos.library build --src DIR --out LIB`, or unset it for the default library")
    if os.environ.get("FOS_REFER") and not os.path.isfile(REFER):
        raise WeightsError(f"FOS_REFER={REFER!r} is not a file: point it at referring weights made by "
                           "`python -m fos.refer train`, or unset it for weights/refer.safetensors")
    return port


def step(text: str) -> None:
    """One progress line per start-up step, on the console whatever the logging set-up."""
    print(f"[fos app] {text}", file=sys.stderr, flush=True)


def load_engine() -> SearchEngine:
    t0 = time.time()
    log.info("torch and onnxruntime use %d CPU threads (FOS_THREADS to change)", set_threads())
    step(f"loading weights from {WEIGHTS} and the library (the first start also exports the ONNX graphs "
         "and encodes the default library: about a minute; later starts take seconds)")
    lib, backend = prepare(WEIGHTS, LIBRARY, BACKEND)
    eng = SearchEngine(lib, backend, EngineCfg(), prefilter=weights_prefilter(WEIGHTS, backend.student_sha256))
    log.info("ready in %.1fs: %d library items in %d categories, backend %s", time.time() - t0, len(lib),
             len(lib.category_names()), backend.description)
    return eng


# --------------------------------------------------------------------------- request handling
def parse_box_text(text: str | None):
    """The typed box, or None when the field is empty."""
    if not text or not text.strip():
        return None
    return parse_box(text, "the typed box")


def whole_number(value, what: str, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi], or an :class:`InputError` that names the field (2.7 is refused,
    not rounded)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a whole number from {lo} to {hi}, got {value!r}") from None
    if not lo <= f <= hi or f != int(f):  # NaN and infinities fail the range test first
        raise InputError(f"{what} must be a whole number from {lo} to {hi}, got {value!r}")
    return int(f)


def box_from_annotation(value) -> tuple[np.ndarray | None, tuple | None]:
    if not value:
        return None, None
    img = value.get("image") if isinstance(value, dict) else None
    boxes = value.get("boxes") or [] if isinstance(value, dict) else []
    box = None
    if boxes:
        b = boxes[-1]
        box = (b["xmin"], b["ymin"], b["xmax"], b["ymax"])
    return img, box


def zoom_box(bg: PreparedBackground, scale: float = 2.0, min_side: int = 96) -> Box:
    """A region around the box for looking at a composite closely: the box grown ``scale`` times per
    side (at least ``min_side`` px where the image allows), clamped to the image."""
    w, h = bg.size
    x1, y1, x2, y2 = bg.box
    bw, bh = max(x2 - x1, min_side / scale), max(y2 - y1, min_side / scale)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    hw, hh = bw * scale / 2, bh * scale / 2
    return (max(0, int(cx - hw)), max(0, int(cy - hh)), min(w, int(math.ceil(cx + hw))), min(h, int(math.ceil(cy + hh))))


def prune_outputs() -> None:
    """Delete output images older than ``OUT_TTL_S`` (once per search, not per image)."""
    os.makedirs(OUT_DIR, exist_ok=True)
    now = time.time()
    for f in os.listdir(OUT_DIR):
        p = os.path.join(OUT_DIR, f)
        try:
            if now - os.path.getmtime(p) > OUT_TTL_S:
                os.unlink(p)
        except OSError:
            pass


def save_output(img: Image.Image) -> str:
    """Write an output image under a unique name and return its path."""
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, f"{uuid.uuid4().hex}.jpg")
    img.save(path, quality=92)
    return path


def run_search(engine: SearchEngine, image, box, category: str, k: int, rerank: int, uploads: list | None,
               eraser=None):
    """Check what the page sent, run the engine's one search call (:meth:`SearchEngine.search_photo`:
    with ``eraser``, an :class:`fos.inpaint.infer.Inpainter`, what is in the box is erased first) and
    render it; returns (gallery of close-ups around the box, table rows, info markdown, the first full
    composite, every full composite)."""
    if image is None:
        raise InputError("no background: upload an image or pick an example")
    if box is None:
        raise InputError("no box: draw a box on the background (or type x1,y1,x2,y2)")
    if not category:
        raise InputError("no category: choose what kind of object should go in the box")
    cats = engine.lib.category_names()
    if category not in cats and not uploads:
        raise InputError(f"category {category!r} has no cutouts in the library; choose one of {', '.join(cats)}")
    k = whole_number(k, "how many results", 1, MAX_K)
    rerank = whole_number(rerank, "N for the teacher rerank", 0, MAX_K)
    image = open_background(image)  # header checked before decoding (the page hands over a path)
    out = engine.search_photo(image, box, category, k, rerank=rerank, extra=uploads or None, eraser=eraser)
    return render(engine, out)


def render(engine: SearchEngine, out: PhotoSearch):
    """The page's view of a search: close-ups and full composites written once each, the table rows
    (:data:`TABLE_HEADERS`) in rank order, and the info line."""
    t0 = time.perf_counter()
    prune_outputs()
    zoom = zoom_box(out.background)
    gallery, rows, fulls = [], [], []
    for rank, r in enumerate(out.results, 1):
        fulls.append(save_output(r.composite))
        gallery.append((save_output(r.composite.crop(zoom)), f"#{rank} {r.score:.2f}"))
        rows.append([rank, r.ranked_by, r.id, "" if r.teacher_score is None else round(r.teacher_score, 4),
                     round(r.student_score, 4), round(r.appearance, 3), round(r.lighting, 3), round(r.geometry, 3),
                     " / ".join(f"{v:.0%}" for v in r.shares()), "your upload" if r.image is not None else "library"])
    timings = {**out.timings_ms, "page": (time.perf_counter() - t0) * 1e3}
    erased = f" · **box erased with** {out.erased_with}" if out.erased_with else ""
    reranked = sum(r.teacher_score is not None for r in out.results)
    order = (f"the top {reranked} ranked by the teacher, the rest by the student" if reranked
             else "ranked by the student")
    info = (f"**backend:** {engine.backend.description} · **candidates:** {out.n_candidates} "
            f"(scored {out.n_scored}; {order}) · **box:** {out.background.box}{erased}\n\n"
            + " · ".join(f"{name} {v:.1f} ms" for name, v in timings.items()))
    filled = save_output(filled_view(out.background.image, out.background.box)) if out.erased_with else None
    return gallery, rows, info, (fulls[0] if fulls else None), filled, fulls


def filled_view(image: Image.Image, box) -> Image.Image:
    """The erased photo with what the eraser filled tinted and outlined in red, so a person sees which
    pixels are a guess (around a pasted cutout they stay visible)."""
    from PIL import ImageDraw

    x1, y1, x2, y2 = box
    out = image.convert("RGB").copy()
    tint = Image.new("RGB", (x2 - x1, y2 - y1), (255, 0, 0))
    out.paste(Image.blend(out.crop((x1, y1, x2, y2)), tint, 0.25), (x1, y1))
    ImageDraw.Draw(out).rectangle((x1, y1, x2 - 1, y2 - 1), outline=(255, 0, 0), width=max(2, min(out.size) // 150))
    return out


def load_localizer():
    """The weakly supervised localizer for the "cut out from a photo" panel; None when its weights are missing."""
    if not os.path.isfile(LOCALIZER):
        log.warning("no localizer weights at %s: the cut-out panel is off (python -m fos.localize.train)", LOCALIZER)
        return None
    from fos.localize.infer import Localizer

    loc = Localizer(LOCALIZER)
    log.info("localizer %s (%s, %d classes, masks by %s)", LOCALIZER, loc.cfg.method, len(loc.classes),
             loc.mask_method)
    return loc


def load_referrer():
    """The referring segmenter for the panel's "describe the object" box, on ``FOS_BACKEND`` like every graph
    the app runs; None when its weights are missing."""
    from fos.bootstrap import prepare_referrer

    ref = prepare_referrer(REFER, BACKEND)
    if ref is None:
        return None
    log.info("referring segmenter %s (%s, %d categories)", REFER, ref.backend, len(ref.categories))
    return ref


def refer_in_photo(referrer, photo, phrase: str):
    """Cut out the object ``phrase`` describes; returns (preview with box and mask, RGBA cutout, box text,
    message, response map over the photo)."""
    from fos.localize.infer import draw_localization
    from fos.refer.infer import draw_response

    if referrer is None:
        raise InputError("no referring weights are installed (weights/refer.safetensors): clear the "
                         "describe-the-object box to use the localizer")
    if photo is None:
        raise InputError("no photo: upload a photo to cut an object out of")
    referrer.check_phrase(phrase)
    img = load_image(photo, "RGB", what="photo")
    r = referrer.refer(img, phrase)
    msg = (f"**{phrase}** ({r.category}) score {r.score:.2f} · box {list(r.box)} (from the phrase) · mask by "
           f"the referring segmenter" + (f" · words it does not know, left out: {', '.join(r.ignored)}"
                                         if r.ignored else ""))
    return (draw_localization(img, r.box, r.mask), r.rgba(img), ",".join(str(v) for v in r.box), msg,
            draw_response(img, r.response, r.box))


def cut_from_photo(localizer, photo, category: str, box_text: str | None, method: str | None,
                   phrase: str | None = None, referrer=None):
    """Localize ``category`` in ``photo`` (or use the typed box) and cut it out; with a ``phrase``, the
    referring segmenter cuts out the object it describes instead. Returns (preview of the photo with
    box and mask, RGBA cutout, box text, message, response map or None)."""
    from fos.localize.infer import draw_localization

    if phrase and phrase.strip():
        return refer_in_photo(referrer, photo, phrase)
    if localizer is None:
        raise InputError("no localizer weights are installed (weights/localizer.safetensors)")
    if photo is None:
        raise InputError("no photo: upload a photo to cut an object out of")
    if not category:
        raise InputError("no category: choose what the photo shows")
    img = load_image(photo, "RGB", what="photo")
    box = parse_box_text(box_text)
    c = localizer.cut(img, category, box=box, method=method or None)
    low = c.loc.score < localizer.cfg.score_threshold
    msg = (f"**{category}** score {c.loc.score:.2f}" + (" (low: the photo may not show one)" if low else "")
           + f" · box {list(c.box)} ({'typed' if box else 'proposed'}) · mask by {c.method}"
           + (" (it found nothing in the box: the cutout is the whole box)" if c.whole_box else ""))
    return draw_localization(img, c.box, c.mask), c.rgba(), ",".join(str(v) for v in c.box), msg, None


def load_inpainter():
    """The inpainter behind "erase what is in the box first" (``FOS_INPAINT``: one of fos.inpaint.infer.METHODS),
    on the backend the teacher and student run on (``FOS_BACKEND``)."""
    from fos.bootstrap import prepare_inpainter

    inp = prepare_inpainter(WEIGHTS, INPAINT_METHOD, BACKEND)
    log.info("erasing boxes with %s", inp.description)
    return inp


def quiet(component):
    """``component`` (a Gradio input) with the app's own checks: its value reaches the handler unchecked
    (a handler of :func:`build_demo` checks it and answers one line), where Gradio's checks would answer
    in their own words and print a traceback to the server log for each bad value. The override is on
    the instance, so the page draws the component as usual."""
    component.preprocess = lambda payload: payload
    return component


def path_annotator(**kw):
    """The box annotator, handing the handler the uploaded file's path undecoded: ``load_image`` then
    checks its size from the header before decoding (a decompression bomb is refused at once) and names
    only the file in its errors (the annotator's own decoding answered with a server path). EXIF
    orientation is applied after loading (:func:`open_background`), as the annotator does."""
    annot = image_annotator(**kw)
    annot.preprocess_image = lambda image: None if image is None else str(image.path)
    return annot


def open_background(src):
    """The background a person sees on the page: header-checked, decoded, EXIF-rotated."""
    from PIL import ImageOps

    img = load_image(src, "RGB", what="background")
    return ImageOps.exif_transpose(img) if isinstance(src, (str, os.PathLike)) else img


def build_demo(engine: SearchEngine, localizer=None, inpainter=None, referrer=None):
    import gradio as gr

    cats = engine.lib.category_names()
    examples = load_examples()

    def user_error(e: Exception):
        return gr.Error(str(e), print_exception=False)

    def safe(fn):
        def wrapped(*a):
            try:
                return fn(*a)
            except USER_ERRORS as e:
                raise user_error(e) from None
            except gr.Error:
                raise
            except Exception as e:  # keep serving; the trace goes to the log, not the page
                log.error("internal error: %s", traceback.format_exc())
                raise gr.Error(f"internal error ({type(e).__name__}); the server logged the details",
                               print_exception=False) from None
        return wrapped

    @safe
    def on_upload_bg(file):
        """A new photo, with no box (the person draws one), erasing off and no category (they choose)."""
        if file is None:
            return gr.update(), gr.update(), gr.update()
        arr = np.asarray(open_background(getattr(file, "name", file)))
        return ({"image": arr, "boxes": []} if HAVE_ANNOTATOR else arr), False, None

    @safe
    def on_upload_fg(files, state):
        state = dict(state or {})
        if not files:
            return state, "no foregrounds uploaded"
        dropped = [os.path.basename(getattr(f, "name", str(f))) for f in files[MAX_UPLOADS:]]
        files = files[:MAX_UPLOADS]
        names = [os.path.basename(getattr(f, "name", str(f))) for f in files]
        items, problems = engine.encode_extra([getattr(f, "name", f) for f in files], names)
        state["items"] = items
        msg = f"{len(items)} foreground(s) encoded once for this session"
        if problems:
            msg += "; skipped: " + "; ".join(problems)
        if dropped:
            msg += (f"; only the first {MAX_UPLOADS} of {MAX_UPLOADS + len(dropped)} files are used, "
                    f"{len(dropped)} left out ({', '.join(dropped[:5])}{', ...' if len(dropped) > 5 else ''})")
        return state, msg

    @safe
    def on_search(annot, box_text, category, k, use_teacher, n_rerank, erase, state):
        if HAVE_ANNOTATOR:
            image, box = box_from_annotation(annot)
        else:
            image, box = annot, (state or {}).get("clicks_box")
        typed = parse_box_text(box_text)
        box = typed if typed is not None else box
        uploads = ((state or {}).get("items") or []) + ((state or {}).get("cuts") or [])
        gallery, rows, info, big, filled, fulls = run_search(engine, image, box, category, k,
                                                             n_rerank if use_teacher else 0, uploads,
                                                             inpainter if erase else None)
        return gallery, rows, info, big, filled, fulls

    def on_select(evt: gr.SelectData, fulls):
        if fulls and evt.index is not None and evt.index < len(fulls):
            return fulls[evt.index]  # the full composite of the close-up that was clicked
        return None

    with gr.Blocks(title="Foreground object search") as demo:
        gr.Markdown("# Foreground object search (DiscoFOS)\nUpload a background (or pick an example), draw a box "
                    "where an object should go, choose its category, and get the library's cutouts ranked by a learned "
                    "compatibility score, with a composite of each. On the test data the score's lead over chance "
                    "comes mostly from the box's shape and size (see the README's results).")
        state = gr.State({})
        fulls = gr.State([])  # full-size composites of the last search, in rank order
        with gr.Row():
            with gr.Column(scale=3):
                if HAVE_ANNOTATOR:
                    first = examples[0] if examples else None
                    value = None
                    if first:
                        b = first["box"]
                        value = {"image": first["image"], "boxes": [{"xmin": b[0], "ymin": b[1], "xmax": b[2],
                                                                      "ymax": b[3], "label": "object",
                                                                      "color": (255, 64, 64)}]}
                    annot = path_annotator(value=value, label="Background: drag to draw the box", single_box=True,
                                            sources=[], image_type="numpy", label_list=["object"],
                                            label_colors=[(255, 64, 64)], show_download_button=False, disable_edit_boxes=True,
                                            elem_id="annotator")
                else:
                    annot = gr.Image(label="Background: click two corners of the box", type="numpy",
                                     sources=[], elem_id="annotator")
                bg_file = gr.File(label="Upload a background (PNG or JPEG)", file_types=["image"], elem_id="bg_upload")
                box_text = gr.Textbox(label="or type the box: x1,y1,x2,y2 (pixels)", placeholder="e.g. 80,44,253,176",
                                      elem_id="box_text")
            with gr.Column(scale=2):
                category = quiet(gr.Dropdown(cats, value=(examples[0]["category"] if examples else None),
                                              label="Category", elem_id="category"))
                k = quiet(gr.Slider(1, MAX_K, value=8, step=1, label="How many results"))
                use_teacher = gr.Checkbox(False, label="Rerank the top N with the teacher (slower, more accurate)")
                n_rerank = quiet(gr.Slider(1, MAX_K, value=5, step=1, label="N for teacher rerank"))
                erase = gr.Checkbox(False, label="Erase what is in the box first"
                                    + (f" ({inpainter.method} inpainting)" if inpainter else " (no inpainter)"),
                                    interactive=inpainter is not None, elem_id="erase")
                gr.Markdown("*Erase* fills the box from the photo around it before the search, for a box drawn "
                            "over an object you want to replace. It is a smooth guess, not a real background: "
                            "on boxes larger than about a fifth of the photo, or over textured scenes, it leaves "
                            "a visible smear (often X-shaped), and the pasted cutout covers only part of it. "
                            "The panel under the results shows what was filled, tinted red. "
                            "Leave it off when the box is already on empty background.", elem_id="erase_help")
                fg_files = gr.File(label="Your own foregrounds (PNG with alpha, or object on white)",
                                   file_count="multiple", file_types=["image"], elem_id="fg_upload")
                fg_msg = gr.Markdown()
                btn = gr.Button("Search", variant="primary", elem_id="search")
        info = gr.Markdown(elem_id="info")
        with gr.Row():
            gallery = gr.Gallery(label="Ranked composites (close-up around the box; click one for the whole photo)",
                                 columns=4, height=420, elem_id="gallery")
            big = gr.Image(label="Selected composite (whole photo)", interactive=False, elem_id="big")
            filled = gr.Image(label="What erase filled (tinted red: a guess from the pixels around it)",
                              interactive=False, elem_id="filled")
        table = gr.Dataframe(headers=TABLE_HEADERS,
                             label="Ranking, best first. With the teacher rerank on, the top N are ranked by the teacher's "
                                   "probability, the rest by the student's (the gallery shows the ranking model's). "
                                   "student probability = sigmoid(appearance + lighting + geometry logits): what the "
                                   "pixels' content says, how the cutout's colours fit the box's surround, and what the "
                                   "box's and the cutout's shape and size say; the share column is each term's part of "
                                   "the score (its size against the sum of the three)", elem_id="table")
        if examples:
            ex_choice = gr.Dropdown([f"{e['category']}: {e['file']}" for e in examples], label="Examples",
                                    elem_id="examples")

            def pick(name):
                e = examples[[f"{x['category']}: {x['file']}" for x in examples].index(name)]
                b = e["box"]
                if HAVE_ANNOTATOR:
                    v = {"image": e["image"], "boxes": [{"xmin": b[0], "ymin": b[1], "xmax": b[2], "ymax": b[3],
                                                         "label": "object", "color": (255, 64, 64)}]}
                else:
                    v = e["image"]
                return v, e["category"], "", False  # the examples' boxes are already gray: nothing to erase

            ex_choice.change(pick, ex_choice, [annot, category, box_text, erase], api_name="example")
        if not HAVE_ANNOTATOR:
            def click(evt: gr.SelectData, st):
                st = dict(st or {})
                pts = st.get("clicks", [])[-1:] + [tuple(evt.index)]
                st["clicks"] = pts
                if len(pts) == 2:
                    (x1, y1), (x2, y2) = pts
                    st["clicks_box"] = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
                    st["clicks"] = []
                return st, ",".join(str(v) for v in st.get("clicks_box", ())) or ""

            annot.select(click, state, [state, box_text])
        bg_file.upload(on_upload_bg, bg_file, [annot, erase, category], api_name="upload_background")
        fg_files.upload(on_upload_fg, [fg_files, state], [state, fg_msg], api_name="upload_foregrounds")
        btn.click(on_search, [annot, box_text, category, k, use_teacher, n_rerank, erase, state],
                  [gallery, table, info, big, filled, fulls], api_name="search", concurrency_limit=2)
        gallery.select(on_select, fulls, big, api_name=False)

        with gr.Accordion("Cut out from a photo (weakly supervised localization, or a phrase)", open=False):
            gr.Markdown("Upload a photo that shows an object, pick its category: the localizer proposes a box "
                        "and a cutout. Edit the box if needed, then add the cutout to this session's library; "
                        "the next search ranks it with the rest. When the photo shows several, describe the one "
                        "you want (\"the cow on the left\"): the referring segmenter, trained from phrases only, "
                        "cuts it out and shows its response map." if localizer or referrer else
                        "No localizer weights are installed, so this panel is off.")
            with gr.Row():
                with gr.Column(scale=2):
                    cut_file = gr.File(label="Photo (PNG or JPEG)", file_types=["image"], elem_id="cut_upload")
                    cut_cat = gr.Dropdown(localizer.classes if localizer else [], label="What the photo shows",
                                          elem_id="cut_category")
                    cut_phrase = gr.Textbox(label="Describe the object (optional), e.g. \"cow on the left\": "
                                            "the referring segmenter then picks which one" if referrer else
                                            "Describe the object (off: no referring weights installed)",
                                            interactive=referrer is not None, elem_id="cut_phrase")
                    cut_box = gr.Textbox(label="Box x1,y1,x2,y2 (proposed; edit to adjust, empty to propose again)",
                                         elem_id="cut_box")
                    cut_method = gr.Dropdown(["grabcut", "u2netp", "cam"],
                                             value=localizer.mask_method if localizer else None,
                                             label="Mask inside the box", elem_id="cut_method")
                    with gr.Row():
                        cut_btn = gr.Button("Propose box and cutout", elem_id="cut_propose")
                        add_btn = gr.Button("Add the cutout to my library", elem_id="cut_add")
                    cut_msg = gr.Markdown(elem_id="cut_msg")
                cut_view = gr.Image(label="Box and mask", interactive=False, elem_id="cut_view")
                cut_img = gr.Image(label="Cutout", interactive=False, image_mode="RGBA", type="pil",
                                   elem_id="cut_img")
                cut_resp = gr.Image(label="Response to the phrase", interactive=False, elem_id="cut_response")

        @safe
        def on_cut(file, cat, box_text, method, phrase):
            path = getattr(file, "name", file)
            return cut_from_photo(localizer, path, cat, box_text, method, phrase, referrer)

        @safe
        def on_add(file, cat, box_text, method, phrase, st):
            path = getattr(file, "name", file)
            view, cut, btext, msg, resp = cut_from_photo(localizer, path, cat, box_text, method, phrase, referrer)
            if phrase and phrase.strip():
                cat = referrer.check_phrase(phrase)[0].category
            st = dict(st or {})
            cuts = list(st.get("cuts") or [])
            if len(cuts) >= MAX_UPLOADS:
                raise InputError(f"this session holds {MAX_UPLOADS} cut-out objects already")
            name = f"cut: {os.path.splitext(os.path.basename(str(path)))[0]} ({cat})"
            new, problems = engine.encode_extra([cut], [name])
            if problems:
                raise InputError("; ".join(problems))
            st["cuts"] = cuts + new
            return view, cut, btext, msg + f" · added as **{name}**; {len(st['cuts'])} in this session", resp, st

        cut_btn.click(on_cut, [cut_file, cut_cat, cut_box, cut_method, cut_phrase],
                      [cut_view, cut_img, cut_box, cut_msg, cut_resp], api_name="cut_out")
        add_btn.click(on_add, [cut_file, cut_cat, cut_box, cut_method, cut_phrase, state],
                      [cut_view, cut_img, cut_box, cut_msg, cut_resp, state], api_name="add_cutout")
        cut_file.upload(lambda f: "", cut_file, cut_box, api_name=False)  # a new photo: propose a new box
    return demo


def main() -> None:
    """Start the app; a bad setting or weights or library that do not fit end in one ``error:`` line
    (exit 2), checked before the models load where it can be."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # the exporter's and Gradio's own deprecation chatter is not for the person starting the app
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        port = check_environment()
        check_port_free(port)
        engine = load_engine()
        step("loading the localizer, the inpainter and the referring segmenter")
        localizer, inpainter, referrer = load_localizer(), load_inpainter(), load_referrer()
        demo = build_demo(engine, localizer, inpainter, referrer)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    step(f"serving on port {port}")
    demo.queue(default_concurrency_limit=2, max_size=64)
    try:
        demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"), server_port=port,
                    max_file_size="20mb", show_error=True)
    except OSError as e:  # the port was taken while the models loaded
        print(f"error: could not serve on port {port} ({e}): start on another, e.g. PORT={port + 1} python app.py",
              file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
