"""``python -m fos.train teacher|student [--flags]``: every :class:`fos.config.TrainCfg` field is a flag."""
from __future__ import annotations

import argparse
import os
import sys
from functools import partial

from fos import cli
from fos.config import PreprocessCfg, TrainCfg
from fos.train import __doc__ as DOC, fit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fos.train", description=DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["teacher", "student"])
    cli.add_training_args(p, TrainCfg(), ("amp", "preprocess"), "runs/<kind>", "weights/<kind>.safetensors")
    p.add_argument("--student-view", choices=["context", "whole"], default=PreprocessCfg().student_view,
                   help="what the student's background encoder sees (PreprocessCfg.student_view)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no mixed precision on CUDA")
    return p


def main(argv=None) -> int:
    return cli.run_training("fos.train", build_parser(), argv, TrainCfg, lambda a: partial(fit, a.kind),
                            out=lambda a: f"runs/{a.kind}", save=lambda a: f"weights/{a.kind}.safetensors",
                            skip=("preprocess",), preprocess=lambda a: PreprocessCfg(student_view=a.student_view))


if __name__ == "__main__":
    rc = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun, leave without running C++ static destructors: gloo's threads sometimes abort
        # there ("terminate called without an active exception", seen once in CI) after everything was
        # written, flushed and the process group destroyed, which turned a finished run into a failure.
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)
