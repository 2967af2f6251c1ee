"""The direct engine path: koserve's pre- and post-processing in the caller's process, token ids to the engine.

:class:`EngineFrontend` (pure) turns a client request (:class:`~koserve.client.wire.WireRequest`, the one request
every target is built from) into the ``tensorrt_llm`` tensors with the code the ``tensorrt_llm_bls`` model runs
(:func:`koserve.triton_models.params.parse_generation_request`, :class:`koserve.triton_models.preprocess.Preprocessor`,
:func:`koserve.triton_models.bls.engine_tensors`) and gives each request a
:class:`~koserve.triton_models.postprocess.TextStream` (exact incremental detokenizer + stop strings).
:class:`AsyncEngineTransport` is the client transport that sends them to the engine over gRPC ``stream_infer`` and
turns ``output_ids`` into text; :class:`~koserve.client.AsyncChatClient` ``(model="engine")`` and the gateway's
``target=engine`` use it. No Python runs inside Triton per token on this path.
"""

from koserve.frontend.engine_request import DirectRequest, EngineFrontend, limits_from_model_config
from koserve.frontend.transport import AsyncEngineTransport

__all__ = ["AsyncEngineTransport", "DirectRequest", "EngineFrontend", "limits_from_model_config"]
