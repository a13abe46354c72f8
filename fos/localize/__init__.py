"""Weakly supervised object localization: CAM and DA-WSOL (Zhu et al., CVPR 2022) turn photos with only a
category into boxes and cutouts, so that the foreground library grows without hand-made masks.

* :mod:`fos.data.photos` (shared with inpainting): photos with image-level labels (and, for evaluation
  only, boxes and masks) from FOSD-layout roots that have ``photos/`` (msrc-fos, or ``from-coco`` output);
* :mod:`fos.localize.model`: the CAM network and DA-WSOL's target sample assigner and losses;
* :mod:`fos.localize.metrics`: MaxBoxAccV2, PxAP, top-1 localization, mask IoU (pure functions);
* :mod:`fos.localize.masks`: box -> mask (thresholded CAM, GrabCut, u2netp salient object);
* :mod:`fos.localize.infer`: :class:`~fos.localize.infer.Localizer`, photo -> box, score, mask, cutout;
* :mod:`fos.library.grow`: labelled photos -> library cutouts (``python -m fos.library grow``);
* ``python -m fos.localize.train``, ``python -m fos.localize.evaluate``, ``python -m fos.localize``.
"""
