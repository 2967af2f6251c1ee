"""Shared session fixtures: real Triton servers running koserve's CPU model repositories.

Servers start lazily (only when a test asks for one), are shared by the whole session (one per
profile × mode × options) and are always stopped at the end, with their leaked shm regions removed.

Fixtures (all session-scoped; each yields / returns :class:`koserve.testing.stack.TritonEndpoints` with
``grpc_url`` ("127.0.0.1:PORT"), ``http_url`` ("http://127.0.0.1:PORT"), ``metrics_url``, ``profile``, ``mode``,
``max_input_len``, ``max_seq_len``, ``tokenizer_dir``, ``repo``, ``log_path`` and ``server``):

- ``triton_servers``: the factory, ``triton_servers(profile, mode="hf", **render_options)`` → endpoints
  (same arguments → same running server). ``mode``: ``"hf"`` (tiny random-weight checkpoint of the profile's
  family: real tokenizer, meaningless text) or ``"replay"`` (the stand-in replays a fixed Korean text — pass
  ``replay_text_file=`` for your own — deterministic, for exact-text assertions and load tests). Render options:
  ``replay_delay_ms``, ``max_input_len``, ``max_seq_len``, ``max_batch_size``, ``bls_instances``.
- ``triton_hf``: parametrised over both profiles (``akallama-70b``, ``komt-13b``), hf mode.
- ``triton_replay``: parametrised over both profiles, replay mode with :data:`REPLAY_TEXT` (Korean, emoji, a komt
  stop word after the answer), zero delay.
- ``triton_akallama`` / ``triton_komt``: one profile each, hf mode.
- ``engine_backend``: parametrised over :data:`ENGINE_BACKENDS`; a test or module fixture that passes it on
  (``triton_servers(..., engine_backend=engine_backend)``) runs on both engine renderings.
- ``triton_replay_engines``: ``triton_replay`` over both profiles × both engine backends.

Rendered limits for hf/replay servers here: ``max_seq_len`` 512, ``max_input_len`` 384 (small, so limit errors are
cheap to provoke).

Shared helpers: ``pty_reader`` (:class:`PtyReader`, what a pty's master end has received, for tests that drive the
real CLI in a terminal). The fault harness is the package module :mod:`koserve.testing.faults`.
"""

from __future__ import annotations

import contextlib
import os
import select
import time

import pytest

PROFILES = ("akallama-70b", "komt-13b")
# the engine step rendered as tensorrt_llm: the C++ backend's interface on the CPU stand-in, or the LLM API step
# (koserve.llmapi_engine) on the stand-in's LLM API object
ENGINE_BACKENDS = ("trtllm", "pytorch")
SERVER_LIMITS = {"max_seq_len": 512, "max_input_len": 384}
# Korean with byte-fallback syllables for Llama-2 (녕, 뷁, 똠, 햏), an emoji, digits, spaces, a newline, then komt's
# stop word "###" (the komt profile's text must end before it; the akallama profile has no stop words).
REPLAY_TEXT = (
    "안녕하세요, 반갑습니다! 저는 코서브 데모입니다 🤗. 뷁똠햏 같은 드문 글자도 정확히 나옵니다. "
    "오늘 기온은 12도, 내일은 15도예요.\n다음 줄도 있어요.\n### Response: 여기는 komt에서 보이면 안 됩니다."
)


@pytest.fixture(scope="session")
def triton_servers(tmp_path_factory):
    stack = contextlib.ExitStack()
    cache: dict = {}

    def get(profile: str, mode: str = "hf", **options):
        from koserve.testing.stack import serve_cpu

        # Test servers need not drain in-flight streams for Triton's default 30 s when the session ends.
        options = {**SERVER_LIMITS, "extra_args": ("--exit-timeout-secs=2",), **options}
        if options.get("engine_backend") == "trtllm":  # the default: the same server as when not given
            del options["engine_backend"]
        key = (profile, mode, tuple(sorted((k, str(v)) for k, v in options.items())))
        if key not in cache:
            workdir = tmp_path_factory.mktemp(f"triton-{profile}-{mode}")
            cache[key] = stack.enter_context(serve_cpu(profile, mode, workdir=workdir, **options))
        endpoints = cache[key]
        if not endpoints.server.is_alive():
            pytest.fail(f"the shared tritonserver for {profile}/{mode} died; log {endpoints.log_path}:\n"
                        f"{endpoints.server.log_tail()}")
        return endpoints

    with stack:
        yield get
        for endpoints in cache.values():  # SIGTERM all at once: shutdowns overlap
            endpoints.server.terminate()


@pytest.fixture(scope="session")
def replay_text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "replay.txt"
    path.write_text(REPLAY_TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="session", params=PROFILES)
def triton_hf(request, triton_servers):
    return triton_servers(request.param, "hf")


@pytest.fixture(scope="session", params=PROFILES)
def triton_replay(request, triton_servers, replay_text_file):
    return triton_servers(request.param, "replay", replay_text_file=replay_text_file)


@pytest.fixture(scope="session", params=ENGINE_BACKENDS)
def engine_backend(request):
    return request.param


@pytest.fixture(scope="session", params=[(p, b) for p in PROFILES for b in ENGINE_BACKENDS],
                ids=lambda pb: f"{pb[0]}-{pb[1]}")
def triton_replay_engines(request, triton_servers, replay_text_file):
    profile, backend = request.param
    return triton_servers(profile, "replay", replay_text_file=replay_text_file, engine_backend=backend)


@pytest.fixture(scope="session")
def triton_akallama(triton_servers):
    return triton_servers("akallama-70b", "hf")


@pytest.fixture(scope="session")
def triton_komt(triton_servers):
    return triton_servers("komt-13b", "hf")


class PtyReader:
    """What a pty's master end has received so far (bytes: a UTF-8 character may arrive split in two reads)."""

    def __init__(self, fd: int):
        self.fd, self.data = fd, b""

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")

    def read_until(self, done, timeout: float) -> bool:
        """Read until ``done(text)`` or ``timeout`` seconds; whether ``done`` holds."""
        deadline = time.monotonic() + timeout
        while not done(self.text) and time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    self.data += os.read(self.fd, 4096)
                except OSError:
                    break
        return done(self.text)


@pytest.fixture
def pty_reader():
    """:class:`PtyReader` (call it with a pty master's file descriptor)."""
    return PtyReader
