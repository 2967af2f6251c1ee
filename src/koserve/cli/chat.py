"""``koserve chat``: talk to a served model from the terminal (one-shot or an interactive session)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from typing import Any

_SAMPLING_FLAGS = (
    # flag, dest, type, help
    ("--max-tokens", "max_tokens", int, "most tokens to generate (default: the profile's)"),
    ("--temperature", "temperature", float, "sampling temperature; 0 = greedy (default: the profile's)"),
    ("--top-p", "top_p", float, "nucleus sampling probability mass (default: the profile's)"),
    ("--top-k", "top_k", int, "sample from the k most likely tokens; 0 = off (default: the profile's)"),
    ("--seed", "seed", int, "random seed"),
    ("--repetition-penalty", "repetition_penalty", float, "repetition penalty (> 0; 1 = off)"),
    ("--presence-penalty", "presence_penalty", float, "presence penalty (-2..2)"),
    ("--frequency-penalty", "frequency_penalty", float, "frequency penalty (-2..2)"),
)

_HELP = """\
Commands: /reset clears the conversation, /history shows it, /exit (or Ctrl-D) quits, /help shows this.
Ctrl-C stops the answer being generated; what was written stays in the conversation, marked [stopped].
Start a message with // to send a line that begins with /."""


def register(subparsers: Any) -> None:
    from koserve.cli.conventions import add_alias, add_profile, add_target, add_time  # noqa: PLC0415

    p = subparsers.add_parser(
        "chat",
        help="chat with a served model (one-shot or interactive)",
        description="Send a message to a koserve model on Triton and stream the reply. Without PROMPT (and with a "
        "terminal on stdin) starts an interactive session that keeps the conversation.",
        epilog='example: koserve chat -p akallama-70b "네 이름은 뭐야?"',
    )
    p.add_argument("prompt", nargs="?", help="the message; omit for an interactive session; '-' reads stdin")
    add_profile(p, env=True)
    p.add_argument("--url", default=os.environ.get("KOSERVE_URL"), metavar="URL",
                   help="Triton: host:port for gRPC (default: 127.0.0.1:8001) or http://host:port for HTTP "
                   "(default: 127.0.0.1:8000); env KOSERVE_URL")
    p.add_argument("--protocol", choices=("grpc", "http"),
                   help="wire protocol (default: guessed from --url, http:// → http)")
    add_target(p)
    system = p.add_mutually_exclusive_group()
    system.add_argument("--system", help="system prompt (default: the profile's own)")
    system.add_argument("--no-system", action="store_true", help="send no system prompt")
    for flag, dest, typ, help_text in _SAMPLING_FLAGS:
        p.add_argument(flag, dest=dest, type=typ, help=help_text)
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop string (repeatable)")
    add_time(p, "--request-timeout", default="2m", help="time allowed per reply")
    add_alias(p, "--timeout", "--request-timeout", dest="request_timeout", type=_duration, metavar="TIME")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder, to report prompt token counts")
    p.add_argument("--json", action="store_true", help="print each reply as JSON with token counts and timings")
    p.add_argument("--no-stream", action="store_true", help="wait for the whole reply instead of streaming it")
    p.set_defaults(func=run)


def _duration(text: str) -> float:
    from koserve.loadtest.durations import duration_arg  # noqa: PLC0415

    return duration_arg(text)


class _Stopped(Exception):
    """Ctrl-C stopped a reply; ``text`` is what had been written of it."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _utf8_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        enc = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if enc != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8", errors="replace")


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params = {dest: getattr(args, dest) for _, dest, _, _ in _SAMPLING_FLAGS}
    params["stop"] = args.stop
    params["timeout"] = args.request_timeout
    if args.no_system:
        params["system_prompt"] = None
    elif args.system is not None:
        params["system_prompt"] = args.system
    return {k: v for k, v in params.items() if v is not None or k == "system_prompt"}


def _reply(client: Any, messages: list[dict[str, str]], params: dict[str, Any], args: argparse.Namespace):
    """Send one turn; stream it to stdout unless --json / --no-stream. Returns the ChatResult; raises
    :class:`_Stopped` with the text written so far when Ctrl-C stops the reply."""
    if args.json or args.no_stream:
        try:
            result = client.chat(messages, **params)
        except KeyboardInterrupt:
            raise _Stopped("") from None
        if args.json:
            print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
        else:
            sys.stdout.write(result.text)
            _end_reply(result.finish_reason)
        return result
    stream = client.stream(messages, **params)
    written: list[str] = []
    wrote = False
    with _one_interrupt():
        try:
            for delta in stream:
                sys.stdout.write(delta)
                sys.stdout.flush()
                written.append(delta)
                wrote = True
        except KeyboardInterrupt:
            raise _Stopped("".join(written)) from None
        finally:
            stream.close()  # stops the generation on the server and reads the stream to its end
            if wrote:
                _end_reply(_finish_reason(stream))
    return stream.result


@contextlib.contextmanager
def _one_interrupt():
    """The first Ctrl-C stops the answer (KeyboardInterrupt); more Ctrl-Cs while the stream is being ended are
    ignored, so the stop reaches the server and no request is left in flight inside Triton."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = False

    def on_sigint(signum, frame):
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _finish_reason(stream: Any) -> str | None:
    try:
        return stream.result.finish_reason
    except Exception:  # noqa: BLE001 - a failed stream reports its own error
        return None


def _end_reply(finish_reason: str | None) -> None:
    """End the reply's line; a reply cut at --max-tokens says so: a dim ``[length]`` after it on a terminal, a
    plain ``[length]`` line on stderr otherwise (stdout stays exactly the reply)."""
    cut = finish_reason == "length"
    if cut and sys.stdout.isatty():
        sys.stdout.write(" \x1b[2m[length]\x1b[0m")
    sys.stdout.write("\n")
    sys.stdout.flush()
    if cut and not sys.stdout.isatty():
        print("[length]", file=sys.stderr, flush=True)


def _server_profile(client: Any, timeout: float = 3.0) -> str | None:
    """The profile the server's repository was rendered for: the ``profile`` parameter of the target model's
    config, else of ``preprocessing`` (read with tritonclient's get_model_config); None when it cannot tell."""
    try:
        if client.protocol == "grpc":
            import tritonclient.grpc as tc  # noqa: PLC0415

            conn = tc.InferenceServerClient(client.url)
        else:
            import tritonclient.http as tc  # noqa: PLC0415

            scheme, _, host = client.url.partition("://")
            conn = tc.InferenceServerClient(host, ssl=scheme == "https", connection_timeout=timeout,
                                            network_timeout=timeout)
    except Exception:  # noqa: BLE001 - a check, never a failure
        return None
    try:
        for model in dict.fromkeys((client.model, "preprocessing")):
            try:
                if client.protocol == "grpc":
                    config = conn.get_model_config(model, as_json=True, client_timeout=timeout).get("config", {})
                else:
                    config = conn.get_model_config(model)
            except Exception:  # noqa: BLE001
                continue
            value = (config.get("parameters", {}).get("profile") or {}).get("string_value")
            if value:
                return value
        return None
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass


def _warn_profile_mismatch(client: Any) -> None:
    served = _server_profile(client)
    if served and served != client.profile.name:
        print(f"koserve: warning: the server at {client.url} serves the profile {served!r} but this chat uses "
              f"{client.profile.name!r}: its chat template and stop words will not match the model "
              f"(use -p {served})", file=sys.stderr, flush=True)


def _repl(client: Any, params: dict[str, Any], args: argparse.Namespace) -> int:
    try:
        import readline  # noqa: F401,PLC0415 - line editing and history for input()
    except ImportError:  # pragma: no cover - not on every platform
        pass
    from koserve.client import ClientError  # noqa: PLC0415
    from koserve.errors import InvalidRequestError  # noqa: PLC0415

    print(f"koserve chat · {client.profile.display_name} · {client.url} ({client.protocol}, {client.model})",
          file=sys.stderr)
    print(_HELP, file=sys.stderr)
    history: list[dict[str, str]] = []
    stopped: set[int] = set()  # indexes of assistant messages cut by Ctrl-C

    def keep_stopped(text: str) -> None:
        if text:
            history.append({"role": "assistant", "content": text})
            stopped.add(len(history) - 1)
            print("(stopped: the partial answer stays in the conversation, marked [stopped] in /history)",
                  file=sys.stderr)
        else:
            history.pop()
            print("(stopped before any answer: this turn is dropped from the conversation)", file=sys.stderr)

    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history.clear()
            stopped.clear()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if text == "/history":
            for i, m in enumerate(history):
                print(f"[{m['role']}] {m['content']}" + (" [stopped]" if i in stopped else ""))
            continue
        if text in ("/help", "/?"):
            print(_HELP, file=sys.stderr)
            continue
        if text.startswith("//"):
            line = line.lstrip()[1:]
        elif text.startswith("/"):
            print(f"unknown command {text.split()[0]}; try /help", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        try:
            result = _reply(client, history, params, args)
        except _Stopped as exc:
            keep_stopped(exc.text)
            continue
        except KeyboardInterrupt:
            history.pop()
            print("(stopped before any answer: this turn is dropped from the conversation)", file=sys.stderr)
            continue
        except (ClientError, InvalidRequestError) as exc:
            history.pop()
            print(f"koserve: error: {exc}", file=sys.stderr)
            continue
        if result.finish_reason == "cancelled":
            keep_stopped(result.text)
            continue
        history.append({"role": "assistant", "content": result.text})


def run(args: argparse.Namespace) -> int:
    from koserve.client import ChatClient  # noqa: PLC0415

    _utf8_stdio()
    params = _params(args)
    prompt = args.prompt
    if prompt == "-":
        prompt = sys.stdin.read()
        if not prompt.strip():
            print("koserve: error: no prompt on stdin", file=sys.stderr)
            return 2
    with ChatClient(args.url, args.profile, protocol=args.protocol, model=args.target,
                    tokenizer=args.tokenizer) as client:
        _warn_profile_mismatch(client)
        if prompt is None:
            if not sys.stdin.isatty():
                prompt = sys.stdin.read()
                if not prompt.strip():
                    print("koserve: error: give a PROMPT, pipe one on stdin, or run in a terminal", file=sys.stderr)
                    return 2
            else:
                return _repl(client, params, args)
        _reply(client, [{"role": "user", "content": prompt}], params, args)
    return 0
