"""Foreground library on disk: ``python -m fos.library build|add|info --src SRC --out LIB``.

The student's foreground encoder runs once per item (batched); the library stores, per item, the
L2-normalized embedding (prefilter) and the head-ready feature map (the foreground half of the head's
first conv, so a query only adds the background half), both float16, plus a copy of the cutout (and
its mask) so that composites and the teacher rerank need nothing outside the library.

Layout::

    LIB/library.json          weights hash, model config, dims, item count, shards
    LIB/shards/NNNNN.json     items of a shard: id, category, file, mask, source, width, height, sha256
    LIB/shards/NNNNN.emb.npy  (n, E) float16      LIB/shards/NNNNN.fmap.npy  (n, D, a, a) float16
    LIB/files/<sha256>.<ext>  the cutouts (and masks), by content

``build`` and ``add`` stage their work in ``LIB/.pending/`` one batch at a time and commit it only at
the end, so an interrupted run resumes from its last batch (rerun the same command) and a failed run
leaves the library as it was. Nothing here deletes a library.

Sources (same for build and add): a folder of cutouts organised by category folders
(``SRC/<category>/<name>.png``: PNG with alpha, or object on white with an optional
``<name>.mask.png``), a CSV (header ``path,category[,mask]``) or JSON list of ``{"path", "category"}``,
or a FOSD-format dataset root (``train/fg`` and/or ``test/fg``; items keep their FOSD names as ids).

The package has three parts that point one way: :mod:`fos.library.format` (the files and their
reader), :mod:`fos.library.sources` (where cutouts come from) and :mod:`fos.library.build` (the
builder, the only part that runs a network). Importing ``fos.library`` loads the reader alone.
``grow`` (cutouts from labelled photos) is :mod:`fos.library.grow`, built on the localizer.
"""
from __future__ import annotations

from fos.library.format import Library, LibraryError

__all__ = ["Library", "LibraryError"]
