"""Keyword arguments for the LLM API: ``SamplingParams(**sampling_kwargs(request))`` and ``LLM(**llm_kwargs(s))``.

Field names are TensorRT-LLM 1.2.1's (``tensorrt_llm/sampling_params.py``, ``tensorrt_llm/llmapi/llm_args.py``;
cited in tests/engines/data/trtllm-1.2.1-llmapi-contract.json, which a test checks these names against).
"""

from __future__ import annotations

from dataclasses import dataclass

from koserve.guided.spec import GuidedDecoding
from koserve.llmapi_engine.request import GenerationRequest

# SamplingParams fields sent only when the client sent the matching input (None: the runtime's default, which is
# the C++ backend's default too: both fill the same executor SamplingConfig).
_OPTIONAL = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "seed": "seed",
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "min_tokens": "min_tokens",
}


# NVIDIA's request guide types (the C++ contract's guided_decoding_guide_type) -> GuidedDecodingParams fields
GUIDED_DECODING_FIELDS = {"json_schema": "json", "json": "json_object", "regex": "regex", "ebnf_grammar": "grammar"}
GUIDED_DECODING_BACKEND = "xgrammar"


def guided_decoding_kwargs(guided: GuidedDecoding) -> dict:
    """``GuidedDecodingParams`` arguments for one guide: one field set (upstream allows only one)."""
    field = GUIDED_DECODING_FIELDS[guided.guide_type]
    return {field: True} if field == "json_object" else {field: guided.guide}


def sampling_kwargs(request: GenerationRequest, guided_decoding_params_cls=None) -> dict:
    """``SamplingParams`` arguments for one request.

    Stop words are not given to the LLM API: its ``stop_token_ids`` take single tokens only, ``stop`` takes strings
    (tokenized by the tokenizer this step skips), and on a stop it drops the stop tokens from ``token_ids`` unless
    ``include_stop_str_in_output``; koserve's contract emits them. :class:`~koserve.llmapi_engine.tracker.
    OutputTracker` matches stop words and end ids on the streamed ids and aborts the request instead.
    A guide becomes ``guided_decoding=guided_decoding_params_cls(...)`` (``GuidedDecodingParams``).
    """
    kwargs: dict = {
        "max_tokens": request.max_tokens,
        "end_id": request.end_ids[0],
        "pad_id": request.end_ids[0] if request.pad_id is None else request.pad_id,
        "detokenize": False,  # ids out; postprocessing detokenizes
        "exclude_input_from_output": True,  # the step prepends the prompt itself when asked
        "n": 1,
    }
    if request.bad_token_ids:
        kwargs["bad_token_ids"] = list(request.bad_token_ids)
    if request.return_log_probs:
        kwargs["logprobs"] = 1  # the sampled token's log probability (PyTorch backend: return_log_probs)
    for field, attr in _OPTIONAL.items():
        value = getattr(request, attr)
        if value is not None:
            kwargs[field] = value
    if request.guided is not None:
        if guided_decoding_params_cls is None:
            raise ValueError("a guided request needs the runtime's GuidedDecodingParams class")
        kwargs["guided_decoding"] = guided_decoding_params_cls(**guided_decoding_kwargs(request.guided))
    return kwargs


@dataclass(frozen=True)
class LlmSettings:
    """How the LLM is built (config.pbtxt ``parameters``, rendered by ``koserve repo render``)."""

    model_dir: str
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_batch_size: int = 64
    max_num_tokens: int = 8192
    max_input_len: int = 4095
    max_seq_len: int = 4096
    kv_cache_free_gpu_memory_fraction: float = 0.9
    enable_block_reuse: bool = True
    guided_decoding: bool = False  # LLM(guided_decoding_backend="xgrammar")
    tokenizer_dir: str = ""  # preprocessing's tokenizer: the LLM's with guided decoding


def llm_kwargs(settings: LlmSettings, kv_cache_config_cls) -> dict:
    """``LLM()`` arguments: the PyTorch backend on the checkpoint, no tokenizer (ids in, ids out).

    With guided decoding the LLM loads a tokenizer (``skip_tokenizer_init=False``; ``tokenizer``: preprocessing's,
    else the checkpoint's): TensorRT-LLM builds xgrammar's tokenizer info from it and asserts one exists
    (``py_executor_creator.py`` ``get_guided_decoding_config``). Requests still skip detokenization
    (``detokenize=False``).
    """
    kwargs = {
        "model": settings.model_dir,
        "backend": "pytorch",
        "skip_tokenizer_init": not settings.guided_decoding,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "pipeline_parallel_size": settings.pipeline_parallel_size,
        "max_batch_size": settings.max_batch_size,
        "max_num_tokens": settings.max_num_tokens,
        "max_input_len": settings.max_input_len,  # the LLM API's default is 1024
        "max_seq_len": settings.max_seq_len,
        "kv_cache_config": kv_cache_config_cls(
            enable_block_reuse=settings.enable_block_reuse,
            free_gpu_memory_fraction=settings.kv_cache_free_gpu_memory_fraction,
        ),
    }
    if settings.guided_decoding:
        kwargs["guided_decoding_backend"] = GUIDED_DECODING_BACKEND
        if settings.tokenizer_dir:
            kwargs["tokenizer"] = settings.tokenizer_dir
    return kwargs
