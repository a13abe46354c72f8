"""Builds deployable graphs: ONNX (:mod:`fos.export.onnx`, with a parity check against torch) and
TensorRT engines (:mod:`fos.export.trt`). Sits above :mod:`fos.runtime`, which only runs them."""
