"""The stand-in as the ``tensorrt_llm`` model in a real tritonserver, called directly over gRPC streaming."""

from __future__ import annotations

import queue
import shutil
import time
from pathlib import Path

import jinja2
import numpy as np
import pytest

from koserve.fixtures import tokenizer_dir
from koserve.cpu_engine.replay import BUILTIN_REPLAY_TEXT, load_replay_tokens
from koserve.text.stop_words import to_word_list

grpcclient = pytest.importorskip("tritonclient.grpc")

REPO = Path(__file__).resolve().parents[2] / "model_repository" / "tensorrt_llm_cpu"
PROFILE = Path(__file__).resolve().parents[2] / "src" / "koserve" / "profiles" / "data" / "akallama-70b.yaml"
MAX_INPUT_LEN = 64
MAX_SEQ_LEN = 512
REPLAY_MAX_SEQ_LEN = 4096


def render(dest: Path, name: str, **context) -> None:
    """Render the template folder like `koserve repo render` does (StrictUndefined: every variable must exist)."""
    shutil.copytree(REPO, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    text = env.from_string((REPO / "config.pbtxt").read_text()).render(**context)
    (dest / name / "config.pbtxt").write_text(text.replace('name: "tensorrt_llm"', f'name: "{name}"', 1))


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_llama3):
    from koserve.cpu_engine.pytriton_server import ServerOptions, cpu_triton_server

    repo = tmp_path_factory.mktemp("engine-repo")
    common = dict(
        profile_name="akallama-70b", profile_file=str(PROFILE), tokenizer_dir=str(tokenizer_dir("llama3")),
        max_input_len=MAX_INPUT_LEN, tp_size=1,
        pp_size=1, triton_max_queue_delay_us=0, replay_text_file="", postprocessing_instances=1,
        preprocessing_instances=1, bls_instances=1, guided_decoding_backend="", xgrammar_tokenizer_info_path="",
    )
    render(repo, "tensorrt_llm", cpu_engine_mode="hf", cpu_model_dir=str(tiny_llama3), max_batch_size=4,
           replay_delay_ms=0.0, max_seq_len=MAX_SEQ_LEN, max_output_len=MAX_SEQ_LEN - 1, **common)
    # replay, one request at a time, 2 ms per token, text repeated: a cancelled request that kept running would
    # hold up the next one for seconds
    render(repo, "tensorrt_llm_replay", cpu_engine_mode="replay", cpu_model_dir="", max_batch_size=1,
           replay_delay_ms=2.0, replay_at_end="repeat", max_seq_len=REPLAY_MAX_SEQ_LEN,
           max_output_len=REPLAY_MAX_SEQ_LEN - 1, **common)
    srv = cpu_triton_server(ServerOptions(model_repository=repo))
    srv.start(timeout=180)
    yield srv
    srv.stop()
    srv.cleanup_log()


def inputs_for(prompt, out_len, *, dtype=np.int32, **optional):
    ids = np.asarray([prompt], dtype=dtype)
    tensors = {
        "input_ids": ids,
        "input_lengths": np.asarray([[len(prompt)]], np.int32),
        "request_output_len": np.asarray([[out_len]], np.int32),
    }
    tensors.update(optional)
    result = []
    for name, arr in tensors.items():
        dtype_name = {np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32",
                      np.dtype(np.bool_): "BOOL", np.dtype(np.uint64): "UINT64"}[arr.dtype]
        inp = grpcclient.InferInput(name, list(arr.shape), dtype_name)
        inp.set_data_from_numpy(arr)
        result.append(inp)
    return result


def b(v):
    return np.asarray([[v]], np.bool_)


class Stream:
    """One gRPC stream; collects (output_ids, sequence_length, final flag) or errors per request."""

    def __init__(self, url: str):
        self.client = grpcclient.InferenceServerClient(url)
        self.q: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.q.put((result, error)))

    def send(self, model, inputs, request_id="") -> None:
        self.client.async_stream_infer(model, inputs, request_id=request_id, enable_empty_final_response=True)

    def collect(self, timeout=30.0, stop_after=None):
        """Responses until a final one or an error: list of (ids, seq_len, final)."""
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                result, error = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if error is not None:
                return got, str(error)
            final = result.get_response().parameters["triton_final_response"].bool_param
            ids = result.as_numpy("output_ids")
            seq = result.as_numpy("sequence_length")
            got.append((ids, seq, final, result))
            if final or (stop_after is not None and len(got) >= stop_after):
                return got, None
        raise TimeoutError(f"no final response within {timeout} s (got {len(got)})")

    def close(self, cancel=False):
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


@pytest.fixture
def stream(server):
    s = Stream(server.grpc_url)
    yield s
    s.close()


def test_replay_streams_exact_korean_text_with_final_on_last_token(server, stream, llama3_tokenizer):
    tokens = load_replay_tokens(tokenizer_dir("llama3"))
    stream.send("tensorrt_llm_replay", inputs_for([128000, 9906], len(tokens), streaming=b(True)))
    got, err = stream.collect()
    assert err is None
    assert all(ids.shape == (1, 1, 1) and seq.tolist() == [[1]] for ids, seq, _, _ in got)
    ids = [int(i[0, 0, 0]) for i, _, _, _ in got]
    assert llama3_tokenizer.decode(ids) == BUILTIN_REPLAY_TEXT
    assert [f for _, _, f, _ in got] == [False] * (len(tokens) - 1) + [True]  # no empty final response


def test_non_streaming_includes_prompt_unless_excluded(server, stream):
    prompt = [128000, 9906, 1917]
    stream.send("tensorrt_llm_replay", inputs_for(prompt, 5, exclude_input_in_output=b(False)))
    (got,), err = stream.collect()
    assert err is None and got[2]
    tokens = load_replay_tokens(tokenizer_dir("llama3"))
    assert got[0].tolist() == [[prompt + tokens[:5]]] and got[1].tolist() == [[8]]

    stream.send("tensorrt_llm_replay", inputs_for(prompt, 5, exclude_input_in_output=b(True)))
    (got,), err = stream.collect()
    assert got[0].tolist() == [[tokens[:5]]] and got[1].tolist() == [[5]]


def test_hf_model_stop_words_end_id_and_log_probs(server, stream, hf_engine, prompt_ids):
    from koserve.cpu_engine import EngineRequest

    ref = hf_engine.submit(EngineRequest(input_ids=prompt_ids, max_new_tokens=8)).result(60).token_ids
    stream.send("tensorrt_llm", inputs_for(list(prompt_ids), 8, streaming=b(True), return_log_probs=b(True)))
    got, err = stream.collect()
    assert err is None
    assert [int(i[0, 0, 0]) for i, _, _, _ in got] == ref  # same checkpoint, same greedy tokens as in-process
    lp = got[0][3].as_numpy("output_log_probs")
    assert lp.shape == (1, 1, 1) and lp[0, 0, 0] <= 0
    assert got[0][3].as_numpy("cum_log_probs").shape == (1, 1)

    stop = to_word_list([[ref[2], ref[3]]])[None]
    stream.send("tensorrt_llm", inputs_for(list(prompt_ids), 8, stop_words_list=stop))
    (got,), err = stream.collect()
    assert got[0].tolist() == [[ref[:4]]]

    if ref[4] not in ref[:4]:
        stream.send("tensorrt_llm", inputs_for(list(prompt_ids), 8, end_id=np.asarray([[ref[4]]], np.int32)))
        (got,), err = stream.collect()
        assert got[0].tolist() == [[ref[:4]]]


def test_seeded_sampling_through_the_server(server, stream, prompt_ids):
    def sample(seed):
        stream.send("tensorrt_llm", inputs_for(
            list(prompt_ids), 6, temperature=np.asarray([[1.0]], np.float32),
            runtime_top_k=np.asarray([[50]], np.int32), seed=np.asarray([[seed]], np.uint64)))
        (got,), err = stream.collect()
        assert err is None
        return got[0].tolist()

    assert sample(42) == sample(42) != sample(43)


def test_concurrent_streams(server, stream, prompt_ids):
    for k in range(4):
        stream.send("tensorrt_llm", inputs_for(list(prompt_ids), 10 + k, streaming=b(True)), request_id=f"c{k}")
    counts: dict[str, int] = {}
    finals = 0
    deadline = time.monotonic() + 60
    while finals < 4 and time.monotonic() < deadline:
        result, error = stream.q.get(timeout=30)
        assert error is None
        rid = result.get_response().id
        counts[rid] = counts.get(rid, 0) + result.as_numpy("output_ids").shape[-1]
        finals += result.get_response().parameters["triton_final_response"].bool_param
    assert counts == {f"c{k}": 10 + k for k in range(4)}


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda: inputs_for(list(range(1, MAX_INPUT_LEN + 2)), 4),
         f"input length {MAX_INPUT_LEN + 1} exceeds the engine's max_input_len {MAX_INPUT_LEN}"),
        (lambda: inputs_for([1, 2, 3], 0), f"request_output_len must be in [1, {MAX_SEQ_LEN - 1}]"),
        (lambda: inputs_for([1, 2, 3], MAX_SEQ_LEN), f"got {MAX_SEQ_LEN}"),
        (lambda: inputs_for([1, 2, 3], 4, temperature=np.asarray([[-1.0]], np.float32)),
         "temperature must be >= 0"),
        (lambda: inputs_for([1, 2, 3], 4, runtime_top_p=np.asarray([[1.5]], np.float32)),
         "runtime_top_p must be in [0, 1]"),
        (lambda: inputs_for([1, 2, 3], 4, beam_width=np.asarray([[2]], np.int32)), "beam_width=2 is not supported"),
        (lambda: inputs_for([1, 2, 3], 4, dtype=np.int64), "input_ids"),  # Triton itself refuses INT64
    ],
)
def test_bad_requests_get_clear_errors_and_server_keeps_serving(server, stream, make, needle):
    stream.send("tensorrt_llm", make())
    got, err = stream.collect()
    assert err is not None and needle in err, err
    stream.send("tensorrt_llm", inputs_for([1, 2, 3], 2))
    (got,), err = stream.collect()
    assert err is None and got[1].tolist() == [[2]]


def test_cancelled_stream_stops_the_engine(server):
    first = Stream(server.grpc_url)
    try:
        first.send("tensorrt_llm_replay", inputs_for([1, 2], 3000, streaming=b(True)))
        got, err = first.collect(stop_after=3)
        assert err is None and len(got) == 3
    finally:
        first.close(cancel=True)  # the client goes away after 3 of 3000 tokens (~6 s of work left)
    second = Stream(server.grpc_url)
    try:
        started = time.monotonic()
        second.send("tensorrt_llm_replay", inputs_for([1, 2], 5))
        (got,), err = second.collect(timeout=30)
        waited = time.monotonic() - started
    finally:
        second.close()
    assert err is None and got[1].tolist() == [[5]]
    # max_batch_size 1: had the cancelled request kept running, this one would have waited for its ~6 s
    assert waited < 2.0, waited


def test_stop_request_cancels_by_request_id(server, stream):
    stream.send("tensorrt_llm_replay", inputs_for([1, 2], 3000, streaming=b(True)), request_id="long-1")
    got, err = stream.collect(stop_after=2)
    assert err is None
    stream.send("tensorrt_llm_replay", inputs_for([1], 1, stop=b(True)), request_id="long-1")
    total = len(got)
    finals = 0
    deadline = time.monotonic() + 10
    while finals < 2 and time.monotonic() < deadline:  # the stop request's own final + the stopped stream's
        result, error = stream.q.get(timeout=10)
        assert error is None
        finals += result.get_response().parameters["triton_final_response"].bool_param
        if result.get_response().id == "long-1" and result.as_numpy("output_ids") is not None:
            total += result.as_numpy("output_ids").shape[-1]
    assert finals == 2 and total < 100
