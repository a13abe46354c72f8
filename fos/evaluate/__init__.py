"""fos.evaluate: the API of :mod:`fos.evaluate.protocols`, named here (its docstring becomes this package's)."""
from __future__ import annotations

from fos.evaluate.protocols import *  # noqa: F401,F403
from fos.evaluate.protocols import __doc__  # noqa: F401,E402
