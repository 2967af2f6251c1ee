"""Units (no server): how postprocessing's StreamRegistry follows an announced request to its end
(koserve.triton_models.postprocess.StreamEnd) and refuses a second stream with an id still in flight."""

from __future__ import annotations

import numpy as np
import pytest

from koserve.fixtures import tokenizer_dir
from koserve.triton_models.postprocess import StreamRegistry
from koserve.triton_models.startsignal import StreamStart
from koserve.text import load_tokenizer

KOMT_STOPS = ("<|end|>", "<s>", "###")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(tokenizer_dir("llama2"))


def ids_of(tok, text):
    return tok.encode(text, add_special_tokens=False)


def stream(reg, rid, chunks):
    return "".join(reg.decode(rid, np.asarray(c, dtype=np.int32)) for c in chunks)


@pytest.mark.parametrize("text", ["제목은 ##", "언어는 C#", "부등호 <"])
def test_end_id_final_response_without_tokens_flushes_a_held_prefix(tok, text):
    ids = ids_of(tok, text)
    reg = StreamRegistry(tok, KOMT_STOPS)
    assert reg.start(StreamStart("a", max_tokens=100, end_ids=(2,))) is None
    chunks = [[t] for t in ids] + [[]]  # TensorRT-LLM: the end id step sends no tokens
    assert stream(reg, "a", chunks) == tok.decode(ids)


def test_without_the_end_the_prefix_stays_held(tok):
    """What the issue saw: an id that was never announced keeps its tail (the stream's end is unknown)."""
    ids = ids_of(tok, "언어는 C#")
    reg = StreamRegistry(tok, KOMT_STOPS)
    assert stream(reg, "b", [[t] for t in ids] + [[]]) == tok.decode(ids)[:-1]


def test_max_tokens_ends_the_stream(tok):
    ids = ids_of(tok, "제목은 ## 그리고")
    k = next(i for i in range(1, len(ids) + 1) if tok.decode(ids[:i]).endswith("##"))
    reg = StreamRegistry(tok, KOMT_STOPS)
    reg.start(StreamStart("c", max_tokens=k))
    assert stream(reg, "c", [[t] for t in ids[:k]]) == tok.decode(ids[:k])


def test_stop_word_tokens_end_the_stream(tok):
    words = ids_of(tok, "끝")
    ids = ids_of(tok, "답은 C#") + words
    reg = StreamRegistry(tok, KOMT_STOPS)
    reg.start(StreamStart("d", max_tokens=100, stop_ids=(tuple(words),), stop_words=("끝",)))
    assert stream(reg, "d", [[t] for t in ids]) == "답은 C# "  # "▁끝": the space before the stop word stays


def test_a_second_stream_with_an_id_in_flight_is_refused(tok):
    reg = StreamRegistry(tok, KOMT_STOPS)
    assert reg.start(StreamStart("e", max_tokens=3)) is None
    reg.decode("e", np.asarray([100], dtype=np.int32))
    refusal = reg.start(StreamStart("e", max_tokens=3))
    assert refusal is not None and "'e'" in refusal and "already in flight" in refusal
    reg.decode("e", np.asarray([101, 102], dtype=np.int32))  # third token: the stream ends
    assert reg.start(StreamStart("e", max_tokens=3)) is None  # the id is free again


def test_an_unanswered_whole_request_holds_its_id_only_against_streams(tok):
    """preprocessing called on its own (NVIDIA's end_to_end_test) announces an id that never reaches postprocessing;
    the ensemble call with the same id that follows (not streamed either) must run. A stream with that id is refused
    while the whole request may still be in flight: postprocessing could not tell their responses apart (a whole
    answer mixed into a stream lost text, tests/serving/test_exactness_holes.py)."""
    reg = StreamRegistry(tok, KOMT_STOPS)
    assert reg.start(StreamStart("f", streaming=False, max_tokens=3)) is None
    assert reg.start(StreamStart("f", streaming=False, max_tokens=3)) is None
    refusal = reg.start(StreamStart("f", streaming=True, max_tokens=3))
    assert refusal is not None and "'f' is already in flight" in refusal


def test_whole_answer_echoes_the_prompt_unmatched(tok):
    """Not streamed with exclude_input_in_output false: the response starts with the prompt's ids, whose text is
    echoed even when it holds a stop word (komt's prompt ends in '### Response:')."""
    prompt = ids_of(tok, "### instruction: 안녕\n\n### Response:")
    answer = ids_of(tok, " 반갑습니다 C#")
    reg = StreamRegistry(tok, KOMT_STOPS)
    reg.start(StreamStart("g", streaming=False, max_tokens=50, input_len=len(prompt), exclude_input_in_output=False))
    decoded = reg.decode_response("g", np.asarray(prompt + answer, dtype=np.int32))
    assert decoded.text == tok.decode(prompt + answer) and decoded.num_output_tokens == len(answer)
    again = reg.decode_response("g", np.asarray(answer, dtype=np.int32))  # another whole answer of the id
    assert again.text == tok.decode(answer).lstrip() or again.text == tok.decode(answer)
