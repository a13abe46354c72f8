"""Start-up helpers shared by the app and the benchmark: the default library, built once."""
from __future__ import annotations

import logging
import os
import shutil

from fos.examples import ASSETS
from fos.library import Library, LibraryError, write_library
from fos.runtime import Backend, get_backend

log = logging.getLogger("fos.app")


def ensure_library(weights: str = "weights", lib_dir: str = "weights/library", src: str | None = None,
                   backend: str | Backend = "auto") -> tuple[Library, Backend]:
    """Load ``lib_dir``; build it from ``src`` (default ``assets/library``) when it is missing or was
    built with other weights. The new library is built beside it and swapped in, so a failed build
    leaves the old one in place."""
    b = backend if isinstance(backend, Backend) else get_backend(backend, weights)
    src = src or os.path.join(ASSETS, "library")
    try:
        lib = Library(lib_dir)
        lib.check_weights(b.student_sha256)
        return lib, b
    except LibraryError as e:
        log.info("default library: %s; building it from %s", e, src)
    tmp = lib_dir.rstrip("/") + ".building"
    if os.path.exists(tmp) and not os.path.exists(os.path.join(tmp, ".pending")):
        shutil.rmtree(tmp)
    res = write_library(b, src, tmp)
    old = lib_dir.rstrip("/") + ".old"
    if os.path.exists(lib_dir):
        os.replace(lib_dir, old)
    os.replace(tmp, lib_dir)
    shutil.rmtree(old, ignore_errors=True)
    log.info("default library: %d items encoded with %s -> %s", res["count"], b.description, os.path.abspath(lib_dir))
    if res["failed"]:
        log.warning("default library: skipped %s", res["failed"])
    return Library(lib_dir), b
