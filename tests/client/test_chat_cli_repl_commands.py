"""The interactive `koserve chat` in a real terminal (a pty): unknown /commands are answered, not sent to the model;
`//` sends a line that starts with '/'; a reply stopped with Ctrl-C stays in the conversation, marked [stopped]."""

from __future__ import annotations

import os
import pty
import sys

import pytest

from koserve.testing.pty import read_until

pytestmark = [pytest.mark.server, pytest.mark.timeout(300)]

KOSERVE = [sys.executable, "-m", "koserve"]
PROMPT = b"\n>>> "


@pytest.fixture(scope="module")
def slow_komt(triton_servers):
    """komt-13b replaying its built-in Korean text at 100 ms per token: slow enough to stop by hand."""
    return triton_servers("komt-13b", "replay", replay_delay_ms=100.0)


def _say(fd: int, line: str, until: bytes = PROMPT, timeout: float = 60) -> str:
    os.write(fd, line.encode() + b"\r")
    return read_until(fd, until, timeout).decode("utf-8", "replace").replace("\r\n", "\n")


def test_repl_commands_typos_and_a_stopped_reply(slow_komt):
    pid, fd = pty.fork()
    if pid == 0:  # child: the REPL on a real terminal
        os.environ.update({"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TERM": "dumb"})
        os.execv(sys.executable, KOSERVE + ["chat", "-p", "komt-13b", "--url", slow_komt.grpc_url,
                                            "--max-tokens", "40"])
    try:
        assert b">>> " in read_until(fd, b">>> ", 60)
        out = _say(fd, "/rest")
        assert "unknown command /rest; try /help" in out, out
        out = _say(fd, "/foo bar")
        assert "unknown command /foo; try /help" in out, out
        assert _say(fd, "/history").strip().endswith(">>>")  # nothing was sent: the conversation is empty
        # a reply stopped with Ctrl-C after its first characters
        os.write(fd, "안녕\r".encode())
        first = read_until(fd, "녕".encode() + b"\r\n", 30)  # the echoed line
        first += read_until(fd, b"\xea", 30)  # the first Korean byte of the reply
        assert first, "no reply started"
        os.write(fd, b"\x03")  # Ctrl-C on the terminal
        stopped = read_until(fd, PROMPT, 60).decode("utf-8", "replace")
        assert "(stopped: the partial answer stays in the conversation, marked [stopped] in /history)" in stopped
        history = _say(fd, "/history")
        lines = [ln for ln in history.splitlines() if ln.startswith("[")]
        assert lines[0] == "[user] 안녕" and lines[1].startswith("[assistant] ") and \
            lines[1].endswith(" [stopped]"), history
        # the conversation goes on; '//' sends a line starting with '/'
        out = _say(fd, "//help 는 명령이 아니에요", timeout=90)
        assert "unknown command" not in out
        history = _say(fd, "/history")
        assert "[user] /help 는 명령이 아니에요" in history and history.count("[stopped]") == 1, history
        assert "(conversation cleared)" in _say(fd, "/reset")
        assert "[user]" not in _say(fd, "/history")
        os.write(fd, b"/exit\r")
        read_until(fd, b"\x00", 10)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
