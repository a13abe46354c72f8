"""Referring segmentation from text supervision (TRIS, Liu et al., ICCV 2023): cut out the object a
phrase describes ("dog on the left"), trained from image-phrase pairs only.

* :mod:`fos.refer.phrases`: phrases written from instance masks (category, location, size, colour),
  their negatives, and the parser of typed phrases;
* :mod:`fos.refer.encoders`: the image and text encoders behind one interface;
* :mod:`fos.refer.model`: the response, the bidirectional prompt, the calibration, the segmenter head;
* :mod:`fos.refer.metrics`: PointM, mIoU, overall IoU, instance accuracy (pure functions);
* :mod:`fos.refer.infer`: :class:`~fos.refer.infer.Referrer`, photo + phrase -> mask, box, score, cutout;
* ``python -m fos.refer``, ``python -m fos.refer train``, ``python -m fos.refer evaluate``.
"""
