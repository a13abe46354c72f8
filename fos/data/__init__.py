"""fos.data: the API of :mod:`fos.data.fosd`, named here (its docstring becomes this package's)."""
from __future__ import annotations

from fos.data.fosd import *  # noqa: F401,F403
from fos.data.fosd import __doc__  # noqa: F401,E402
