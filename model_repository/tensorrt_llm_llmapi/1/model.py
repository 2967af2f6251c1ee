"""The engine step on TensorRT-LLM's LLM API (PyTorch backend) behind NVIDIA's ``tensorrt_llm`` tensor interface.

Thin adapter: the logic lives in :mod:`koserve.llmapi_engine` (settings come from config.pbtxt ``parameters``).
"""

import triton_python_backend_utils as pb_utils

from koserve.llmapi_engine.model import LlmApiEngineModel


class TritonPythonModel:
    def initialize(self, args):
        self.model = LlmApiEngineModel(pb_utils)
        self.model.initialize(args)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
