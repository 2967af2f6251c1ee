"""The engine step on TensorRT-LLM's LLM API (PyTorch backend), behind NVIDIA's ``tensorrt_llm`` tensor contract.

``koserve repo render --engine-backend pytorch`` renders ``model_repository/tensorrt_llm_llmapi`` as the model
``tensorrt_llm``: ids in, streamed ``output_ids`` / ``sequence_length`` out, exactly the C++ backend's inputs and
outputs, so preprocessing, postprocessing, the ensemble, the BLS and every client are unchanged.

- :mod:`.request`: the input tensors → :class:`GenerationRequest` (errors name the input and the limit);
- :mod:`.sampling`: a request → ``SamplingParams`` keyword arguments, the settings → ``LLM()`` keyword arguments;
- :mod:`.tracker`: the LLM API's cumulative ``token_ids`` → the C++ backend's chunks (end ids, stop words, length);
- :mod:`.runtime`: which ``LLM`` runs: ``tensorrt_llm.LLM`` (production) or, only when the rendered parameter
  ``llm_runtime`` says ``cpu_stand_in``, the CPU object of :mod:`koserve.cpu_engine.llmapi` (imported lazily then);
- :mod:`.model`: the Triton python-backend edge (``model_repository/tensorrt_llm_llmapi/1/model.py``).

Every LLM API fact used here is cited in ``tests/engines/data/trtllm-1.2.1-llmapi-contract.json``.
"""

from koserve.llmapi_engine.request import GenerationRequest, EngineLimits, parse_request
from koserve.llmapi_engine.tracker import Chunk, FinishReason, OutputTracker

__all__ = ["Chunk", "EngineLimits", "FinishReason", "GenerationRequest", "OutputTracker", "parse_request"]
