"""Search: :class:`SearchEngine`, the one search API of the CLI (``python -m fos.search``), the app and
the benchmark. A query is a cascade:

1. candidates of the category;
2. more than ``prefilter_k`` candidates: keep the ``prefilter_k`` nearest by embedding (vector store);
3. the student head on the candidates, in batches (foreground halves come cached from the library);
4. optionally the teacher re-scores the top ``rerank`` on the composite a person is shown
   (:data:`fos.composite.SHOWN`), built once and returned with the result.

:meth:`SearchEngine.search_photo` is the whole of it for a person's photo (erase the box, encode,
rank, composites): the app's one call. Scoring itself is :class:`fos.scoring.Scoring`, shared with
the evaluation.
"""
from __future__ import annotations

# the package's API lives in fos.search.engine; this file only names it
from fos.search.engine import *  # noqa: F401,F403
from fos.search.engine import __doc__  # noqa: F401,E402
