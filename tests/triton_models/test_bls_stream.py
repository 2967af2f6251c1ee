"""One BLS request as pure state (``koserve.triton_models.bls_stream.BlsStream``): engine ids in; exact text, token
counts and the time the next response is due out — without Triton, threads or a clock of its own."""

from __future__ import annotations

import numpy as np
import pytest

from koserve.fixtures import tokenizer_dir
from koserve.text import load_tokenizer
from koserve.triton_models.bls_stream import BlsStream
from koserve.triton_models.postprocess import TextStream

TEXT = "안녕하세요, 반갑습니다! 뷁똠햏 🤗\n다음 줄."


@pytest.fixture(scope="module", params=["llama3", "llama2"])
def tok(request):
    return load_tokenizer(tokenizer_dir(request.param))


def ids_of(tok, text):
    return np.asarray(tok.encode(text, add_special_tokens=False), dtype=np.int32)


def test_responses_taken_at_any_time_concatenate_to_the_exact_text(tok):
    ids = ids_of(tok, TEXT)
    for take_every in (1, 3, 7):
        stream = BlsStream(TextStream(tok))
        texts, tokens = [], 0
        for i, token in enumerate(ids):
            ended = stream.add_ids(ids[i:i + 1], final=i == len(ids) - 1)
            assert ended == (i == len(ids) - 1)
            if ended or i % take_every == 0:
                pending = stream.take()
                if pending is not None:
                    texts.append(pending.text)
                    tokens += pending.tokens
                    assert "\ufffd" not in pending.text
        assert "".join(texts) == tok.decode(ids) and tokens == len(ids)
        assert stream.closed and stream.take() is None  # nothing after the final response


def test_a_stop_string_ends_the_request_early_and_later_ids_are_ignored(tok):
    ids = ids_of(tok, "답입니다.\n### 다음")
    stream = BlsStream(TextStream(tok, ("###",)))
    ended_at = None
    for i in range(len(ids)):
        if stream.add_ids(ids[i:i + 1]):
            ended_at = i
            break
    assert ended_at is not None and stream.stop_early and stream.ended
    assert not stream.add_ids(ids[-1:])  # the engine's responses after the stop add nothing
    pending = stream.take()
    assert pending.final and pending.text == "답입니다.\n"


def test_due_time_first_and_final_at_once_others_after_the_interval(tok):
    ids = ids_of(tok, "안녕하세요")
    stream = BlsStream(TextStream(tok))
    stream.add_ids(ids[:1])
    assert stream.next_due(0.05) == 0.0  # nothing sent yet: at once
    stream.take()
    stream.last_sent = 100.0
    stream.add_ids(ids[1:2])
    assert stream.next_due(0.05) == pytest.approx(100.05)
    assert stream.next_due(0.0) == 0.0  # no holding
    stream.add_ids(ids[2:], final=True)
    assert stream.ending and stream.next_due(0.05) == 0.0  # the final response never waits


def test_an_error_ends_a_stream_after_its_text_and_replaces_a_whole_answer(tok):
    ids = ids_of(tok, "안녕하세요")
    streamed = BlsStream(TextStream(tok))
    streamed.add_ids(ids[:2])
    assert streamed.fail(("engine died", "UNAVAILABLE"))
    pending = streamed.take()
    assert pending.final and pending.error == ("engine died", "UNAVAILABLE") and pending.tokens == 2
    whole = BlsStream(TextStream(tok), prefix="프롬프트")
    whole.add_ids(ids[:2])
    assert whole.fail("ERR", keep_text=False)
    pending = whole.take()
    assert (pending.text, pending.tokens, pending.error) == ("", 0, "ERR")
    assert not whole.fail("again")  # ended already


def test_a_client_gone_sends_nothing_more(tok):
    stream = BlsStream(TextStream(tok))
    stream.add_ids(ids_of(tok, "안녕")[:1])
    assert stream.abandon() and stream.closed and stream.take() is None
    assert not stream.abandon() and not stream.fail("late")


def test_a_prompt_prefix_comes_first(tok):
    stream = BlsStream(TextStream(tok), prefix="질문: ")
    stream.add_ids(ids_of(tok, "답"), final=True)
    assert stream.take().text == "질문: 답"
