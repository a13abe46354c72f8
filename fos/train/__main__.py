"""``python -m fos.train teacher|student [--flags]``: every :class:`fos.config.TrainCfg` field is a flag."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict

from fos import cli
from fos.config import TrainCfg
from fos.train import __doc__ as DOC, fit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fos.train", description=DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["teacher", "student"])
    cli.add_config_args(p, TrainCfg(), ("out", "threads", "data", "amp"))
    p.add_argument("--data", action="append", default=None,
                   help=f"dataset root in FOSD layout; repeat to train on several (default {TrainCfg().data[0]})")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no mixed precision on CUDA")
    p.add_argument("--out", default=None, help="run folder for checkpoints and logs (default runs/<kind>)")
    p.add_argument("--save", default=None, help="final safetensors file (default weights/<kind>.safetensors)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")
    cli.add_threads(p)
    return p


def main(argv=None) -> int:
    names = [f for f in asdict(TrainCfg()) if f != "out"]

    def run(a) -> int:
        vals = {f: getattr(a, f) for f in names}
        vals["data"] = a.data or TrainCfg().data
        cfg = TrainCfg(out=a.out or f"runs/{a.kind}", **vals)
        fit(a.kind, cfg, a.save or f"weights/{a.kind}.safetensors", a.restart,
            command="python -m fos.train " + " ".join(argv if argv is not None else sys.argv[1:]))
        return 0

    return cli.run(run, build_parser(), argv,
                   interrupted=lambda a: f"interrupted; rerun the same command to resume from "
                                         f"{a.out or 'runs/' + a.kind}/last.pt")


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
