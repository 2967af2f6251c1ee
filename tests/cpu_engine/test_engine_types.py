"""Word lists, request validation, Triton input parsing and output tensor shapes (no model, no server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from koserve.errors import ConfigError, InvalidRequestError
from koserve.cpu_engine import EngineOutput, EngineRequest, EngineSettings, FinishReason
from koserve.cpu_engine.triton import output_arrays, parse_triton_request
from koserve.text.stop_words import parse_word_list, to_word_list


def test_word_list_round_trip_and_padding():
    words = [[5, 6], [7], [8, 9, 10]]
    arr = to_word_list(words)
    assert arr.dtype == np.int32 and arr.shape == (2, 6)
    assert arr[1].tolist() == [2, 3, 6, -1, -1, -1]
    assert parse_word_list(arr) == words
    assert parse_word_list(arr[None]) == words  # [1, 2, N] as the ensemble sends it
    assert parse_word_list(np.array([[0], [-1]], dtype=np.int32)) == []  # "no words" padding


@pytest.mark.parametrize(
    "arr, needle",
    [
        (np.zeros((3, 4), np.int32), "shape [2, N]"),
        (np.array([[1, 2], [3, -1]], np.int32), "offsets must increase within [1, 2]"),
        (np.array([[1.0, 2.0], [1.0, 2.0]], np.float32), "integers"),
    ],
)
def test_word_list_errors(arr, needle):
    with pytest.raises(InvalidRequestError, match=None) as info:
        parse_word_list(arr, "stop_words_list")
    assert needle in str(info.value) and "stop_words_list" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(input_ids=()), "input_ids is empty"),
        (dict(max_new_tokens=0), "request_output_len must be >= 1, got 0"),
        (dict(temperature=-0.5), "temperature must be >= 0"),
        (dict(top_k=-1), "runtime_top_k must be >= 0"),
        (dict(top_p=1.5), "runtime_top_p must be in [0, 1]"),
        (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
        (dict(min_tokens=-1), "min_tokens must be >= 0"),
    ],
)
def test_engine_request_validation(kwargs, needle):
    base = dict(input_ids=(1, 2), max_new_tokens=4)
    base.update(kwargs)
    with pytest.raises(InvalidRequestError) as info:
        EngineRequest(**base)
    assert needle in str(info.value)


def test_greedy_rules_follow_tensorrt_llm():
    r = lambda **kw: EngineRequest(input_ids=(1,), max_new_tokens=1, **kw)  # noqa: E731
    assert r().greedy  # top_k == 0 and top_p == 0: greedy (TensorRT-LLM's default)
    assert r(temperature=0.0, top_k=50).greedy
    assert r(top_k=1, top_p=0.9).greedy
    assert not r(top_k=50).greedy
    assert not r(top_p=0.9).greedy


SETTINGS = EngineSettings(mode="replay", tokenizer_dir="/x", max_input_len=16, max_seq_len=64)


def _get(**tensors):
    return lambda name: tensors.get(name)


def _base(**extra):
    t = dict(
        input_ids=np.array([[11, 12, 13]], np.int32),
        input_lengths=np.array([3], np.int32),
        request_output_len=np.array([8], np.int32),
    )
    t.update(extra)
    return t


def test_parse_triton_request_full():
    req = parse_triton_request(
        _get(
            **_base(
                end_id=np.array([7], np.int32),
                stop_words_list=to_word_list([[1, 2]])[None],
                bad_words_list=to_word_list([[3]])[None],
                streaming=np.array([True]),
                temperature=np.array([0.7], np.float32),
                runtime_top_k=np.array([40], np.int32),
                runtime_top_p=np.array([0.9], np.float32),
                seed=np.array([2**63 + 5], np.uint64),
                exclude_input_in_output=np.array([False]),
                return_log_probs=np.array([True]),
                min_tokens=np.array([2], np.int32),
                beam_width=np.array([1], np.int32),
            )
        ),
        SETTINGS,
        default_end_ids=(100, 101),
        request_id="r1",
    )
    assert req.input_ids == (11, 12, 13) and req.max_new_tokens == 8
    assert req.end_ids == (7,)  # an explicit end_id replaces the profile's, as in the C++ backend
    assert req.stop_words == ((1, 2),) and req.bad_words == ((3,),)
    assert req.streaming and not req.exclude_input_in_output and req.return_log_probs
    assert (req.top_k, round(req.top_p, 5), round(req.temperature, 5)) == (40, 0.9, 0.7)
    assert req.seed == 2**63 + 5 and req.min_tokens == 2 and req.request_id == "r1"


def test_parse_triton_request_defaults():
    req = parse_triton_request(_get(**_base()), SETTINGS, default_end_ids=(100, 101))
    assert req.end_ids == (100, 101)
    assert not req.streaming and req.exclude_input_in_output and req.greedy and req.seed == 0


def test_output_len_clamped_to_max_seq_len():
    ids = np.arange(1, 17, dtype=np.int32)[None]
    req = parse_triton_request(
        _get(**_base(input_ids=ids, input_lengths=np.array([16], np.int32),
                     request_output_len=np.array([63], np.int32))),
        SETTINGS,
    )
    assert req.max_new_tokens == 64 - 16


@pytest.mark.parametrize(
    "extra, needle",
    [
        (dict(input_ids=np.arange(1, 18, dtype=np.int32)[None], input_lengths=np.array([17], np.int32)),
         "input length 17 exceeds the engine's max_input_len 16"),
        (dict(request_output_len=np.array([0], np.int32)), "request_output_len must be in [1, 63]"),
        (dict(request_output_len=np.array([64], np.int32)), "got 64"),
        (dict(input_ids=np.array([[1, 2], [3, 4]], np.int32)), "batch size 2"),
        (dict(input_ids=np.array([[1.0, 2.0]], np.float32)), "input_ids has dtype float32"),
        (dict(input_lengths=np.array([9], np.int32)), "input_lengths is 9 but input_ids holds 3"),
        (dict(end_id=np.array([1, 2], np.int32)), "end_id must hold exactly one value"),
        (dict(temperature=np.array([1], np.int32)), "temperature has dtype int32"),
        (dict(temperature=np.array([-1.0], np.float32)), "temperature must be >= 0"),
        (dict(runtime_top_p=np.array([np.nan], np.float32)), "runtime_top_p must be a finite number"),
        (dict(beam_width=np.array([4], np.int32)), "beam_width=4 is not supported"),
        (dict(stop_words_list=np.zeros((1, 3, 2), np.int32)), "stop_words_list must have shape [2, N]"),
    ],
)
def test_parse_triton_request_errors(extra, needle):
    with pytest.raises(InvalidRequestError) as info:
        parse_triton_request(_get(**_base(**extra)), SETTINGS)
    assert needle in str(info.value)


def test_missing_required_inputs():
    with pytest.raises(InvalidRequestError, match="input_ids is required"):
        parse_triton_request(_get(), SETTINGS)
    t = _base()
    del t["request_output_len"]
    with pytest.raises(InvalidRequestError, match="request_output_len is required"):
        parse_triton_request(_get(**t), SETTINGS)


def test_output_arrays_shapes_like_the_cpp_backend():
    stream = EngineRequest(input_ids=(1, 2, 3), max_new_tokens=4, streaming=True, exclude_input_in_output=False)
    a = output_arrays(stream, EngineOutput(token_ids=[9]))
    assert a["output_ids"].shape == (1, 1, 1) and a["output_ids"].dtype == np.int32
    assert a["sequence_length"].tolist() == [[1]]  # streaming never repeats the prompt
    assert "cum_log_probs" not in a and "output_log_probs" not in a

    whole = EngineRequest(input_ids=(1, 2, 3), max_new_tokens=4, exclude_input_in_output=False,
                          return_log_probs=True)
    a = output_arrays(whole, EngineOutput(token_ids=[9, 8], log_probs=[-0.5, -1.0], cum_log_prob=-1.5,
                                          finished=True, finish_reason=FinishReason.LENGTH))
    assert a["output_ids"].tolist() == [[[1, 2, 3, 9, 8]]] and a["sequence_length"].tolist() == [[5]]
    assert a["output_log_probs"].shape == (1, 1, 2) and a["cum_log_probs"].tolist() == [[-1.5]]

    empty = output_arrays(stream, EngineOutput(finished=True, finish_reason=FinishReason.END_ID))
    assert empty["output_ids"].shape == (1, 1, 0) and empty["sequence_length"].tolist() == [[0]]


def test_settings_from_parameters():
    s = EngineSettings.from_parameters(
        {"mode": "replay", "tokenizer_dir": "/t", "replay_delay_ms": "2.5", "max_batch_size": "16",
         "end_ids": "128009, 128001", "exclude_input_in_output": "false", "gpt_model_type": "x"}
    )
    assert s.mode == "replay" and s.replay_delay_ms == 2.5 and s.max_batch_size == 16
    assert s.default_end_ids() == (128009, 128001) and s.exclude_input_in_output is False
    assert s.extra == {"gpt_model_type": "x"}
    with pytest.raises(ConfigError, match="mode must be 'hf' or 'replay'"):
        EngineSettings.from_parameters({"mode": "gpu"})
    with pytest.raises(ConfigError, match="model_dir is required in hf mode"):
        EngineSettings.from_parameters({"mode": "hf"})
    with pytest.raises(ConfigError, match="max_batch_size has an invalid value"):
        EngineSettings.from_parameters({"mode": "replay", "tokenizer_dir": "/t", "max_batch_size": "many"})
    with pytest.raises(ConfigError, match=r"max_input_len \(64\) must be smaller than max_seq_len \(64\)"):
        EngineSettings.from_parameters({"mode": "replay", "tokenizer_dir": "/t", "max_input_len": "64",
                                        "max_seq_len": "64"})


def test_profile_end_ids():
    import koserve.profiles

    path = Path(koserve.profiles.__file__).parent / "data" / "akallama-70b.yaml"
    s = EngineSettings(mode="replay", tokenizer_dir="/t", profile_file=str(path))
    assert s.default_end_ids() == (128009, 128001)  # Llama-3 instruct stops at <|eot_id|> and <|end_of_text|>


def test_streaming_refused_when_not_decoupled_as_the_cpp_backend():
    get = _get(**_base(streaming=np.array([True])))
    assert parse_triton_request(get, SETTINGS, decoupled=True).streaming
    with pytest.raises(InvalidRequestError, match="Streaming is only supported if model is deployed using decoupled"):
        parse_triton_request(get, SETTINGS, decoupled=False)
    assert not parse_triton_request(_get(**_base(streaming=np.array([False]))), SETTINGS, decoupled=False).streaming


def test_inputs_the_cpp_backend_ignores_for_a_decoder_only_model_are_ignored():
    """What NVIDIA's end_to_end_test.py and preprocessing send (decoder_input_ids [[pad]], an empty [1, 0]
    embedding bias, prompt table extra ids without a table) changes nothing."""
    from koserve.cpu_engine.triton import IGNORED_INPUTS

    plain = parse_triton_request(_get(**_base()), SETTINGS)
    extra = dict(
        decoder_input_ids=np.array([[0]], np.int32), decoder_input_lengths=np.array([1], np.int32),
        embedding_bias=np.zeros((1, 0), np.float32), prompt_table_extra_ids=np.zeros((1, 3), np.uint64),
        prompt_vocab_size=np.array([7], np.int32), runtime_top_p_min=np.array([0.5], np.float32),
        runtime_top_p_reset_ids=np.array([3], np.int32), runtime_top_p_decay=np.array([1.0], np.float32),
        early_stopping=np.array([True]), len_penalty=np.array([0.5], np.float32),
        beam_search_diversity_rate=np.array([0.5], np.float32),
        draft_logits=np.zeros((1, 0, 0), np.float32), draft_acceptance_threshold=np.array([0.3], np.float32),
        return_perf_metrics=np.array([False]), return_num_input_tokens=np.array([False]),
    )
    assert set(IGNORED_INPUTS) <= set(extra)
    assert parse_triton_request(_get(**_base(**extra)), SETTINGS) == plain


@pytest.mark.parametrize(
    "name, value",
    [
        ("embedding_bias", np.ones((1, 5), np.float32)),
        ("prompt_embedding_table", np.ones((1, 2, 4), np.float16)),
        ("lora_task_id", np.array([3], np.uint64)),
        ("lora_weights", np.ones((1, 2, 4), np.float16)),
        ("encoder_input_features", np.ones((1, 2, 4), np.float16)),
        ("draft_input_ids", np.array([[5, 6]], np.int32)),
        ("lookahead_window_size", np.array([[4]], np.int32)),
        ("retention_token_range_starts", np.array([[0]], np.int32)),
        ("context_phase_params", np.ones((1, 8), np.uint8)),
        ("mrope_position_deltas", np.array([[1]], np.int64)),
    ],
)
def test_declared_but_unsupported_inputs_refused_by_name(name, value):
    with pytest.raises(InvalidRequestError, match=f"^{name} is not supported by the CPU engine stand-in"):
        parse_triton_request(_get(**_base(**{name: value})), SETTINGS)


@pytest.mark.parametrize(
    "name, value, needle",
    [
        ("return_perf_metrics", np.array([True]), "return_perf_metrics=True is not supported"),
        ("return_num_output_tokens", np.array([True]), "return_num_output_tokens=True is not supported"),
        ("runtime_top_p_decay", np.array([0.5], np.float32), "runtime_top_p_decay=0.5 is not supported"),
        ("num_return_sequences", np.array([2], np.int32), "num_return_sequences=2 is not supported"),
    ],
)
def test_unsupported_unless_off(name, value, needle):
    with pytest.raises(InvalidRequestError, match=needle):
        parse_triton_request(_get(**_base(**{name: value})), SETTINGS)
