"""The errors a user can cause, in one place at the bottom of the package: every command line and the
app print them as one ``error:`` line (:func:`fos.cli.user_errors`), never as a traceback. Each
message says what was wrong and what to do. The modules that raise them re-export them by name."""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input: an image, a box or a setting; the message says what to fix."""


class DatasetError(ValueError):
    """A malformed or incomplete dataset. The message names the file and the entry."""


class WeightsError(ValueError):
    """Weights that are missing, cannot be read or do not fit the model (ours, or ImageNet's)."""


class UnknownModelError(ValueError):
    """A model name that is not registered; the message lists the registered ones."""


class LibraryError(ValueError):
    """A missing, corrupt or mismatched library, or bad library sources."""


class BackendError(RuntimeError):
    """A backend that is missing, stale or does not fit this machine; the message says how to fix it."""


USER_ERRORS: tuple[type[BaseException], ...] = (InputError, DatasetError, WeightsError, UnknownModelError,
                                                 LibraryError, BackendError, ValueError)
