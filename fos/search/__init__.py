"""fos.search: the API of :mod:`fos.search.engine`, named here (its docstring becomes this package's)."""
from __future__ import annotations

from fos.search.engine import *  # noqa: F401,F403
from fos.search.engine import __doc__  # noqa: F401,E402
