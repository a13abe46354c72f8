"""``python -m fos.refer --image PHOTO --text "dog on the left" --mask OUT.png [--cutout OUT.png] [--json OUT.json]``

Cut out the object a phrase describes with the referring segmenter (TRIS, trained from phrases only):
``--mask`` gets a full-size 0/255 PNG mask, ``--cutout`` an RGBA PNG of the box (transparent outside
the mask), ``--json`` the box (pixels, x2/y2 exclusive), the score (the probability that the phrase
holds in the photo), the response's peak and the words the model did not know. ``--response`` also
writes the response map over the photo.

``python -m fos.refer train ...`` trains it; ``python -m fos.refer evaluate ...`` scores it on the test
photos beside its baselines (``--help`` on each).
"""
from __future__ import annotations

import argparse
import os
import sys

from fos import cli
from fos.checkpoint import atomic_write
from fos.preprocess import InputError, load_image


def run(a) -> int:
    from fos.refer.infer import Referrer, draw_response

    outs = [o for o in (a.mask, a.cutout, a.json, a.response) if o]
    if not outs:
        raise InputError("nothing to write: pass --mask OUT.png (and/or --cutout, --json, --response)")
    ref = Referrer(a.weights, backend=a.backend)
    ref.check_phrase(a.text)  # before reading the photo
    img = load_image(a.image, "RGB", what="photo")
    r = ref.refer(img, a.text)
    from PIL import Image

    if a.mask:
        m = Image.fromarray((r.mask * 255).astype("uint8"), "L")
        atomic_write(a.mask, lambda f: m.save(f, format="PNG"))
    if a.cutout:
        c = r.rgba(img)
        atomic_write(a.cutout, lambda f: c.save(f, format="PNG"))
    if a.response:
        v = draw_response(img, r.response, r.box)
        atomic_write(a.response, lambda f: v.save(f, format="PNG"))
    if a.json:
        cli.write_json(a.json, {"image": os.path.abspath(a.image), "backend": ref.backend, **r.to_json()})
    if r.ignored:
        print(f"note: words the model does not know were left out: {', '.join(r.ignored)}", file=sys.stderr)
    print(f"{a.text!r}: {r.category}, box {list(r.box)}, score {r.score:.3f}; wrote "
          + ", ".join(os.path.abspath(o) for o in outs))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fos.refer.infer import DEFAULT_WEIGHTS

    p = argparse.ArgumentParser(prog="python -m fos.refer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", required=True, help="the photo")
    p.add_argument("--text", required=True, help='what to cut out, e.g. "dog on the left"')
    p.add_argument("--mask", default=None, help="output: full-size 0/255 PNG mask")
    p.add_argument("--cutout", default=None, help="output: RGBA PNG of the object's box")
    p.add_argument("--json", default=None, help="output: box, score, peak")
    p.add_argument("--response", default=None, help="output: the response map over the photo (PNG)")
    p.add_argument("--weights", default=DEFAULT_WEIGHTS, help=f"referring weights (default {DEFAULT_WEIGHTS})")
    cli.add_backend(p, "torch, onnxruntime (the exported graph) or tensorrt (its engine); auto: the best one ready")
    cli.add_threads(p)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from fos.refer.train import main as train_main

        return train_main(argv[1:])
    if argv and argv[0] == "evaluate":
        from fos.refer.evaluate import main as eval_main

        return eval_main(argv[1:])
    return cli.run(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
