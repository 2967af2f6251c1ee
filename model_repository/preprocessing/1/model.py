"""Triton adapter for koserve's preprocessing (logic: koserve.serving.preprocess)."""

import triton_python_backend_utils as pb_utils

from koserve.serving.models import PreprocessingModel


class TritonPythonModel(PreprocessingModel):
    pb = pb_utils
