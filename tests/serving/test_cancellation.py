"""Ending streams early stops the engine and leaves nothing in flight, and cannot kill the server.

- a cancelled direct engine stream stops the engine; a client's cancel plus TensorRT-LLM ``stop`` for its id stops
  it through the ensemble and the BLS; the BLS notices a client that went away by itself (``cancel_poll_s``);
- every way koserve ends a stream early — ``close()`` of the sync and the async client, the idle timeout, Ctrl-C in
  ``koserve chat``'s REPL (the real CLI in a pty) — stops the generation: right afterwards Triton, told to shut down,
  finds no in-flight inference (a server of its own: replay, 20 ms per token);
- the cancellation soak (``scripts/soak_cancel.py``, shortened) against a server of its own."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from koserve.client import AsyncChatClient, ChatClient
from koserve.client.errors import RequestTimeoutError
from koserve.server.tritonserver import in_flight_at_shutdown
from koserve.server.triton_calls import TEXT_MODELS, grpc_stream, text_inputs


ROOT = Path(__file__).resolve().parents[2]


MODELS = ("ensemble", "tensorrt_llm_bls")


LONG = 200  # tokens: ~4 s at 20 ms each


PROMPT = "네 이름은 뭐야?"


def rid() -> str:
    return uuid.uuid4().hex


# -- the engine stops ------------------------------------------------------------------------------------------


# --- cancellation -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_server(triton_servers, engine_backend):
    """Replay at 30 ms/token with ONE engine slot: a request the engine did not stop blocks the next one."""
    return triton_servers("akallama-70b", "replay", replay_delay_ms=30, max_batch_size=1,
                          engine_backend=engine_backend)


def _engine_inputs(tokens: int) -> dict:
    return {
        "input_ids": np.array([[128000, 9906]], dtype=np.int32),
        "input_lengths": np.array([[2]], dtype=np.int32),
        "request_output_len": np.array([[tokens]], dtype=np.int32),
        "streaming": np.array([[True]], dtype=np.bool_),
    }


def _assert_engine_free(server):
    # 150 tokens x 30 ms = 4.5 s if the engine kept going; a stopped engine takes the next request at once
    t0 = time.perf_counter()
    nxt = grpc_stream(server.grpc_url, "tensorrt_llm_bls", text_inputs(PROMPT, 2), request_id=rid(), timeout=30)
    assert nxt.error is None and nxt.text
    assert time.perf_counter() - t0 < 2.0, "the cancelled request kept the engine busy"


@pytest.mark.server
def test_cancelled_engine_stream_stops_the_engine(slow_server):
    first = grpc_stream(slow_server.grpc_url, "tensorrt_llm", _engine_inputs(150), request_id=rid(),
                        output="output_ids", cancel_after=3)
    assert first.error is None and len(first.pieces) >= 1
    _assert_engine_free(slow_server)


@pytest.mark.server
@pytest.mark.parametrize("model", TEXT_MODELS)
def test_client_cancel_with_stop_request_stops_the_engine(slow_server, model):
    """What the koserve client does on cancel: close the stream and send tensorrt_llm a TensorRT-LLM `stop` for its
    request id — through the ensemble and through the BLS (which gives the engine request the client's id)."""
    request_id = rid()
    first = grpc_stream(slow_server.grpc_url, model, text_inputs(PROMPT, 150), request_id=request_id, cancel_after=3)
    assert first.error is None and len(first.pieces) >= 1
    stop = {**_engine_inputs(1), "stop": np.array([[True]], dtype=np.bool_)}
    stopped = grpc_stream(slow_server.grpc_url, "tensorrt_llm", stop, request_id=request_id, output="output_ids")
    assert stopped.error is None
    _assert_engine_free(slow_server)


@pytest.mark.server
def test_bls_cancel_polling_stops_the_engine(triton_servers, monkeypatch):
    """The BLS notices a client that went away by itself (cancel_poll_s, default 0.25 s; 0.1 here)."""
    monkeypatch.setenv("KOSERVE_BLS_CANCEL_POLL_S", "0.1")  # read by the BLS stub of the server started here
    server = triton_servers("akallama-70b", "replay", replay_delay_ms=29, max_batch_size=1)
    first = grpc_stream(server.grpc_url, "tensorrt_llm_bls", text_inputs(PROMPT, 150), request_id=rid(),
                        cancel_after=3)
    assert first.error is None and len(first.pieces) >= 1
    _assert_engine_free(server)


# -- koserve's own early ends ----------------------------------------------------------------------------------
def _ctrl_c_in_repl(url: str, model: str, pty_reader) -> str:
    """Run ``koserve chat`` interactively, Ctrl-C (SIGINT) in the middle of an answer, then /exit; its output."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "koserve", "chat", "--url", url, "--model", model, "--max-tokens", str(LONG)],
        stdin=slave, stdout=slave, stderr=slave, close_fds=True, start_new_session=True,
    )
    os.close(slave)
    term = pty_reader(master)
    try:
        assert term.read_until(lambda t: ">>> " in t, 60), term.text
        os.write(master, "안녕하세요\n".encode())
        # the terminal's echo of the line, then the answer (it greets too)
        assert term.read_until(lambda t: t.count("안녕하세요") >= 2, 30), term.text
        time.sleep(0.3)  # in the middle of the answer
        proc.send_signal(signal.SIGINT)
        assert term.read_until(lambda t: "(stopped" in t, 15), term.text  # "(stopped)" or "(stopped: ...)"
        assert term.read_until(lambda t: t.rstrip().endswith(">>>"), 15), term.text
        os.write(master, b"/exit\n")
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)
    assert proc.returncode == 0, term.text
    return term.text


@pytest.mark.server
@pytest.mark.timeout(400)
def test_every_early_end_of_a_koserve_stream_leaves_nothing_in_flight(tmp_path, replay_text_file, pty_reader):
    from koserve.testing.stack import serve_cpu

    with serve_cpu("akallama-70b", "replay", replay_text_file=replay_text_file, replay_delay_ms=20.0,
                   max_input_len=384, max_seq_len=512, workdir=tmp_path, extra_args=("--exit-timeout-secs=3",)
                   ) as ep:
        for model in MODELS:
            with ChatClient(ep.grpc_url, "akallama-70b", model=model) as client:
                stream = client.stream([{"role": "user", "content": "안녕"}], max_tokens=LONG)
                got = [next(stream), next(stream)]
                t0 = time.monotonic()
                stream.close()
                assert time.monotonic() - t0 < 3.0, "close() must not wait for the whole answer"
                assert stream.result.finish_reason == "cancelled" and "".join(got)
                # the idle timeout: the server is silent for 20 ms between tokens, more than 5 ms
                client._transport.idle_timeout = 0.005
                with pytest.raises(RequestTimeoutError, match="idle timeout"):
                    client.chat([{"role": "user", "content": "안녕"}], max_tokens=LONG)
                client._transport.idle_timeout = 60.0
                assert client.chat([{"role": "user", "content": "안녕"}], max_tokens=4).text

            async def async_close(model=model):
                async with AsyncChatClient(ep.grpc_url, "akallama-70b", model=model) as aclient:
                    astream = aclient.stream([{"role": "user", "content": "안녕"}], max_tokens=LONG)
                    await astream.__anext__()
                    await astream.aclose()
                    # a task cancelled mid-stream (the gateway when its caller goes away)
                    task = asyncio.ensure_future(aclient.chat([{"role": "user", "content": "안녕"}], max_tokens=LONG))
                    await asyncio.sleep(0.3)
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                    # leaving the block: close() waits for the cancelled task's call to be ended (stop + drain)

            asyncio.run(async_close())
            out = _ctrl_c_in_repl(ep.grpc_url, model, pty_reader)
            assert "Traceback" not in out, out
        time.sleep(0.5)
        ep.server.stop()
        log = ep.log_path.read_text(errors="replace")
    assert in_flight_at_shutdown(log) == [], in_flight_at_shutdown(log)
    assert "Found 0 model versions that have in-flight inferences" in log  # the check saw the shutdown


@pytest.mark.server
@pytest.mark.timeout(300)
def test_cancellation_soak_short():
    """400 sequential streams, every 4th abandoned after two responses (the full 2,000 run: scripts/soak_cancel.py)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak_cancel.py"), "--requests", "400", "--warmup", "40", "--json",
         "--max-seconds", "200"],
        capture_output=True, text=True, timeout=280, env={**os.environ},
    )
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["server_alive"] and not figures["crash_log"], figures
    assert figures["requests"] == 400 and figures["cancelled"] == 100
    assert figures["errors"] == {} and figures["left_in_flight"] == [], figures
    assert figures["max_rss_growth_pct"] < 20, figures
    assert proc.returncode == 0, proc.stderr[-3000:]
