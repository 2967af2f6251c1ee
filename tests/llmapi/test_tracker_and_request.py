"""The engine step's pure parts: input tensors → GenerationRequest, the LLM API's cumulative ids → the C++
backend's chunks (end ids unemitted, stop words emitted then the end, length), response tensors."""

from __future__ import annotations

import numpy as np
import pytest

from koserve.errors import ConfigError, InvalidRequestError
from koserve.llmapi_engine.model import response_arrays, settings_from_parameters
from koserve.llmapi_engine.request import EngineLimits, GenerationRequest, parse_request
from koserve.llmapi_engine.tracker import FinishReason, OutputTracker
from koserve.text.stop_words import to_word_list

LIMITS = EngineLimits(max_input_len=8, max_seq_len=16, vocab_size=100, default_end_ids=(2, 7))


def _get(**tensors):
    arrays = {k: np.asarray(v) for k, v in tensors.items()}
    return arrays.get


def _request(**options) -> GenerationRequest:
    base = dict(prompt_token_ids=(1, 2, 3), max_tokens=6, end_ids=(2,), streaming=True)
    return GenerationRequest(**{**base, **options})


def test_end_id_ends_the_sequence_unemitted():
    tracker = OutputTracker(_request(end_ids=(9, 7)))
    first = tracker.update([4, 5])
    assert first.token_ids == [4, 5] and not first.finished
    last = tracker.update([4, 5, 7, 8])  # the stand-in may run past an end id before the abort lands
    assert last.token_ids == [] and last.finished and last.finish_reason is FinishReason.END_ID
    assert tracker.update([4, 5, 7, 8, 9]) is None


def test_stop_word_is_emitted_then_ends_even_across_responses():
    tracker = OutputTracker(_request(stop_words=((5, 6),)))
    assert tracker.update([4, 5]).token_ids == [4, 5]
    chunk = tracker.update([4, 5, 6, 11])
    assert chunk.token_ids == [6] and chunk.finish_reason is FinishReason.STOP_WORDS


def test_length_and_engine_reasons():
    tracker = OutputTracker(_request(max_tokens=2))
    assert tracker.update([4, 5, 6]).finish_reason is FinishReason.LENGTH
    tracker = OutputTracker(_request())
    assert tracker.update([4], engine_finish_reason="cancelled", engine_finished=True).finish_reason \
        is FinishReason.CANCELLED
    tracker = OutputTracker(_request())
    chunk = tracker.update([4], engine_finish_reason="timeout", engine_finished=True)
    assert chunk.finish_reason is FinishReason.ERROR and "timeout" in chunk.error


def test_not_streaming_sends_one_chunk_with_the_prompt_when_asked():
    request = _request(streaming=False, exclude_input_in_output=False)
    tracker = OutputTracker(request)
    assert tracker.update([4]) is None
    chunk = tracker.update([4, 5], engine_finish_reason="length", engine_finished=True)
    arrays = response_arrays(request, chunk)
    assert arrays["output_ids"].tolist() == [[[1, 2, 3, 4, 5]]] and arrays["sequence_length"].tolist() == [[5]]


def test_log_probs_from_either_upstream_form():
    class Logprob:
        def __init__(self, value):
            self.logprob = value

    request = _request(return_log_probs=True)
    tracker = OutputTracker(request)
    chunk = tracker.update([4, 5], logprobs=[-0.5, {5: Logprob(-1.0), 8: Logprob(-0.1)}])
    assert chunk.log_probs == [-0.5, -1.0] and chunk.cum_log_prob == -1.5
    arrays = response_arrays(request, chunk)
    assert arrays["output_log_probs"].shape == (1, 1, 2) and arrays["cum_log_probs"].tolist() == [[-1.5]]


def test_end_from_outside_sends_one_final_chunk():
    tracker = OutputTracker(_request())
    tracker.update([4])
    final = tracker.end(FinishReason.CANCELLED)
    assert final.finished and final.token_ids == [] and tracker.end(FinishReason.CANCELLED) is None


def test_parse_request_follows_the_cpp_backend():
    words = to_word_list([[5, 6], [8]])
    req = parse_request(_get(input_ids=[[1, 2, 3]], input_lengths=[3], request_output_len=[15], streaming=[True],
                             stop_words_list=words, bad_words_list=to_word_list([[9]]), seed=np.uint64([7])),
                        LIMITS, request_id="r1")
    assert req.max_tokens == 16 - 3  # cut to max_seq_len - input length
    assert req.end_ids == (2, 7) and req.stop_words == ((5, 6), (8,)) and req.bad_token_ids == (9,)
    assert req.seed == 7 and req.temperature is None and req.request_id == "r1"


@pytest.mark.parametrize("tensors, message", [
    (dict(input_ids=[[1, 200]], request_output_len=[3]), r"outside the vocabulary \[0, 100\)"),
    (dict(input_ids=[list(range(1, 10))], request_output_len=[3]), "exceeds the engine's max_input_len 8"),
    (dict(input_ids=[[1]], request_output_len=[16]), r"request_output_len must be in \[1, 15\]"),
    (dict(input_ids=[[1]], request_output_len=[3], beam_width=[2]), "beam_width=2 is not supported by the LLM API"),
    (dict(input_ids=[[1]], request_output_len=[3], lora_task_id=np.uint64([1])), "lora_task_id is not supported"),
    (dict(input_ids=[[1]], request_output_len=[3], bad_words_list=to_word_list([[9, 10]])),
     "bad_words_list holds a word of 2 tokens"),
    (dict(input_ids=[[1]], request_output_len=[3], runtime_top_p=np.float32([1.5])), r"runtime_top_p must be in"),
    (dict(input_ids=[[1]], request_output_len=[3], streaming=[True]), "only supported if model is deployed using "
                                                                      "decoupled mode"),
])
def test_bad_input_is_refused_by_name(tensors, message):
    decoupled = "streaming" not in tensors
    with pytest.raises(InvalidRequestError, match=message):
        parse_request(_get(**tensors), LIMITS, decoupled=decoupled)


def test_settings_from_rendered_parameters():
    settings, limits, options = settings_from_parameters({
        "llm_runtime": "tensorrt_llm", "model_dir": "/ckpt", "tensor_parallel_size": "4", "max_seq_len": "8192",
        "max_input_len": "4096", "enable_kv_cache_reuse": "false", "end_ids": "128009 128001", "vocab_size": "128256",
        "cancellation_check_period_ms": "20"})
    assert settings.tensor_parallel_size == 4 and settings.enable_block_reuse is False
    assert limits.default_end_ids == (128009, 128001) and limits.max_input_len == 4096
    assert options == {"llm_runtime": "tensorrt_llm", "cancel_check_s": 0.02}


GUIDED_LIMITS = EngineLimits(max_input_len=8, max_seq_len=16, vocab_size=100, default_end_ids=(2,),
                             guided_decoding=True)


def _guided_tensors(guide_type, guide=None):
    tensors = dict(input_ids=[[1]], request_output_len=[3],
                   guided_decoding_guide_type=np.array([[guide_type.encode()]], dtype=object))
    if guide is not None:
        tensors["guided_decoding_guide"] = np.array([[guide.encode()]], dtype=object)
    return tensors


def test_guided_inputs_are_parsed_by_nvidia_names():
    req = parse_request(_get(**_guided_tensors("json_schema", '{"type": "integer"}')), GUIDED_LIMITS)
    assert (req.guided.guide_type, req.guided.guide) == ("json_schema", '{"type": "integer"}')
    assert parse_request(_get(**_guided_tensors("json")), GUIDED_LIMITS).guided.guide_type == "json"
    assert parse_request(_get(input_ids=[[1]], request_output_len=[3]), GUIDED_LIMITS).guided is None


@pytest.mark.parametrize("guide_type, guide, message", [
    ("yaml", "a: 1", "'yaml' is not supported; use one of json, json_schema, regex, ebnf_grammar"),
    ("json_schema", "{not json", "guided_decoding_guide is not valid JSON"),
    ("json_schema", '{"type": "integer", "multipleOf": 3}', "keyword 'multipleOf' at # is not supported"),
    ("json_schema", '{"enum": ["' + "x" * 40000 + '"]}', "bytes; the limit is 32768 bytes"),
    ("regex", "", "needs a guided_decoding_guide"),
])
def test_bad_guides_are_refused_by_name(guide_type, guide, message):
    with pytest.raises(InvalidRequestError, match=message):
        parse_request(_get(**_guided_tensors(guide_type, guide)), GUIDED_LIMITS)


def test_guided_request_refused_when_rendered_without_guided_decoding():
    with pytest.raises(InvalidRequestError, match="guided decoding is off .* --guided-decoding"):
        parse_request(_get(**_guided_tensors("json")), LIMITS)


def test_guided_decoding_parameter():
    settings, limits, _ = settings_from_parameters({"guided_decoding_backend": "xgrammar"})
    assert settings.guided_decoding and limits.guided_decoding
    settings, limits, _ = settings_from_parameters({"guided_decoding_backend": ""})
    assert not settings.guided_decoding and not limits.guided_decoding
    with pytest.raises(ConfigError, match="guided_decoding_backend must be 'xgrammar' or empty, got 'outlines'"):
        settings_from_parameters({"guided_decoding_backend": "outlines"})
