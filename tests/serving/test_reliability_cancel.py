"""Ending streams early leaves nothing in flight and cannot kill the server (issue 18 §2).

Its own server (replay, 20 ms per token: a 200-token answer streams for ~4 s). Every way koserve ends a stream
early — ``close()`` of the sync and the async client, the idle timeout, Ctrl-C in ``koserve chat``'s REPL (the real
CLI in a pty) — must stop the generation: right afterwards Triton, told to shut down, finds no in-flight inference.
The cancellation soak (``scripts/soak_cancel.py``, shortened) runs against a server of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from koserve.client import AsyncChatClient, ChatClient
from koserve.client.errors import RequestTimeoutError
from koserve.server.tritonserver import in_flight_at_shutdown

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("ensemble", "tensorrt_llm_bls")
LONG = 200  # tokens: ~4 s at 20 ms each


class _Terminal:
    """What a pty's master end has received so far (bytes: a UTF-8 character may arrive split in two reads)."""

    def __init__(self, fd: int):
        self.fd, self.data = fd, b""

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")

    def read_until(self, done, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done(self.text) and time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    self.data += os.read(self.fd, 4096)
                except OSError:
                    break
        return done(self.text)


def _ctrl_c_in_repl(url: str, model: str) -> str:
    """Run ``koserve chat`` interactively, Ctrl-C (SIGINT) in the middle of an answer, then /exit; its output."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "koserve", "chat", "--url", url, "--model", model, "--max-tokens", str(LONG)],
        stdin=slave, stdout=slave, stderr=slave, close_fds=True, start_new_session=True,
    )
    os.close(slave)
    term = _Terminal(master)
    try:
        assert term.read_until(lambda t: ">>> " in t, 60), term.text
        os.write(master, "안녕하세요\n".encode())
        # the terminal's echo of the line, then the answer (it greets too)
        assert term.read_until(lambda t: t.count("안녕하세요") >= 2, 30), term.text
        time.sleep(0.3)  # in the middle of the answer
        proc.send_signal(signal.SIGINT)
        assert term.read_until(lambda t: "(stopped)" in t, 15), term.text
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
def test_every_early_end_of_a_koserve_stream_leaves_nothing_in_flight(tmp_path, replay_text_file):
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
            out = _ctrl_c_in_repl(ep.grpc_url, model)
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
