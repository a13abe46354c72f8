"""Evaluation: ``python -m fos.evaluate --data DIR --model NAME [--weights DIR | --checkpoint FILE] [--json OUT]``.

S-FOSD (test set 1): Recall@1/5/10/20 per category, then averaged over categories (the paper's
protocol). R-FOSD (test set 2): mAP, mAP-20, Precision@1/5/10/20 after FOSD's aspect-ratio filter.

``--box-jitter F`` evaluates with *loose* query boxes: each box is enlarged by a seeded random
5%..F of its width and height (never shrunk, so the stored gray region stays covered). With exact
boxes, a foreground cropped to its own box has exactly the box's aspect ratio, which gives the
answer away; loose boxes are closer to what a person draws.
"""
from __future__ import annotations

# the package's API lives in fos.evaluate.protocols; this file only names it
from fos.evaluate.protocols import *  # noqa: F401,F403
from fos.evaluate.protocols import __doc__  # noqa: F401,E402
