"""``koserve gateway`` as a user starts it from a shell: the real CLI in a subprocess, no KOSERVE_CACHE, another cwd.

The fixture tokenizers ``make fixtures`` wrote into the checkout must be found (one cache rule for every command),
so ``usage.prompt_tokens`` is right.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from koserve.chat import render_prompt
from koserve.fixtures import cache_dir, tokenizer_dir
from koserve.text.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[2]
KOSERVE = Path(sys.executable).with_name("koserve")


def _shell_env(home: Path) -> dict[str, str]:
    """A login shell's environment: no KOSERVE_CACHE, a HOME without ~/.cache/koserve."""
    env = {k: v for k, v in os.environ.items() if k != "KOSERVE_CACHE"}
    env["HOME"] = str(home)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cache_rule_is_the_same_for_every_command(tmp_path):
    """env var > the checkout's .cache/koserve > ~/.cache/koserve, whatever the working directory."""
    code = "from koserve.fixtures import cache_dir; print(cache_dir())"
    env = _shell_env(tmp_path / "home")
    run = lambda e: subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=e, capture_output=True,  # noqa: E731
                                   text=True, timeout=60, check=True).stdout.strip()
    assert run(env) == str(REPO / ".cache" / "koserve")
    assert run({**env, "KOSERVE_CACHE": str(tmp_path / "elsewhere")}) == str(tmp_path / "elsewhere")
    # the same package outside a source checkout (as an installed wheel): the user's cache
    site = tmp_path / "site"
    shutil.copytree(REPO / "src" / "koserve", site / "koserve", ignore=shutil.ignore_patterns("__pycache__"))
    assert run({**env, "PYTHONPATH": str(site)}) == str(tmp_path / "home" / ".cache" / "koserve")
    # `make fixtures` (KOSERVE_CACHE=$(CURDIR)/.cache/koserve) and a bare shell agree
    if os.environ.get("KOSERVE_CACHE"):
        assert Path(os.environ["KOSERVE_CACHE"]).resolve() == cache_dir().resolve() == (REPO / ".cache/koserve")


def test_gateway_help_says_where_tokenizers_come_from():
    out = subprocess.run([str(KOSERVE), "gateway", "--help"], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    flat = " ".join(out.split())
    assert "$KOSERVE_CACHE" in flat and "<checkout>/.cache/koserve" in flat and "~/.cache/koserve" in flat
    assert "--allow-raw-prompts" in flat and "random seed" in flat


@pytest.mark.server
def test_gateway_from_a_shell_counts_prompt_tokens(triton_servers, replay_text_file, tmp_path):
    if not (REPO / ".cache" / "koserve" / "tokenizers" / "llama2" / "tokenizer.json").is_file():
        pytest.skip("the checkout has no fixtures (`make fixtures` writes them to .cache/koserve)")
    komt = triton_servers("komt-13b", "replay", replay_text_file=replay_text_file)
    port = _free_port()
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(KOSERVE), "gateway", "--model", f"komt-13b={komt.grpc_url}", "--port", str(port),
             "--allow-raw-prompts"],
            cwd=tmp_path, env=_shell_env(home), stdout=out, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "gateway not healthy in 60 s:\n" + log.read_text()
            time.sleep(0.2)
        msgs = [{"role": "user", "content": "안녕하세요, 반갑습니다"}]
        r = httpx.post(base + "/v1/chat/completions", json={"model": "komt-13b", "messages": msgs, "max_tokens": 5},
                       timeout=30)
        assert r.status_code == 200, r.text
        tok = load_tokenizer(tokenizer_dir("llama2"))
        want = len(tok.encode(render_prompt("komt-13b", msgs), add_special_tokens=True))
        assert want > 20 and r.json()["usage"]["prompt_tokens"] == want
        # --allow-raw-prompts reached the app: a pre-templated completions prompt is taken
        raw = "### instruction: 안녕\n\n### Response:"
        r = httpx.post(base + "/v1/completions", json={"model": "komt-13b", "prompt": raw, "max_tokens": 5},
                       timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(tok.encode(raw)), r.text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    text = log.read_text()
    assert f"llama2 tokenizer from {REPO / '.cache' / 'koserve' / 'tokenizers' / 'llama2'}" in text
    assert "no tokenizer" not in text


@pytest.mark.parametrize("spec, message", [
    ("komt-13b=127.0.0.1:1,target=xx", "target: Input should be 'engine', 'ensemble' or 'tensorrt_llm_bls'"),
    ("komt-13b=http://127.0.0.1:1,target=engine", "target engine sends token ids over Triton's gRPC"),
    ("komt-13b=127.0.0.1:1,max_input_len=100", "give max_input_len and max_seq_len together"),
    ("komt-13b=127.0.0.1:1,profile=nope", "unknown profile"),
    ("komt-13b", "expected NAME=URL"),
])
def test_gateway_refuses_bad_model_options_at_start(spec, message, tmp_path):
    """Every key of --model is checked before the gateway listens: one error line, exit 2, no server."""
    proc = subprocess.run([str(KOSERVE), "gateway", "--model", spec, "--port", str(_free_port())], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("koserve: error:") and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "Uvicorn running" not in proc.stderr
