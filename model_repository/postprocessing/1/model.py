"""Triton adapter for koserve's postprocessing (logic: koserve.serving.postprocess)."""

import triton_python_backend_utils as pb_utils

from koserve.serving.models import PostprocessingModel


class TritonPythonModel(PostprocessingModel):
    pb = pb_utils
