"""Token ids → text, per request (``koserve.triton_models.postprocess``): ``TextStream`` streams exactly and drops an
incomplete last character; ``StreamRegistry`` keeps one stream per request id, removes the profile's stop words,
decodes responses without an id alone, forgets a reset id and evicts idle streams."""

from __future__ import annotations

import pytest

from koserve.fixtures import tokenizer_dir
from koserve.triton_models.params import ServingLimits
from koserve.triton_models.postprocess import StreamRegistry, TextStream
from koserve.triton_models.preprocess import Preprocessor
from koserve.triton_models.settings import ModelSettings


KOREAN = "안녕하세요, 반갑습니다! 뷁똠햏 🤗\n다음 줄."


def settings(profile: str, family: str) -> ModelSettings:
    return ModelSettings(profile=profile, tokenizer_dir=tokenizer_dir(family),
                         limits=ServingLimits(max_batch_size=8, max_input_len=64, max_seq_len=128))


@pytest.fixture(scope="module", params=[("akallama-70b", "llama3"), ("komt-13b", "llama2")], ids=["llama3", "llama2"])
def pre(request):
    return Preprocessor(settings(*request.param))


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_registry_streams_exactly_per_request_id(pre, chunk):
    ids = pre.tokenizer.encode(KOREAN, add_special_tokens=False)
    expected = pre.tokenizer.decode(ids)
    reg = StreamRegistry(pre.tokenizer, ())
    a = [reg.decode("a", ids[i:i + chunk]) for i in range(0, len(ids), chunk)]
    # an interleaved second stream does not disturb the first
    b = [reg.decode("b", ids[i:i + 1]) for i in range(len(ids))]
    assert "".join(a) == expected and "".join(b) == expected
    assert all("\ufffd" not in p for p in a)


def test_registry_removes_profile_stop_words():
    tok = Preprocessor(settings("komt-13b", "llama2")).tokenizer
    ids = tok.encode("답입니다.\n### instruction: 다음", add_special_tokens=False)
    reg = StreamRegistry(tok, ("<|end|>", "<s>", "###"))
    text = "".join(reg.decode("x", [i]) for i in ids)
    assert text == "답입니다.\n"


class FakeClock:
    """Stands in for the ``time`` module of koserve.triton_models.postprocess: ``monotonic()`` is what a test sets."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_registry_evicts_idle_streams(pre, monkeypatch):
    import koserve.triton_models.postprocess as postprocess

    clock = FakeClock()
    monkeypatch.setattr(postprocess, "time", clock)
    reg = StreamRegistry(pre.tokenizer, (), idle_timeout_s=60.0, max_streams=1000)  # the cap never bites here
    for k in range(10):
        reg.decode(f"id{k}", [100])
    clock.now += 30.0
    reg.decode("fresh", [100])
    assert len(reg) == 11  # nobody idle for 60 s yet
    clock.now += 45.0  # id0..id9 idle 75 s, "fresh" 45 s
    reg.decode("later", [100])
    assert len(reg) == 2  # the ten idle ones were evicted, not "fresh" (idle 45 s < 60 s)


def test_decode_without_id_emits_whole_characters(pre):
    ids = pre.tokenizer.encode(KOREAN, add_special_tokens=False)
    reg = StreamRegistry(pre.tokenizer, ())
    pieces = [reg.decode("", [i]) for i in ids]
    for p in pieces:
        assert "\ufffd" not in p
        p.encode("utf-8")


def test_text_stream_drops_an_unfinished_character(pre):
    ids = pre.tokenizer.encode("뷁", add_special_tokens=False)
    stream = TextStream(pre.tokenizer)
    text = stream.add(ids[:-1]) + stream.finish() if len(ids) > 1 else ""
    assert "\ufffd" not in text


def test_text_stream_drops_an_incomplete_last_character():
    from koserve.fixtures import tokenizer_dir
    from koserve.triton_models.postprocess import StreamRegistry, TextStream
    from koserve.text import load_tokenizer

    for family in ("llama3", "llama2"):
        tok = load_tokenizer(tokenizer_dir(family))
        ids = tok.encode("반갑습니다 🤗 뷁", add_special_tokens=False)
        for k in range(1, len(ids) + 1):
            stream = TextStream(tok)
            text = "".join(stream.add([i]) for i in ids[:k]) + stream.finish()
            j = max(i for i in range(k + 1) if not tok.decode(ids[:i]).endswith("\ufffd"))
            assert text == tok.decode(ids[:j]), (family, k)
            # a response without a request id is a whole answer: the same text
            assert StreamRegistry(tok).decode("", ids[:k]) == text


def test_registry_reset_forgets_a_stopped_stream():
    from koserve.fixtures import tokenizer_dir
    from koserve.triton_models.postprocess import StreamRegistry
    from koserve.text import load_tokenizer

    tok = load_tokenizer(tokenizer_dir("llama2"))
    reg = StreamRegistry(tok, ("###",))
    ids = tok.encode("안녕 ### 끝", add_special_tokens=False)
    first = "".join(reg.decode("same", [i]) for i in ids)
    assert first.strip() == "안녕"
    assert reg.decode("same", ids) == ""  # the id's stream has stopped: this is what a reused id used to get
    reg.reset("same")
    assert "".join(reg.decode("same", [i]) for i in ids).strip() == "안녕"
