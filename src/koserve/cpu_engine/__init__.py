"""CPU stand-in for the TensorRT-LLM engine (the ``tensorrt_llm`` Triton model on machines without a GPU).

Two engines share one scheduler (:mod:`.scheduler`): :class:`HFEngine` runs a Hugging Face Llama checkpoint with
transformers + torch; :class:`ReplayEngine` emits a fixed Korean token sequence at a fixed pace (a deterministic
test double for the GPU engine's timing). :mod:`.triton` adapts them to NVIDIA's ``tensorrt_llm`` tensor interface.
``hf`` / ``replay`` import torch / tokenizers lazily.
"""

from koserve.cpu_engine.scheduler import Engine, EngineBusyError, EngineClosedError, RequestHandle
from koserve.cpu_engine.settings import EngineSettings, create_engine
from koserve.cpu_engine.types import (
    EngineOutput,
    EngineRequest,
    FinishReason,
)

__all__ = [
    "Engine",
    "EngineBusyError",
    "EngineClosedError",
    "EngineOutput",
    "EngineRequest",
    "EngineSettings",
    "FinishReason",
    "RequestHandle",
    "create_engine",
]


def __getattr__(name: str):
    if name == "HFEngine":
        from koserve.cpu_engine.hf import HFEngine

        return HFEngine
    if name in ("ReplayEngine", "load_replay_tokens", "BUILTIN_REPLAY_TEXT"):
        from koserve.cpu_engine import replay

        return getattr(replay, name)
    raise AttributeError(name)
