"""Triton adapter for koserve's preprocessing (logic: koserve.triton_models.preprocess)."""

import triton_python_backend_utils as pb_utils

from koserve.triton_models.models import PreprocessingModel


class TritonPythonModel(PreprocessingModel):
    pb = pb_utils
