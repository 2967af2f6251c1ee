"""CPU stand-in for the TensorRT-LLM engine: NVIDIA's ``tensorrt_llm`` tensor interface over koserve's engine.

Thin adapter: the logic lives in :mod:`koserve.cpu_engine` (settings come from config.pbtxt ``parameters``).
"""

import triton_python_backend_utils as pb_utils

from koserve.cpu_engine.triton import TritonEngineModel


class TritonPythonModel:
    def initialize(self, args):
        self.model = TritonEngineModel(pb_utils)
        self.model.initialize(args)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
