"""fos.runtime: the API of :mod:`fos.runtime.backends`, named here (its docstring becomes this package's)."""
from __future__ import annotations

from fos.runtime.backends import *  # noqa: F401,F403
from fos.runtime.backends import __doc__  # noqa: F401,E402
