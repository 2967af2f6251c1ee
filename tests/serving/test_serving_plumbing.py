"""Units without a server: the request-start channel, the BLS's own-gRPC-endpoint discovery, stop grace, GPU rank
arguments, and TextStream's end-of-stream rule."""

from __future__ import annotations

import uuid

import pytest

from koserve.errors import ConfigError
from koserve.triton_models.bls import grpc_url_from_cmdline
from koserve.triton_models.startsignal import StartReceiver, StartSender, StreamStart
from koserve.server.tritonserver import default_stop_grace, gpu_command, split_rank_args


def test_start_signal_is_answered_before_the_next_step():
    """Every start is handled (registered or refused) before started() returns: ordering is exact."""
    name = b"\0koserve-test-" + uuid.uuid4().hex.encode()
    seen: list[str] = []

    def on_start(start: StreamStart):
        seen.append(start.request_id)
        return "busy" if start.request_id == "taken" else None

    receiver = StartReceiver(on_start, name)
    sender = StartSender(name)
    try:
        ids = [f"req-{i}" for i in range(2000)]  # far more than the kernel's datagram queue (10 here)
        for rid in ids:
            assert sender.started(StreamStart(rid, max_tokens=3, stop_ids=((1, 2),), stop_words=("###",))) is None
            assert seen[-1] == rid  # handled before started() returned
        assert seen == ids
        assert sender.started(StreamStart("")) is None and seen == ids  # no id: nothing sent
        assert sender.started(StreamStart("taken")) == "busy"
        assert sender.started(StreamStart("한국어-id")) is None and seen[-1] == "한국어-id"
    finally:
        sender.close()
        receiver.close()


def test_stream_start_round_trips():
    start = StreamStart("ks-1", streaming=True, max_tokens=7, input_len=3, exclude_input_in_output=False,
                        end_ids=(2,), stop_ids=((835, 29937),), stop_words=("###", "끝"),
                        return_num_input_tokens=True)
    assert StreamStart.decode(start.encode()) == start


def test_start_sender_without_receiver_never_raises():
    sender = StartSender(b"\0koserve-test-nobody-" + uuid.uuid4().hex.encode(), timeout_s=0.05)
    assert sender.started(StreamStart("x")) is None
    sender.close()


@pytest.mark.parametrize(
    ("argv", "url"),
    [
        (["--model-repository=/r", "--grpc-port=8123", "--grpc-address=127.0.0.1"], "127.0.0.1:8123"),
        (["--grpc-port", "9001", "--grpc-address", "0.0.0.0"], "127.0.0.1:9001"),
        (["--model-repository=/r"], "127.0.0.1:8001"),
        (["--grpc-port=8123", "--allow-grpc=false"], None),
    ],
)
def test_grpc_url_from_cmdline(argv, url):
    assert grpc_url_from_cmdline(argv) == url


def test_stop_grace_follows_exit_timeout():
    assert default_stop_grace(()) == 15.0
    assert default_stop_grace(("--exit-timeout-secs=60",)) == 65.0
    assert default_stop_grace(("--log-verbose=1", "--exit-timeout-secs", "120")) == 125.0
    with pytest.raises(ConfigError, match="exit-timeout-secs"):
        default_stop_grace(("--exit-timeout-secs=soon",))


def test_serve_cli_stop_grace(tmp_path):
    import argparse

    from koserve.cli import serve

    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    repo = tmp_path / "repo"
    repo.mkdir()
    args = parser.parse_args(["serve", "--repo", str(repo), "--cpu", "--", "--exit-timeout-secs=40"])
    assert serve.build_server(args).stop_grace == 45.0
    args = parser.parse_args(["serve", "--repo", str(repo), "--cpu", "--stop-grace", "3"])
    assert serve.build_server(args).stop_grace == 3.0


def test_gpu_extra_args_rank0_and_process_wide_flags_everywhere():
    rank0, others = split_rank_args(["--exit-timeout-secs", "60", "--http-thread-count=8", "--log-verbose=1"])
    assert rank0 == ["--exit-timeout-secs", "60", "--http-thread-count=8", "--log-verbose=1"]
    assert others == ["--exit-timeout-secs", "60", "--log-verbose=1"]
    cmd = gpu_command("/repo", 2, extra_args=("--exit-timeout-secs=60", "--http-thread-count=8"))
    rank1 = cmd[cmd.index(":") + 1:]
    assert "--exit-timeout-secs=60" in rank1 and "--http-thread-count=8" not in rank1
    assert "--allow-grpc=false" in rank1


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


def test_http_response_queue_capacity_follows_the_send_buffer():
    from koserve.server.http_queue import http_response_queue_capacity

    small, large = http_response_queue_capacity(sndbuf=8192), http_response_queue_capacity(sndbuf=65536)
    assert 0 < small < large
    assert http_response_queue_capacity(sndbuf=65536, limit=5) == 5


@pytest.mark.parametrize(
    ("extra", "capacity", "warned"),
    [
        ((), 278, True),
        ((), 5462, False),
        (("--allow-http=false",), 278, False),
        (("--allow-http", "0"), 278, False),
        (("--allow-http=true",), 278, True),
        (("--allow-http=false", "--allow-http", "true"), 278, True),  # tritonserver takes the last one
    ],
)
def test_http_stream_warning(extra, capacity, warned):
    from koserve.server.http_queue import http_stream_warning

    warning = http_stream_warning(extra, capacity=capacity)
    if not warned:
        assert warning is None
        return
    assert f"only {capacity} streamed responses" in warning
    assert "net.core.wmem_default=" in warning and "gRPC" in warning and "tensorrt_llm_bls" in warning
