"""Erase what is in a box: SPL inpainting with learned semantic priors, and OpenCV's baselines.

``python -m fos.inpaint --image IN --box x1,y1,x2,y2 --out OUT [--method spl|telea|ns]``;
training: :mod:`fos.inpaint.train`; evaluation: :mod:`fos.inpaint.evaluate`.
"""
