"""Sampling parameters: the profile's defaults, errors that name the field and its limit, tensor-type ranges, seeds,
and the tensors a request becomes. No server needed."""

from __future__ import annotations

import pytest

from koserve.client import ChatClient, InvalidRequestError, resolve_params
from koserve.client.errors import InvalidParameterError
from koserve.client.wire import build_request, check_wire_range
from koserve.profiles import load_profile

MSGS = [{"role": "user", "content": "안녕?"}]


def test_profile_defaults_and_overrides():
    komt = load_profile("komt-13b")
    p = resolve_params(komt, {})
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k) == (2048, 0.9, 0.7, 100)
    assert p.end_id == 2 and p.pad_id == 2
    assert p.stop_strings() == ("<|end|>", "<s>", "###")
    p = resolve_params(komt, {"max_tokens": 7, "temperature": 0.2, "stop": "끝", "top_k": None})
    assert (p.max_tokens, p.temperature, p.top_k) == (7, 0.2, 100)
    assert p.stop_strings() == ("<|end|>", "<s>", "###", "끝")
    aka = resolve_params(load_profile("akallama-70b"), {})
    assert aka.end_id == 128009 and aka.stop_strings() == ()


@pytest.mark.parametrize(
    "params, message",
    [
        ({"temperature": -0.1}, "temperature must be >= 0.0"),
        ({"top_p": 0}, "top_p must be > 0.0"),
        ({"top_p": 1.5}, "top_p must be > 0.0 and <= 1.0"),
        ({"max_tokens": 0}, "max_tokens must be between 1 and 4096"),
        ({"max_tokens": 5000}, "max_tokens must be between 1 and 4096"),
        ({"max_tokens": "10"}, "max_tokens must be an integer"),
        ({"max_tokens": True}, "max_tokens must be an integer"),
        ({"top_k": -1}, "top_k must be between 0 and 32000"),
        ({"stop": ["ok", ""]}, "stop[1] must not be empty"),
        ({"stop": [1]}, "stop[0] must be a string"),
        ({"stop": ["x"] * 33}, "at most 32"),
        ({"seed": -1}, "seed must be between 0 and"),
        ({"presence_penalty": 3}, "presence_penalty must be >= -2.0 and <= 2.0"),
        ({"temperature": float("nan")}, "finite number"),
        ({"min_tokens": 9, "max_tokens": 4}, "min_tokens (9) must not exceed max_tokens (4)"),
        ({"end_id": 32000}, "end_id must be between 0 and 31999"),
        ({"tempreature": 1}, "unknown parameter 'tempreature'"),
    ],
)
def test_bad_parameters_are_named(params, message):
    with pytest.raises(InvalidRequestError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        resolve_params(load_profile("komt-13b"), params)


@pytest.mark.parametrize(
    "params, param, message",
    [
        # Triton's HTTP JSON parser would run 4294967300 as 4 and 2**40 as 0: refused before sending
        ({"max_tokens": 4294967300}, "max_tokens", "max_tokens must be between 1 and 4096, got 4294967300"),
        ({"max_tokens": 2**40}, "max_tokens", "between 1 and 4096"),
        ({"top_k": 2**32}, "top_k", "top_k must be between 0 and 32000"),
        ({"min_tokens": 2**31, "max_tokens": 5}, "min_tokens", "min_tokens must be between 0 and 4096"),
        ({"seed": 2**64}, "seed", "seed must be between 0 and 18446744073709551615"),
        ({"pad_id": -(2**31) - 1}, "pad_id", "pad_id must be between 0 and 31999"),
        ({"repetition_penalty": 1e39}, "repetition_penalty", "<= 3.40282e+38 (the largest FP32)"),
        ({"length_penalty": 1e300}, "length_penalty", "the largest FP32"),
        ({"temperature": 1e39}, "temperature", "temperature must be >= 0.0 and <= 100.0"),
        ({"stop": ["x" * 300]}, "stop", "the limit is 256"),
    ],
)
def test_values_outside_their_tensor_type_or_limit_are_refused_with_the_field(params, param, message):
    with pytest.raises(InvalidParameterError) as info:
        resolve_params(load_profile("komt-13b"), params)
    assert info.value.param == param and message in str(info.value)
    client = ChatClient("127.0.0.1:9", "komt-13b")  # nothing listens: refused before any connection
    with pytest.raises(InvalidParameterError) as info:
        client.chat(MSGS, **params)
    assert info.value.param == param
    client.close()


def test_wire_tensors_are_range_checked_for_their_type():
    check_wire_range("max_tokens", "INT32", 2**31 - 1)
    check_wire_range("random_seed", "UINT64", 2**64 - 1)
    for name, dtype, value, limit in [("max_tokens", "INT32", 2**31, "-2147483648 to 2147483647"),
                                      ("random_seed", "UINT64", -1, "0 to 18446744073709551615"),
                                      ("temperature", "FP32", 1e39, "-3.40282e+38 to 3.40282e+38"),
                                      ("temperature", "FP32", float("nan"), "FP32")]:
        with pytest.raises(InvalidParameterError, match=limit.replace("+", r"\+")) as info:
            check_wire_range(name, dtype, value)
        assert info.value.param == name and name in str(info.value)


def test_a_random_seed_is_drawn_per_request_when_sampling_without_one():
    client = ChatClient("127.0.0.1:9", "komt-13b")
    seeds = [client.prepare_chat(MSGS, {"temperature": 1.0}).wire.tensors["random_seed"].values[0]
             for _ in range(5)]
    assert len(set(seeds)) == 5 and all(0 <= s < 2**63 for s in seeds)
    prepared = client.prepare_generate("x", {})  # profile defaults sample (temperature 0.9)
    assert prepared.params.seed == prepared.wire.tensors["random_seed"].values[0]
    # a drawn seed is not the caller's: a model without random_seed still takes the request
    assert prepared.wire.for_model("m", {"text_input", "max_tokens"})
    assert client.prepare_chat(MSGS, {"seed": 42}).wire.tensors["random_seed"].values == (42,)
    for greedy in ({"temperature": 0}, {"top_k": 1}):
        prepared = client.prepare_chat(MSGS, greedy)
        assert prepared.params.seed is None and "random_seed" not in prepared.wire.tensors
    client.close()
    fixed = ChatClient("127.0.0.1:9", "komt-13b", params={"seed": 5})
    assert fixed.prepare_chat(MSGS, {}).wire.tensors["random_seed"].values == (5,)
    fixed.close()


def test_wire_request_greedy_and_ids():
    params = resolve_params(load_profile("komt-13b"), {"temperature": 0, "max_tokens": 3, "seed": 7})
    a = build_request("p", params, stream=True, explicit={"seed"})
    b = build_request("p", params, stream=True)
    assert a.request_id != b.request_id and a.request_id.startswith("ks-")
    assert a.tensors["top_k"].values == (1,) and a.tensors["temperature"].values == (1.0,)
    assert a.tensors["random_seed"].datatype == "UINT64"
    assert a.tensors["stop_words"].values == ("<|end|>", "<s>", "###")
    assert a.tensors["exclude_input_in_output"].values == (True,)
    with pytest.raises(InvalidRequestError, match="parameter 'seed' is not supported by model 'm'"):
        a.for_model("m", {"text_input", "max_tokens"})
    body = b.json_body(b.for_model("m", {"text_input", "max_tokens", "stop_words", "stream"}))
    assert body == {"text_input": "p", "max_tokens": 3, "stream": True, "stop_words": ["<|end|>", "<s>", "###"],
                    "id": b.request_id}
