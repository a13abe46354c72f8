"""Readers for FOSD-format datasets (S-FOSD train / test set 1, R-FOSD test set 2).

``root`` is always the dataset root: the folder that holds ``train/`` and/or ``test/``. Every reader
validates what it loads; a :class:`DatasetError` names the file, the entry and what is wrong.
"""
from __future__ import annotations

# the package's API lives in fos.data.fosd; this file only names it
from fos.data.fosd import *  # noqa: F401,F403
from fos.data.fosd import __doc__  # noqa: F401,E402
