"""``python -m fos.inpaint --image IN --box x1,y1,x2,y2 --out OUT [--method spl|telea|ns]``: erase what is
in the box (pixels, x2/y2 exclusive) and write the filled photo. The output is written atomically:
a failed run leaves an existing OUT as it was."""
from __future__ import annotations

import argparse
import io
import os
import sys

from fos import cli
from fos.inpaint.infer import BACKENDS, DEFAULT_WEIGHTS, METHODS, Inpainter
from fos.preprocess import InputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fos.inpaint", description=__doc__)
    p.add_argument("--image", required=True, help="the photo (PNG or JPEG; grayscale and RGBA are converted to RGB)")
    p.add_argument("--box", required=True, type=cli.box, help="x1,y1,x2,y2 in pixels, x2/y2 exclusive")
    p.add_argument("--out", required=True, help="where to write the filled photo (.png or .jpg)")
    p.add_argument("--method", choices=METHODS, default="spl")
    p.add_argument("--weights", default=DEFAULT_WEIGHTS, help="SPL weights (method spl)")
    cli.add_backend(p, "spl only: torch, onnxruntime (the exported graph) or tensorrt (its engine); auto: the "
                   "best one ready", BACKENDS)
    cli.add_threads(p)
    return p


def main(argv=None) -> int:
    def run(a) -> int:
        ext = os.path.splitext(a.out)[1].lower()
        fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(ext)
        if fmt is None:
            raise InputError(f"--out must end in .png, .jpg or .jpeg, got {a.out!r}")
        out = Inpainter(a.method, a.weights, a.backend).erase_box(a.image, a.box)
        buf = io.BytesIO()
        out.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        from fos.checkpoint import atomic_write_bytes

        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        atomic_write_bytes(a.out, buf.getvalue())
        print(f"wrote {a.out} ({out.size[0]}x{out.size[1]}, box erased with {a.method})")
        return 0

    return cli.run(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
