"""Postprocessing with dynamic batching: one ``execute`` call carries engine responses of many streams (several of one
stream, in order), each stream's text stays exact — on a fake ``pb`` and on the real server."""

from __future__ import annotations

import concurrent.futures as cf
import uuid

import numpy as np
import pytest

from koserve.fixtures import tokenizer_dir
from koserve.server.triton_calls import grpc_stream, text_inputs
from koserve.text import load_tokenizer
from koserve.triton_models.cancel_watch import CancelWatch
from koserve.triton_models.models import PostprocessingModel
from koserve.triton_models.postprocess import StreamRegistry


KOREAN = "안녕하세요, 반갑습니다! 뷁똠햏 🤗\n다음 줄."


class _Tensor:
    def __init__(self, name, arr):
        self.name, self.arr = name, arr

    def as_numpy(self):
        return self.arr


class _Request:
    def __init__(self, request_id, ids):
        self._id = request_id
        self.inputs = {"TOKENS_BATCH": np.array([[ids]], dtype=np.int32),
                       "SEQUENCE_LENGTH": np.array([[len(ids)]], dtype=np.int32)}

    def request_id(self):
        return self._id

    def is_cancelled(self):
        return False


class _Response:
    def __init__(self, output_tensors=(), error=None):
        self.tensors, self.error = list(output_tensors), error


class _FakePb:
    Tensor = _Tensor
    InferenceResponse = _Response

    class TritonError(Exception):
        pass

    @staticmethod
    def get_input_tensor_by_name(request, name):
        arr = request.inputs.get(name)
        return None if arr is None else _Tensor(name, arr)


def test_execute_with_several_responses_per_call_keeps_each_stream_in_order():
    tok = load_tokenizer(tokenizer_dir("llama3"))
    ids = tok.encode(KOREAN, add_special_tokens=False)
    model = PostprocessingModel.__new__(PostprocessingModel)
    model.pb, model.start_receiver = _FakePb, None
    model.registry = StreamRegistry(tok, ())
    model.cancel_watch = CancelWatch(_FakePb)  # (asks is_cancelled() of each request: never, here)
    # one token per engine response; streams a and b interleaved, several responses of each in every call
    pending = [(rid, [t]) for t in ids for rid in ("a", "b")]
    texts = {"a": "", "b": ""}
    for start in range(0, len(pending), 5):
        batch = [_Request(rid, chunk) for rid, chunk in pending[start:start + 5]]
        responses = model.execute(batch)
        assert len(responses) == len(batch)
        for req, resp in zip(batch, responses):
            assert resp.error is None
            texts[req.request_id()] += resp.tensors[0].arr.reshape(-1)[0].decode("utf-8")
    assert texts == {"a": tok.decode(ids), "b": tok.decode(ids)}


@pytest.mark.server
def test_server_with_postprocessing_batching_streams_exact_text(triton_servers, replay_text_file):
    ep = triton_servers("akallama-70b", "replay", replay_text_file=replay_text_file,
                        postprocessing_max_queue_delay_us=200)
    cfg = (ep.repo / "postprocessing" / "config.pbtxt").read_text()
    assert "max_queue_delay_microseconds: 200" in cfg
    tok = load_tokenizer(ep.tokenizer_dir)
    expected = tok.decode(tok.encode(replay_text_file.read_text(encoding="utf-8"), add_special_tokens=False))
    with cf.ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(grpc_stream, ep.grpc_url, "ensemble", text_inputs("네 이름은 뭐야?", 300),
                               request_id=uuid.uuid4().hex, timeout=60) for _ in range(12)]
        results = [f.result(timeout=90) for f in futures]
    for res in results:
        assert res.error is None, res.error
        assert "\ufffd" not in res.text
        assert res.text == expected
    assert ep.server.is_ready() and "Signal (6)" not in ep.server.log_tail(200)
