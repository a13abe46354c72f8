"""What every command line shares: argument types that reject bad values with a usage message, and one
wrapper that turns the errors a user can cause into one ``error:`` line (exit 2), never a traceback."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

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
    import os

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


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=nonneg_int, default=0,
                   help="CPU threads for torch and onnxruntime (0: FOS_THREADS, else half the cores)")


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions whose message is meant for the user (imported late: they live in many modules)."""
    from fos.checkpoint import WeightsError
    from fos.data import DatasetError
    from fos.library import LibraryError
    from fos.preprocess import InputError
    from fos.registry import UnknownModelError
    from fos.runtime import BackendError

    return (InputError, LibraryError, DatasetError, WeightsError, BackendError, UnknownModelError, ValueError)


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
