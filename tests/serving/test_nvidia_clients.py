"""NVIDIA's own clients' calls (tensorrtllm_backend v0.19.0), reproduced in our code against the real server: the
same tensors, shapes and dtypes, read back the way those scripts read them (issue 17 §1).

- ``inflight_batcher_llm/client/end_to_end_grpc_client.py`` → ``ensemble`` / ``tensorrt_llm_bls`` over
  ``stream_infer``, streaming or not, with or without a request id, ``--batch-inputs`` (asks for ``batch_index``):
  ``result.as_numpy('text_output')[0].decode()``.
- ``tools/inflight_batcher_llm/end_to_end_test.py`` → ``preprocessing`` (unary, gRPC and HTTP) and every output it
  reads (``INPUT_ID``, ``REQUEST_INPUT_LEN``, ``REQUEST_OUTPUT_LEN``, ``DECODER_INPUT_ID``, ``OUT_END_ID``,
  ``OUT_PAD_ID``), the engine's ``output_ids`` / ``sequence_length`` into ``postprocessing``, equal to ``ensemble``.
- ``inflight_batcher_llm/client/inflight_batcher_llm_client.py --streaming`` → ``tensorrt_llm``:
  ``list(result.as_numpy('output_ids')[0][0])`` per response.
- ``inflight_batcher_llm_client.py`` without ``--streaming`` and ``end_to_end_test.py`` (with ``--test-bls``) →
  unary ``ModelInfer`` / HTTP infer on ``tensorrt_llm``, ``ensemble`` and ``tensorrt_llm_bls``: a repository
  rendered with the engine not decoupled (``koserve repo render --engine-not-decoupled``, NVIDIA's
  ``decoupled_mode=false``; the BLS follows), where the stand-in answers each request with exactly one response and
  refuses ``streaming=true`` as NVIDIA's C++ backend does.
"""

from __future__ import annotations

import queue
import uuid
from functools import partial

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype

from koserve.profiles import load_profile
from koserve.text import load_tokenizer

pytestmark = pytest.mark.server

ANSWER = "안녕하세요! 저는 한국어 도우미입니다. 뷁똠햏 같은 글자도 나옵니다 🤗 좋아하는 언어는 C#"
PROMPT = "서울의 날씨는?"
OUTPUT_LEN = 100


@pytest.fixture(scope="module", params=["akallama-70b", "komt-13b"])
def server(request, triton_servers, tmp_path_factory, engine_backend):
    path = tmp_path_factory.mktemp("nvidia") / "answer.txt"
    path.write_text(ANSWER, encoding="utf-8")
    return triton_servers(request.param, "replay", replay_text_file=path, engine_backend=engine_backend)


@pytest.fixture(scope="module")
def tok(server):
    return load_tokenizer(server.tokenizer_dir)


def prepare_tensor(module, name, value):
    """tools/utils/utils.py prepare_tensor."""
    t = module.InferInput(name, value.shape, np_to_triton_dtype(value.dtype))
    t.set_data_from_numpy(value)
    return t


def e2e_client_inputs(prompt, output_len, streaming):
    """end_to_end_grpc_client.py prepare_inputs with the script's defaults (temperature 1.0, beam width 1,
    exclude_input_in_output False since the flag is store_true)."""
    input0 = [[prompt]]
    input0_data = np.array(input0).astype(object)
    return {
        "text_input": input0_data,
        "max_tokens": np.ones_like(input0).astype(np.int32) * output_len,
        "stream": np.array([[streaming]], dtype=bool),
        "beam_width": np.array([[1]], dtype=np.int32),
        "temperature": np.array([[1.0]], dtype=np.float32),
        "exclude_input_in_output": np.array([[False]], dtype=bool),
    }


def stream_call(url, model, inputs, outputs, request_id):
    """run_inference: start_stream, async_stream_infer, stop_stream (waits for the server to close), then drain."""
    client = grpcclient.InferenceServerClient(url)
    completed: queue.Queue = queue.Queue()

    def callback(q, result, error):
        q.put(error if error else result)

    try:
        client.start_stream(callback=partial(callback, completed), stream_timeout=60)
        client.async_stream_infer(model, [prepare_tensor(grpcclient, k, v) for k, v in inputs.items()],
                                  outputs=[grpcclient.InferRequestedOutput(o) for o in outputs],
                                  request_id=request_id)
        client.stop_stream()
    finally:
        client.close()
    results = []
    while not completed.empty():
        results.append(completed.get())
    return results


def answer_ids(tok, server):
    ids = tok.encode(ANSWER, add_special_tokens=False)
    assert len(ids) < OUTPUT_LEN
    return ids


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("request_id", ["", "nv-id"])
@pytest.mark.parametrize("batch_inputs", [False, True])
def test_end_to_end_grpc_client(server, tok, model, streaming, request_id, batch_inputs):
    inputs = e2e_client_inputs(PROMPT, OUTPUT_LEN, streaming)
    if batch_inputs:  # one prompt stacked along axis 0: the same arrays
        inputs = {k: np.concatenate((v,), axis=0) for k, v in inputs.items()}
    outputs = ["text_output"] + (["batch_index"] if batch_inputs else [])
    rid = f"{request_id}-{uuid.uuid4().hex[:8]}" if request_id else ""
    results = stream_call(server.grpc_url, model, inputs, outputs, rid)
    text = ""
    for result in results:
        assert not isinstance(result, Exception), result
        output = result.as_numpy("text_output")
        assert output.shape == (1,) and output.dtype == np.object_  # NVIDIA's shape: one string per batch × beam
        batch_index = result.as_numpy("batch_index")
        batch_index = 0 if batch_index is None else batch_index[0][0]
        assert batch_index == 0
        if streaming:
            text += output[0].decode("utf-8")
        else:
            text = output[0].decode("utf-8")
    ids = answer_ids(tok, server)
    if streaming:  # a streamed answer never starts with the prompt
        assert text == tok.decode(ids)
    else:  # exclude_input_in_output False: the prompt's ids decoded with the answer's, as NVIDIA's postprocessing
        prompt_ids = tok.encode(PROMPT, add_special_tokens=True)
        assert len(results) == 1 and text == tok.decode(prompt_ids + ids)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_end_to_end_test_preprocessing_then_engine_then_postprocessing(server, tok, protocol):
    """end_to_end_test.py test_functionality_ifb, step 1 (preprocessing and the outputs it reads), then the engine
    (streamed: the CPU stand-in is decoupled), postprocessing, and the ensemble's text equal to postprocessing's."""
    module = httpclient if protocol == "http" else grpcclient
    url = server.http_url.removeprefix("http://") if protocol == "http" else server.grpc_url
    client = module.InferenceServerClient(url)
    rid = f"e2e-{uuid.uuid4().hex[:8]}"
    output_len = OUTPUT_LEN
    input0 = [[PROMPT]]
    input0_data = np.array(input0).astype(object)
    inputs = [
        prepare_tensor(module, "QUERY", input0_data),
        prepare_tensor(module, "BAD_WORDS_DICT", np.array([[""]], dtype=object)),
        prepare_tensor(module, "STOP_WORDS_DICT", np.array([[""]], dtype=object)),
        prepare_tensor(module, "REQUEST_OUTPUT_LEN", np.ones_like(input0).astype(np.int32) * output_len),
    ]
    try:
        result = client.infer("preprocessing", inputs, request_id=rid)
    finally:
        client.close()
    prompt_ids = tok.encode(PROMPT, add_special_tokens=True)
    profile = load_profile(server.profile)
    expect = {
        "INPUT_ID": (np.int32, (1, len(prompt_ids))),
        "REQUEST_INPUT_LEN": (np.int32, (1, 1)),
        "REQUEST_OUTPUT_LEN": (np.int32, (1, 1)),
        "DECODER_INPUT_ID": (np.int32, (1, 1)),
        "REQUEST_DECODER_INPUT_LEN": (np.int32, (1, 1)),
        "OUT_END_ID": (np.int32, (1, 1)),
        "OUT_PAD_ID": (np.int32, (1, 1)),
        "EMBEDDING_BIAS": (np.float32, (1, 0)),
    }
    out = {}
    for name, (dtype, shape) in expect.items():
        out[name] = result.as_numpy(name)
        assert out[name] is not None and out[name].dtype == dtype and out[name].shape == shape, name
    assert out["INPUT_ID"][0].tolist() == prompt_ids
    assert out["REQUEST_INPUT_LEN"][0][0] == len(prompt_ids) and out["REQUEST_OUTPUT_LEN"][0][0] == output_len
    assert out["OUT_END_ID"][0][0] == profile.end_id
    assert out["OUT_PAD_ID"][0][0] == out["DECODER_INPUT_ID"][0][0] == profile.generation.pad_id
    for name in ("BAD_WORDS_IDS", "STOP_WORDS_IDS"):
        assert result.as_numpy(name).dtype == np.int32 and result.as_numpy(name).shape[:2] == (1, 2)

    # the engine with the preprocessing outputs (decoder_input_ids as the script sends it: declared, and ignored for
    # a decoder-only model as by the C++ backend), streamed: this engine is decoupled
    engine_inputs = {
        "input_ids": out["INPUT_ID"], "decoder_input_ids": out["DECODER_INPUT_ID"],
        "input_lengths": out["REQUEST_INPUT_LEN"],
        "request_output_len": out["REQUEST_OUTPUT_LEN"], "end_id": out["OUT_END_ID"], "pad_id": out["OUT_PAD_ID"],
        "streaming": np.array([[False]], dtype=bool),
    }
    results = stream_call(server.grpc_url, "tensorrt_llm", engine_inputs, ["output_ids", "sequence_length"], rid)
    assert len(results) == 1 and not isinstance(results[0], Exception), results
    output_ids = results[0].as_numpy("output_ids").astype(np.int32)
    seq_lengths = results[0].as_numpy("sequence_length")
    assert output_ids.shape[:2] == (1, 1) and seq_lengths.shape == (1, 1)

    client = module.InferenceServerClient(url)
    try:
        post = client.infer("postprocessing", [prepare_tensor(module, "TOKENS_BATCH", output_ids),
                                                prepare_tensor(module, "SEQUENCE_LENGTH", seq_lengths)],
                            request_id=rid)
    finally:
        client.close()
    output0 = post.as_numpy("OUTPUT")
    assert output0.shape == (1,)
    assert output0[0].decode("utf-8") == tok.decode(answer_ids(tok, server))

    # "2. Use ensemble model" (streamed for want of a non-decoupled engine; one response, as unary)
    ens_inputs = {"text_input": input0_data, "max_tokens": np.ones_like(input0).astype(np.int32) * output_len,
                  "bad_words": np.array([[""]], dtype=object), "stop_words": np.array([[""]], dtype=object)}
    results = stream_call(server.grpc_url, "ensemble", ens_inputs, ["text_output"], rid)
    assert len(results) == 1 and not isinstance(results[0], Exception), results
    ensemble_output = results[0].as_numpy("text_output")
    assert output0 == ensemble_output


def test_inflight_batcher_llm_client_streaming(server, tok):
    """inflight_batcher_llm_client.py --streaming: the tokenizer's ids (with BOS), the script's defaults
    (beam width 1, temperature 1.0, top_k 1, top_p 0), tokens read as list(output_ids[0][0]) when
    sequence_length[0][0] > 0."""
    input_ids = [tok.encode(PROMPT, add_special_tokens=True)]
    profile = load_profile(server.profile)
    inputs = {
        "input_ids": np.array(input_ids, dtype=np.int32),
        "input_lengths": np.array([[len(input_ids[0])]], dtype=np.int32),
        "request_output_len": np.array([[OUTPUT_LEN]], dtype=np.int32),
        "beam_width": np.array([[1]], dtype=np.int32),
        "temperature": np.array([[1.0]], dtype=np.float32),
        "streaming": np.array([[True]], dtype=bool),
        "end_id": np.array([[profile.end_id]], dtype=np.int32),
        "pad_id": np.array([[profile.generation.pad_id]], dtype=np.int32),
        "runtime_top_k": np.array([[1]], dtype=np.int32),
        "runtime_top_p": np.array([[0.0]], dtype=np.float32),
    }
    results = stream_call(server.grpc_url, "tensorrt_llm", inputs, ["output_ids", "sequence_length"],
                          f"ib-{uuid.uuid4().hex[:8]}")
    tokens = []
    for result in results:
        assert not isinstance(result, Exception), result
        seq_idx = result.as_numpy("sequence_index")
        assert (seq_idx[0][0] if seq_idx is not None else 0) == 0
        output_ids = result.as_numpy("output_ids")
        seq_lens = result.as_numpy("sequence_length")
        assert output_ids.dtype == np.int32 and output_ids.ndim == 3 and seq_lens.shape == (1, 1)
        if seq_lens is None or seq_lens[0][0] > 0:
            tokens += list(output_ids[0][0])
    assert tokens == answer_ids(tok, server)
    # as TensorRT-LLM after an end id: the last response carries no tokens
    assert results[-1].as_numpy("sequence_length")[0][0] == 0


@pytest.fixture(scope="module")
def unary_bls(tmp_path_factory):
    """A server whose tensorrt_llm_bls is rendered decoupled: false (NVIDIA's decoupled_mode), as end_to_end_test.py
    expects for its unary ModelInfer calls on the BLS."""
    from koserve.fixtures import tokenizer_dir
    from koserve.repo.render import RenderOptions, render_repository
    from koserve.cpu_engine.pytriton_server import ServerOptions, cpu_triton_server

    base = tmp_path_factory.mktemp("unary-bls")
    (base / "answer.txt").write_text(ANSWER, encoding="utf-8")
    rendered = render_repository(RenderOptions(
        profile="akallama-70b", tokenizer_dir=tokenizer_dir("llama3"), out=base / "repo", replay=True,
        replay_text_file=base / "answer.txt", max_seq_len=512, max_input_len=384, bls_decoupled=False,
    ))
    assert "decoupled: false" in (rendered.path / "tensorrt_llm_bls" / "config.pbtxt").read_text()
    server = cpu_triton_server(ServerOptions(rendered.path, extra_args=("--exit-timeout-secs=2",)),
                              log_path=base / "tritonserver.log")
    server.start(180)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_end_to_end_test_unary_bls_call(unary_bls, protocol):
    """end_to_end_test.py --test-bls step 4: client.infer on tensorrt_llm_bls, read as result.as_numpy('text_output')."""
    tok = load_tokenizer(tokenizer_dir_of("akallama-70b"))
    module = httpclient if protocol == "http" else grpcclient
    url = unary_bls.http_url.removeprefix("http://") if protocol == "http" else unary_bls.grpc_url
    input0 = [[PROMPT]]
    inputs = [
        prepare_tensor(module, "text_input", np.array(input0).astype(object)),
        prepare_tensor(module, "max_tokens", np.ones_like(input0).astype(np.int32) * OUTPUT_LEN),
        prepare_tensor(module, "bad_words", np.array([[""]], dtype=object)),
        prepare_tensor(module, "stop_words", np.array([[""]], dtype=object)),
    ]
    client = module.InferenceServerClient(url)
    try:
        result = client.infer("tensorrt_llm_bls", inputs, outputs=[module.InferRequestedOutput("text_output")],
                              request_id="0")
        bls_output = result.as_numpy("text_output")
        assert bls_output.shape == (1,) and bls_output[0].decode("utf-8") == tok.decode(
            tok.encode(ANSWER, add_special_tokens=False))
        streamed = inputs + [prepare_tensor(module, "stream", np.array([[True]], dtype=bool))]
        with pytest.raises(Exception, match="stream=true needs tensorrt_llm_bls rendered decoupled"):
            client.infer("tensorrt_llm_bls", streamed, request_id="1")
    finally:
        client.close()


def tokenizer_dir_of(profile):
    from koserve.fixtures import tokenizer_dir

    return tokenizer_dir({"akallama-70b": "llama3", "komt-13b": "llama2"}[profile])


# -- a repository rendered with the engine not decoupled (unary ModelInfer on tensorrt_llm, ensemble and BLS) --------


@pytest.fixture(scope="module")
def unary_engine(tmp_path_factory, engine_backend):
    """``koserve repo render --engine-not-decoupled``: tensorrt_llm (the CPU stand-in) and, following it,
    tensorrt_llm_bls are not decoupled, so the ensemble is not either; the replay engine answers ANSWER."""
    from koserve.fixtures import tokenizer_dir
    from koserve.repo.render import RenderOptions, render_repository
    from koserve.cpu_engine.pytriton_server import ServerOptions, cpu_triton_server

    base = tmp_path_factory.mktemp("unary-engine")
    (base / "answer.txt").write_text(ANSWER, encoding="utf-8")
    rendered = render_repository(RenderOptions(
        profile="akallama-70b", tokenizer_dir=tokenizer_dir("llama3"), out=base / "repo", replay=True,
        replay_text_file=base / "answer.txt", max_seq_len=512, max_input_len=384, engine_decoupled=False,
        engine_backend=engine_backend,
    ))
    for model in ("tensorrt_llm", "tensorrt_llm_bls"):
        assert "decoupled: false" in (rendered.path / model / "config.pbtxt").read_text(), model
    server = cpu_triton_server(ServerOptions(rendered.path, extra_args=("--exit-timeout-secs=2",)),
                              log_path=base / "tritonserver.log")
    server.start(180)
    try:
        yield server
    finally:
        server.stop()


def unary_client(server, protocol):
    module = httpclient if protocol == "http" else grpcclient
    url = server.http_url.removeprefix("http://") if protocol == "http" else server.grpc_url
    return module, module.InferenceServerClient(url)


def ib_client_inputs(module, input_ids, profile, *, streaming=False, exclude_input_in_output=None):
    """inflight_batcher_llm_client.py prepare_inputs with its defaults (beam width 1, temperature 1.0, top_k 1,
    top_p 0, end/pad ids from the tokenizer: eos for both); exclude_input_in_output only when its flag is given."""
    inputs = {
        "input_ids": np.array(input_ids, dtype=np.int32),
        "input_lengths": np.array([[len(input_ids[0])]], dtype=np.int32),
        "request_output_len": np.array([[OUTPUT_LEN]], dtype=np.int32),
        "beam_width": np.array([[1]], dtype=np.int32),
        "temperature": np.array([[1.0]], dtype=np.float32),
        "streaming": np.array([[streaming]], dtype=bool),
        "end_id": np.array([[profile.end_id]], dtype=np.int32),
        "pad_id": np.array([[profile.end_id]], dtype=np.int32),
        "runtime_top_k": np.array([[1]], dtype=np.int32),
        "runtime_top_p": np.array([[0.0]], dtype=np.float32),
    }
    if exclude_input_in_output is not None:
        inputs["exclude_input_in_output"] = np.array([[exclude_input_in_output]], dtype=bool)
    return [prepare_tensor(module, k, v) for k, v in inputs.items()]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("exclude", [None, True, False])
def test_inflight_batcher_llm_client_unary(unary_engine, protocol, exclude):
    """inflight_batcher_llm_client.py without --streaming: one async_infer (unary ModelInfer) with
    parameters={'Streaming': False}, one response read as list(output_ids[0][0])[:sequence_length[0][0]]; the prompt
    comes first unless excluded (the stand-in's default, like koserve's GPU config, excludes it)."""
    tok = load_tokenizer(tokenizer_dir_of("akallama-70b"))
    profile = load_profile("akallama-70b")
    input_ids = [tok.encode(PROMPT, add_special_tokens=True)]
    module, client = unary_client(unary_engine, protocol)
    done: queue.Queue = queue.Queue()
    try:
        inputs = ib_client_inputs(module, input_ids, profile, exclude_input_in_output=exclude)
        outputs = [module.InferRequestedOutput(o) for o in ("output_ids", "sequence_length")]
        if protocol == "grpc":
            client.async_infer("tensorrt_llm", inputs, outputs=outputs, request_id=f"ib-{uuid.uuid4().hex[:8]}",
                               callback=lambda result, error: done.put(error or result),
                               parameters={"Streaming": False})
            result = done.get(timeout=60)
        else:
            result = client.async_infer("tensorrt_llm", inputs, outputs=outputs,
                                        request_id=f"ib-{uuid.uuid4().hex[:8]}").get_result(timeout=60)
    finally:
        client.close()
    assert not isinstance(result, Exception), result
    output_ids = result.as_numpy("output_ids")
    seq_len = result.as_numpy("sequence_length")
    assert output_ids.dtype == np.int32 and output_ids.ndim == 3 and output_ids.shape[:2] == (1, 1)
    assert seq_len.shape == (1, 1) and result.as_numpy("sequence_index") is None
    tokens = list(output_ids[0][0])[: seq_len[0][0]]
    answer = tok.encode(ANSWER, add_special_tokens=False)
    assert tokens == (answer if exclude in (None, True) else input_ids[0] + answer)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_end_to_end_test_unary_chain_with_bls(unary_engine, protocol):
    """end_to_end_test.py test_functionality_ifb with --test-bls, all unary as the script calls them:
    preprocessing → tensorrt_llm (with decoupled_input_ids) → postprocessing, then ensemble and tensorrt_llm_bls,
    read back as as_numpy('OUTPUT') / as_numpy('text_output') and compared with ==, as the script does."""
    tok = load_tokenizer(tokenizer_dir_of("akallama-70b"))
    module, client = unary_client(unary_engine, protocol)
    input0 = [[PROMPT]]
    input0_data = np.array(input0).astype(object)
    output0_len = np.ones_like(input0).astype(np.int32) * OUTPUT_LEN
    bad_words_list = np.array([[""]], dtype=object)
    stop_words_list = np.array([[""]], dtype=object)
    try:
        result = client.infer("preprocessing", [
            prepare_tensor(module, "QUERY", input0_data), prepare_tensor(module, "BAD_WORDS_DICT", bad_words_list),
            prepare_tensor(module, "STOP_WORDS_DICT", stop_words_list),
            prepare_tensor(module, "REQUEST_OUTPUT_LEN", output0_len)], request_id="0")
        engine_inputs = {
            "input_ids": result.as_numpy("INPUT_ID"), "decoder_input_ids": result.as_numpy("DECODER_INPUT_ID"),
            "input_lengths": result.as_numpy("REQUEST_INPUT_LEN"),
            "request_output_len": result.as_numpy("REQUEST_OUTPUT_LEN"),
            "end_id": result.as_numpy("OUT_END_ID"), "pad_id": result.as_numpy("OUT_PAD_ID"),
        }
        result = client.infer("tensorrt_llm", [prepare_tensor(module, k, v) for k, v in engine_inputs.items()],
                              request_id="0")
        output0 = result.as_numpy("output_ids").astype(np.int32)
        seq_lengths = result.as_numpy("sequence_length")
        assert output0.shape[:2] == (1, 1) and seq_lengths.shape == (1, 1)
        assert output0[0][0].tolist() == tok.encode(ANSWER, add_special_tokens=False)
        result = client.infer("postprocessing", [prepare_tensor(module, "TOKENS_BATCH", output0),
                                                 prepare_tensor(module, "SEQUENCE_LENGTH", seq_lengths)],
                              request_id="0")
        output0 = result.as_numpy("OUTPUT")
        text_inputs = [prepare_tensor(module, "text_input", input0_data),
                       prepare_tensor(module, "max_tokens", output0_len),
                       prepare_tensor(module, "bad_words", bad_words_list),
                       prepare_tensor(module, "stop_words", stop_words_list)]
        outputs = [module.InferRequestedOutput("text_output")]
        ensemble_output = client.infer("ensemble", text_inputs, outputs=outputs, request_id="0").as_numpy(
            "text_output")
        bls_output = client.infer("tensorrt_llm_bls", text_inputs, outputs=outputs, request_id="0").as_numpy(
            "text_output")
    finally:
        client.close()
    assert output0.shape == (1,) and output0[0].decode("utf-8") == tok.decode(tok.encode(ANSWER,
                                                                                         add_special_tokens=False))
    assert output0 == ensemble_output
    assert output0 == bls_output


STREAMING_REFUSED = "Streaming is only supported if model is deployed using decoupled mode"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_not_decoupled_engine_refuses_streaming_and_keeps_serving(unary_engine, protocol):
    """streaming=true on a non-decoupled tensorrt_llm is refused with the C++ backend's message (utils.cc
    createRequestsFromInputTensors), unary and over stream_infer; through the ensemble too (NVIDIA's ensemble
    needs a decoupled tensorrt_llm to stream); the next request is served."""
    tok = load_tokenizer(tokenizer_dir_of("akallama-70b"))
    profile = load_profile("akallama-70b")
    input_ids = [tok.encode(PROMPT, add_special_tokens=True)]
    module, client = unary_client(unary_engine, protocol)
    try:
        with pytest.raises(Exception, match=STREAMING_REFUSED) as info:
            client.infer("tensorrt_llm", ib_client_inputs(module, input_ids, profile, streaming=True),
                         request_id="s1")
        assert "--engine-not-decoupled" in str(info.value)
        result = client.infer("tensorrt_llm", ib_client_inputs(module, input_ids, profile), request_id="s2")
        assert list(result.as_numpy("output_ids")[0][0]) == tok.encode(ANSWER, add_special_tokens=False)
    finally:
        client.close()
    if protocol == "grpc":
        grpc_inputs = {
            "input_ids": np.array(input_ids, dtype=np.int32),
            "input_lengths": np.array([[len(input_ids[0])]], dtype=np.int32),
            "request_output_len": np.array([[OUTPUT_LEN]], dtype=np.int32),
            "streaming": np.array([[True]], dtype=bool),
        }
        (error,) = stream_call(unary_engine.grpc_url, "tensorrt_llm", grpc_inputs, ["output_ids"], "s3")
        assert isinstance(error, Exception) and STREAMING_REFUSED in str(error)
        (error,) = stream_call(unary_engine.grpc_url, "ensemble", e2e_client_inputs(PROMPT, OUTPUT_LEN, True),
                               ["text_output"], f"s4-{uuid.uuid4().hex[:8]}")
        assert isinstance(error, Exception) and STREAMING_REFUSED in str(error)
        (result,) = stream_call(unary_engine.grpc_url, "ensemble", e2e_client_inputs(PROMPT, OUTPUT_LEN, False),
                                ["text_output"], f"s5-{uuid.uuid4().hex[:8]}")
        assert not isinstance(result, Exception), result
        prompt_ids = tok.encode(PROMPT, add_special_tokens=True)
        assert result.as_numpy("text_output")[0].decode() == tok.decode(
            prompt_ids + tok.encode(ANSWER, add_special_tokens=False))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("name, value", [
    ("embedding_bias", np.ones((1, 4), np.float32)),
    ("lora_task_id", np.array([[7]], np.uint64)),
    ("prompt_embedding_table", np.ones((1, 2, 8), np.float16)),
    ("draft_input_ids", np.array([[11, 12]], np.int32)),
    ("return_perf_metrics", np.array([[True]], bool)),
])
def test_declared_unsupported_engine_inputs_refused_by_name(unary_engine, protocol, name, value):
    """Inputs NVIDIA's template declares that the stand-in does not implement: Triton accepts them (declared), the
    stand-in refuses them with INVALID_ARG naming the input; its "off" / empty forms (what NVIDIA's preprocessing
    and end_to_end_test.py send: decoder_input_ids [[pad]], EMBEDDING_BIAS [1, 0]) are accepted."""
    tok = load_tokenizer(tokenizer_dir_of("akallama-70b"))
    profile = load_profile("akallama-70b")
    input_ids = [tok.encode(PROMPT, add_special_tokens=True)]
    module, client = unary_client(unary_engine, protocol)
    try:
        inputs = ib_client_inputs(module, input_ids, profile) + [prepare_tensor(module, name, value)]
        with pytest.raises(Exception, match=f"{name}[ =].*not supported by the (CPU engine stand-in|LLM API "
                                            f"engine step)") as info:
            client.infer("tensorrt_llm", inputs, request_id="u1")
        assert "400" in str(info.value) or "INVALID_ARG" in str(info.value)
        ignored = ib_client_inputs(module, input_ids, profile) + [
            prepare_tensor(module, "decoder_input_ids", np.array([[profile.generation.pad_id]], np.int32)),
            prepare_tensor(module, "decoder_input_lengths", np.array([[1]], np.int32)),
            prepare_tensor(module, "embedding_bias", np.zeros((1, 0), np.float32)),
            prepare_tensor(module, "return_perf_metrics", np.array([[False]], bool)),
        ]
        result = client.infer("tensorrt_llm", ignored, request_id="u2")
        assert list(result.as_numpy("output_ids")[0][0]) == tok.encode(ANSWER, add_special_tokens=False)
    finally:
        client.close()


def test_not_decoupled_engine_answers_a_stop_request_once(unary_engine):
    """A TensorRT-LLM ``stop`` request on a non-decoupled tensorrt_llm gets exactly one (empty) response, as the C++
    backend answers it (sendEnqueueResponse), so a unary ModelInfer with stop=true completes."""
    client = grpcclient.InferenceServerClient(unary_engine.grpc_url)
    try:
        stop = [prepare_tensor(grpcclient, "input_ids", np.array([[1]], np.int32)),
                prepare_tensor(grpcclient, "input_lengths", np.array([[1]], np.int32)),
                prepare_tensor(grpcclient, "request_output_len", np.array([[1]], np.int32)),
                prepare_tensor(grpcclient, "stop", np.array([[True]], bool))]
        result = client.infer("tensorrt_llm", stop, request_id="nothing-running")
        assert result.as_numpy("output_ids") is None
    finally:
        client.close()


KOMT_TEXT = "안녕하세요! 뷁똠햏 같은 글자도 나옵니다 🤗 좋아요.\n### Response: 여기는 보이면 안 됩니다."


@pytest.fixture(scope="module")
def unary_komt(tmp_path_factory):
    """komt (stop words ``<|end|>``, ``<s>``, ``###``) rendered --engine-not-decoupled, replaying a text that goes
    on past ``### Response:``."""
    from koserve.fixtures import tokenizer_dir
    from koserve.repo.render import RenderOptions, render_repository
    from koserve.cpu_engine.pytriton_server import ServerOptions, cpu_triton_server

    base = tmp_path_factory.mktemp("unary-komt")
    (base / "answer.txt").write_text(KOMT_TEXT, encoding="utf-8")
    rendered = render_repository(RenderOptions(
        profile="komt-13b", tokenizer_dir=tokenizer_dir("llama2"), out=base / "repo", replay=True,
        replay_text_file=base / "answer.txt", max_seq_len=512, max_input_len=384, engine_decoupled=False,
    ))
    server = cpu_triton_server(ServerOptions(rendered.path, extra_args=("--exit-timeout-secs=2",)),
                              log_path=base / "tritonserver.log")
    server.start(180)
    try:
        yield server, KOMT_TEXT
    finally:
        server.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_not_decoupled_ensemble_and_bls_cut_at_stop_words(unary_komt, protocol):
    """With whole answers from the engine (streaming=false) the ensemble and the BLS still end the answer before
    komt's stop word, exactly, unary as end_to_end_test.py calls them."""
    server, replay_text = unary_komt
    module, client = unary_client(server, protocol)
    inputs = [prepare_tensor(module, "text_input", np.array([[PROMPT]]).astype(object)),
              prepare_tensor(module, "max_tokens", np.array([[200]], np.int32))]
    outputs = [module.InferRequestedOutput("text_output")]
    try:
        texts = {model: client.infer(model, inputs, outputs=outputs, request_id=f"k-{model}").as_numpy(
            "text_output") for model in ("ensemble", "tensorrt_llm_bls")}
    finally:
        client.close()
    expected = replay_text.split("###")[0]
    for model, out in texts.items():
        assert out.shape == (1,), model
        text = out[0].decode("utf-8")
        assert text == expected, (model, text)
    assert texts["ensemble"][0] == texts["tensorrt_llm_bls"][0]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_health_probe_passes_on_a_not_decoupled_repository(unary_engine, protocol, model):
    """koserve serve's readiness probe must not report a repository rendered --engine-not-decoupled as broken."""
    from koserve.server.health import probe_model

    url = unary_engine.http_url if protocol == "http" else unary_engine.grpc_url
    result = probe_model(url, model, timeout=30)
    assert result.ok, result.error
