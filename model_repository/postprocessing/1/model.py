"""Triton adapter for koserve's postprocessing (logic: koserve.triton_models.postprocess)."""

import triton_python_backend_utils as pb_utils

from koserve.triton_models import pb_speedups
from koserve.triton_models.models import PostprocessingModel


class TritonPythonModel(PostprocessingModel):
    pb = pb_utils


pb_speedups.install(pb_utils)  # a faster serializer for the one-string BYTES tensor of each token
