"""What every command line shares: argument types that reject bad values with a usage message, and one
wrapper that turns the errors a user can cause into one ``error:`` line (exit 2), never a traceback."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from fos.errors import USER_ERRORS
from fos.threads import set_threads


def _int(text: str, lo: int, what: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < lo:
        raise argparse.ArgumentTypeError(f"must be {what}, got {v}")
    return v


def positive_int(text: str) -> int:
    return _int(text, 1, "at least 1")


def nonneg_int(text: str) -> int:
    return _int(text, 0, "0 or more")


def int_list(text: str) -> list[int]:
    """``0,1,2`` -> [0, 1, 2]."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers such as 0,1,2, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one number")
    return vals


def positive_int_list(text: str) -> list[int]:
    """``1,8,64`` -> [1, 8, 64]; every value at least 1 (a batch or a size of 0 means nothing)."""
    vals = int_list(text)
    bad = [v for v in vals if v < 1]
    if bad:
        raise argparse.ArgumentTypeError(f"every value must be at least 1, got {','.join(map(str, bad))} in {text!r}")
    return vals


def box(text: str) -> tuple[float, float, float, float]:
    """``--box x1,y1,x2,y2`` (:func:`fos.preprocess.parse_box`), refused with a usage message."""
    from fos.preprocess import parse_box

    try:
        return parse_box(text, "--box")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= v <= 10:
        raise argparse.ArgumentTypeError(f"must be between 0 and 10, got {v}")
    return v


def write_json(path: str, obj) -> None:
    """Write a command's JSON output atomically and say where it went."""
    from fos.checkpoint import atomic_write_json

    atomic_write_json(path, obj)
    print(f"wrote {os.path.abspath(path)}")


def add_config_args(p: argparse.ArgumentParser, cfg, skip: tuple[str, ...] = ()) -> None:
    """``--field-name`` for every field of the dataclass instance ``cfg`` not in ``skip``, typed and
    defaulted by the field's value (int, float and str fields; the caller adds the others)."""
    from dataclasses import asdict

    for f, v in asdict(cfg).items():
        if f not in skip:
            p.add_argument("--" + f.replace("_", "-"), type=type(v), default=v)


def add_training_args(p: argparse.ArgumentParser, cfg, skip: tuple[str, ...], out: str, save: str) -> None:
    """What every trainer takes: a flag per field of its config ``cfg`` (but ``skip``), ``--data`` (repeat
    it for several roots), ``--out`` (the run folder, default ``out``), ``--save`` (the final weights,
    default ``save``), ``--restart`` and ``--threads``."""
    add_config_args(p, cfg, ("out", "threads", "data", *skip))
    p.add_argument("--data", action="append", default=None,
                   help=f"dataset root in FOSD layout; repeat to train on several (default {cfg.data[0]})")
    p.add_argument("--out", default=None, help=f"run folder for checkpoints and logs (default {out})")
    p.add_argument("--save", default=None, help=f"final weights (default {save})")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")
    add_threads(p)


def add_backend(p: argparse.ArgumentParser, help: str = "which runtime runs the networks (auto: the best one ready)",
                choices: tuple[str, ...] | None = None) -> None:
    """``--backend auto|torch|onnxruntime|tensorrt`` (or ``auto`` and ``choices``)."""
    from fos.config import BACKENDS

    p.add_argument("--backend", default="auto", choices=["auto", *(choices or BACKENDS)], help=help)


def run_training(prog: str, p: argparse.ArgumentParser, argv, cfg_cls, fit: Callable, out: Callable[[argparse.Namespace], str],
                 save: Callable[[argparse.Namespace], str], skip: tuple[str, ...] = (), **given) -> int:
    """The ``main`` of a trainer made with :func:`add_training_args`: its config ``cfg_cls`` from the flags
    (the fields in ``skip`` come from ``given``: functions of the parsed arguments), then
    ``fit(args)(cfg, save, restart, command=...)``. The run folder defaults to ``out(args)``, the weights
    to ``save(args)``; an interrupted run says how to resume."""
    from dataclasses import fields

    names = [f.name for f in fields(cfg_cls) if f.name not in ("out", "data", *skip)]
    command = f"python -m {prog} " + " ".join(argv if argv is not None else sys.argv[1:])

    def main(a) -> int:
        cfg = cfg_cls(out=a.out or out(a), data=a.data or cfg_cls().data, **{f: getattr(a, f) for f in names},
                      **{k: v(a) for k, v in given.items()})
        fit(a)(cfg, a.save or save(a), a.restart, command=command)
        return 0

    return run(main, p, argv, interrupted=lambda a: f"interrupted; rerun the same command to resume from "
                                                   f"{os.path.join(a.out or out(a), 'last.pt')}")


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=nonneg_int, default=0,
                   help="CPU threads for torch and onnxruntime (0: FOS_THREADS, else half the cores)")


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions whose message is meant for the user (:data:`fos.errors.USER_ERRORS`)."""
    return USER_ERRORS


def run(main: Callable[[argparse.Namespace], int], p: argparse.ArgumentParser, argv=None,
        interrupted: Callable[[argparse.Namespace], str] = lambda a: "interrupted") -> int:
    """Parse ``argv``, set logging and threads, call ``main(args)``; user errors become one line."""
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if hasattr(a, "threads"):
            set_threads(a.threads)
        return main(a)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{interrupted(a)}", file=sys.stderr)
        return 130
