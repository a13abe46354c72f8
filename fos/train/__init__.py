"""Training: ``python -m fos.train teacher ...`` and ``python -m fos.train student ...``.

Seeded, resumable (``<out>/last.pt`` every ``--ckpt-every`` steps and at each epoch end; a rerun with
the same ``--out`` continues where it stopped), with a progress bar and ``<out>/log.jsonl``.
"""
from __future__ import annotations

from fos.train.loop import fit

__all__ = ["fit"]
