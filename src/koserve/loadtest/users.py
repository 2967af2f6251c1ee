"""Locust users that stream LLM responses and time every token.

Import this module only inside a locust process (it imports locust, which monkey-patches the
standard library with gevent, and initialises gRPC's gevent integration).

- :class:`TritonGrpcUser` — Triton gRPC ``stream_infer`` (raw ``tritonclient.grpc``), one stream per
  request, ``enable_empty_final_response`` so the end of a decoupled response stream is known.
- :class:`TritonHttpUser` — Triton HTTP ``/v2/models/<model>/generate_stream`` (Server-Sent Events).
- :class:`OpenAIChatUser` — an OpenAI-compatible ``/v1/chat/completions`` with ``stream: true``.

The users talk to the server with raw protocol clients rather than :mod:`koserve.client`, so the
load generator adds as little per-token work as possible and measures exactly what is on the wire.
The Triton users send the prompt rendered with the profile's chat template (as the koserve client
does); synthetic prompts are sent as they are (like genai-perf), so their token count is the ISL. Every record
also carries ``prompt_tokens``, what the model received: the gateway's ``usage.prompt_tokens``, else the prompt as
rendered (chat template, system prompt) counted with the real tokenizer.

Each process writes ``status-<pid>.json`` into the records folder every second (requests started, finished,
failed, in flight, chunks streamed, why it stopped): ``koserve loadtest`` prints live progress from it.
"""

from __future__ import annotations

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any gRPC channel exists

import json  # noqa: E402
import os  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
import numpy as np  # noqa: E402
from gevent.event import Event  # noqa: E402
from geventhttpclient import HTTPClient  # noqa: E402
from locust import User, events, task  # noqa: E402
from locust.exception import StopUser  # noqa: E402

from koserve.loadtest.metrics import RecordWriter, ServerTokenCount, StreamTimer, fire_locust_events  # noqa: E402
from koserve.loadtest.prompts import (  # noqa: E402
    ChatPromptSource,
    LengthSampler,
    LoadRequest,
    SyntheticPromptSource,
    TokenCounter,
    corpus_text,
    load_prompt_set,
)
from koserve.loadtest.shapes import PoissonArrivals  # noqa: E402

log = logging.getLogger("koserve.loadtest")
FAILURE_PAUSE_S = 0.1
STATUS_INTERVAL_S = 1.0


class LoadContext:
    """State shared by all users of one locust process: prompts, records, limits, arrivals."""

    def __init__(self, environment) -> None:
        import random

        from koserve.profiles import load_profile

        opts = environment.parsed_options
        self.environment = environment
        self.opts = opts
        self.profile = load_profile(opts.model_profile)
        self.counter = self._token_counter(opts.tokenizer)
        # distinct but repeatable streams per locust worker process (distributed mode)
        seed = opts.seed + 7919 * int(getattr(environment.runner, "worker_index", 0) or 0)
        self.seed = seed
        rng = random.Random(seed)
        osl = LengthSampler(opts.osl, opts.osl_stddev, rng=rng)
        if opts.prompts == "synthetic":
            corpus = corpus_text(load_prompt_set("all"))
            isl = LengthSampler(opts.isl, opts.isl_stddev, rng=rng)
            self.source = SyntheticPromptSource(corpus, isl=isl, osl=osl, seed=seed, counter=self.counter)
        else:
            from koserve.chat import render_prompt

            prompts = load_prompt_set(opts.prompts)
            self.source = ChatPromptSource(
                prompts,
                render=lambda messages: render_prompt(self.profile, messages),
                osl=osl,
                seed=seed,
                counter=self.counter,
            )
        self.writer = RecordWriter(opts.records_dir) if opts.records_dir else None
        self.arrivals = PoissonArrivals(opts.request_rate, seed=seed) if opts.shape == "poisson" else None
        self.max_requests = max(0, opts.max_requests)
        self.warmup_s = max(0.0, float(getattr(opts, "warmup_seconds", 0.0) or 0.0))
        self.warmup_requests = max(0, int(getattr(opts, "warmup_requests", 0) or 0))
        self.first_send: float | None = None
        self.claimed = 0  # requests started, warm-up included
        self.started = 0  # measured requests started (what --max-requests counts)
        self.in_flight = 0
        self.finished = 0
        self.failed = 0
        self.chunks = 0  # non-empty chunks streamed so far, in-flight requests included
        self.stop_reason: str | None = None
        self.created = time.time()
        self.warmup_in_flight = 0
        self._warmup_drained = Event()
        self._warmup_drained.set()
        self.quitting = False
        self._model_prompt_tokens: dict[str, int | None] = {}
        if opts.records_dir:
            gevent.spawn(self._status_loop)

    def _token_counter(self, spec: str) -> TokenCounter | None:
        if spec == "none":
            return None
        if spec == "auto":
            try:
                from koserve.fixtures import tokenizer_dir

                return TokenCounter(tokenizer_dir(self.profile.tokenizer_family))
            except Exception as exc:  # noqa: BLE001 - no tokenizer: count chunks
                log.warning("no tokenizer for %s (%s): output tokens = streamed chunks", self.profile.name, exc)
                return None
        return TokenCounter(spec)

    def claim(self) -> str | None:
        """Reserve one request: ``"warmup"``, ``"measured"`` (counted against ``--max-requests``) or None when the
        budget is spent."""
        if self.quitting:
            return None
        now = time.monotonic()
        if self.first_send is None:
            self.first_send = now
        warmup = self.claimed < self.warmup_requests or now < self.first_send + self.warmup_s
        if not warmup and self.max_requests and self.started >= self.max_requests:
            return None
        self.claimed += 1
        if warmup:
            return "warmup"
        self.started += 1
        return "measured"

    def count_chunk(self) -> None:
        self.chunks += 1

    # The warm-up is a phase of its own (as in AIPerf): measured requests start once every warm-up request has
    # finished, so no warm-up stream shares the measured window (it would take capacity its tokens do not count).
    def warmup_started(self, warmup: bool) -> None:
        if warmup:
            self.warmup_in_flight += 1
            self._warmup_drained.clear()

    def warmup_finished(self, warmup: bool) -> None:
        if warmup:
            self.warmup_in_flight -= 1
            if self.warmup_in_flight == 0:
                self._warmup_drained.set()

    def wait_for_warmup(self, timeout: float) -> None:
        if self.warmup_in_flight:
            self._warmup_drained.wait(timeout)

    def maybe_quit(self) -> None:
        """Stop the whole run once the request budget is spent and nothing is in flight."""
        if self.max_requests and self.started >= self.max_requests and self.in_flight == 0 and not self.quitting:
            self.quitting = True
            self.stop_reason = "max_requests"
            self.write_status()
            runner = self.environment.runner
            log.info("request budget of %d spent: stopping", self.max_requests)
            gevent.spawn_later(0.1, runner.quit)

    def model_prompt_tokens(self, key: str | None, render: Callable[[], str]) -> int | None:
        """Tokens the model receives for the prompt ``render()`` makes (cached by prompt id when ``key``)."""
        if self.counter is None:
            return None
        if key is not None and key in self._model_prompt_tokens:
            return self._model_prompt_tokens[key]
        n = self.counter.prompt_tokens(render())
        if key is not None and len(self._model_prompt_tokens) < 10_000:
            self._model_prompt_tokens[key] = n
        return n

    def write_status(self) -> None:
        """``status-<pid>.json`` in the records folder (replaced atomically): what the progress line shows."""
        if not self.opts.records_dir:
            return
        status = {"pid": os.getpid(), "time": time.time(), "since": self.created, "claimed": self.claimed,
                  "started": self.started,
                  "in_flight": self.in_flight, "finished": self.finished, "failed": self.failed,
                  "chunks": self.chunks, "stop_reason": self.stop_reason}
        path = os.path.join(self.opts.records_dir, f"status-{os.getpid()}.json")
        try:
            with open(path + ".tmp", "w", encoding="utf-8") as fh:
                json.dump(status, fh)
            os.replace(path + ".tmp", path)
        except OSError as exc:  # progress is a convenience: never fail the run for it
            log.debug("status file: %s", exc)

    def _status_loop(self) -> None:
        while True:
            self.write_status()
            gevent.sleep(STATUS_INTERVAL_S)


_contexts: dict[int, LoadContext] = {}


def load_context(environment) -> LoadContext:
    ctx = _contexts.get(id(environment))
    if ctx is None:
        ctx = _contexts[id(environment)] = LoadContext(environment)
    return ctx


@events.init.add_listener
def _prepare_context(environment, runner=None, **_kw) -> None:
    """Load prompts, tokenizer and profile before any user starts (not inside the first request's timing)."""
    from locust.runners import MasterRunner

    opts = environment.parsed_options
    if opts is None or not hasattr(opts, "model_profile") or isinstance(runner, MasterRunner):
        return
    t0 = time.perf_counter()
    load_context(environment)
    log.info("koserve load context ready in %.2fs", time.perf_counter() - t0)


@events.test_start.add_listener
def _cpu_start(environment, **_kw) -> None:
    ctx = _contexts.get(id(environment))
    if ctx is not None:
        ctx.cpu_start = (time.process_time(), time.monotonic())


@events.test_stop.add_listener
def _cpu_stop(environment, **_kw) -> None:
    """Write this process's CPU use during the test (``process-<pid>.json``): a saturated load generator
    measures itself, not the server."""
    ctx = _contexts.get(id(environment))
    start = getattr(ctx, "cpu_start", None)
    if ctx is None or start is None or not ctx.opts.records_dir:
        return
    cpu, wall = time.process_time() - start[0], time.monotonic() - start[1]
    info = {"pid": os.getpid(), "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
            "cpu_percent": round(100.0 * cpu / wall, 1) if wall > 0 else None, "requests": ctx.started}
    path = os.path.join(ctx.opts.records_dir, f"process-{os.getpid()}.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(info, fh)


@events.quitting.add_listener
def _close_writers(environment, **_kw) -> None:
    ctx = _contexts.pop(id(environment), None)
    if ctx is not None:
        ctx.write_status()
    if ctx is not None and ctx.writer is not None:
        ctx.writer.close()


class LLMStreamUser(User):
    """One user = one stream at a time. Subclasses implement :meth:`stream`."""

    abstract = True
    protocol = "llm"

    def wait_time(self) -> float:  # locust calls this between tasks; arrivals wait inside the task
        return 0.0

    def on_start(self) -> None:
        self.ctx = load_context(self.environment)
        self.timeout = float(self.ctx.opts.request_timeout)
        self._n = 0

    def next_request_id(self) -> str:
        """A request id unique across users and locust processes (koserve's postprocessing keys its per-request
        detokenizer state on it; without one, characters split over several tokens cannot be joined)."""
        self._n += 1
        return f"lt-{os.getpid()}-{id(self):x}-{self._n}"

    @task
    def generate(self) -> None:
        ctx = self.ctx
        if ctx.arrivals is not None:
            gevent.sleep(ctx.arrivals.next_delay())
        kind = ctx.claim()
        if kind is None:
            ctx.maybe_quit()
            raise StopUser()
        if kind == "measured":
            ctx.wait_for_warmup(self.timeout)
        request = ctx.source.next()
        prompt_tokens = self.model_prompt_tokens(request)
        ctx.in_flight += 1
        ctx.warmup_started(kind == "warmup")
        timer = StreamTimer(
            protocol=self.protocol,
            model=self.model_name(),
            prompt_id=request.prompt_id,
            input_chars=len(request.text),
            input_tokens=request.input_tokens,
            max_tokens=request.max_tokens,
            concurrency=ctx.in_flight,
            prompt_tokens=prompt_tokens,
            warmup=kind == "warmup",
            on_chunk=ctx.count_chunk,
        )
        error: str | None = None
        usage_tokens: int | None = None
        try:
            usage_tokens = self.stream(request, timer)
        except gevent.GreenletExit:
            ctx.in_flight -= 1  # stopped by locust mid-request: not a measurement
            ctx.warmup_finished(kind == "warmup")
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is a measured failure
            error = _message(exc)
        ctx.in_flight -= 1
        ctx.warmup_finished(kind == "warmup")
        count = (lambda _text: usage_tokens) if usage_tokens else ctx.counter
        record = timer.finish(error=error, count_tokens=count)
        ctx.finished += 1
        ctx.failed += record.error is not None
        if ctx.writer is not None:
            ctx.writer.write(record)
        fire_locust_events(self.environment.events.request.fire, record)
        ctx.maybe_quit()
        if error is not None:
            gevent.sleep(FAILURE_PAUSE_S)  # a dead server must not turn into a busy loop of failures

    def model_name(self) -> str:
        return self.ctx.opts.target_model

    def model_prompt_tokens(self, request: LoadRequest) -> int | None:
        """Tokens the model receives for ``request`` (Triton users send the rendered prompt as ``text_input``)."""
        return request.model_prompt_tokens

    def generation_inputs(self, request: LoadRequest) -> dict:
        """Triton tensor values for one request (names from the tensorrtllm_backend contract)."""
        gen = self.ctx.profile.generation
        values: dict = {
            "text_input": request.text,
            "max_tokens": request.max_tokens,
            "end_id": self.ctx.profile.end_id,
            "pad_id": gen.pad_id,
            "stream": True,
        }
        if gen.stop_words:
            values["stop_words"] = list(gen.stop_words)
        if self.ctx.opts.ignore_eos == "true":
            values["min_length"] = request.max_tokens
        return values

    def stream(self, request: LoadRequest, timer: StreamTimer) -> int | None:
        """Send ``request``, feed every text piece to ``timer``; return a server token count if known."""
        raise NotImplementedError


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


# -- gRPC ------------------------------------------------------------------------------------------------------


def _grpc_target(host: str) -> str:
    if "://" in host:
        parts = urlsplit(host)
        return parts.netloc
    return host


class TritonGrpcUser(LLMStreamUser):
    """Triton ``stream_infer`` over gRPC, one bidirectional stream per request."""

    abstract = False
    protocol = "grpc"

    def on_start(self) -> None:
        super().on_start()
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(_grpc_target(self.host or "127.0.0.1:8001"))
        self._batched = _model_is_batched(self.ctx, self.client, self.model_name())

    def on_stop(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass

    def _inputs(self, request: LoadRequest) -> list:
        g = self._grpc
        tensors = []
        for name, value in self.generation_inputs(request).items():
            if name in ("text_input", "stop_words"):
                arr = np.array([v.encode("utf-8") for v in ([value] if isinstance(value, str) else value)],
                               dtype=np.object_)
                dtype = "BYTES"
            elif name == "stream":
                arr, dtype = np.array([bool(value)], dtype=bool), "BOOL"
            else:
                arr, dtype = np.array([int(value)], dtype=np.int32), "INT32"
            arr = arr.reshape(1, -1) if self._batched else arr
            t = g.InferInput(name, list(arr.shape), dtype)
            t.set_data_from_numpy(arr)
            tensors.append(t)
        return tensors

    def stream(self, request: LoadRequest, timer: StreamTimer) -> int | None:
        done = Event()
        failure: list[str] = []
        tokens = ServerTokenCount()

        def callback(result, error) -> None:
            if error is not None:
                failure.append(_message(error))
                done.set()
                return
            out = result.as_numpy("text_output")
            if out is not None and out.size:
                timer.chunk("".join(
                    v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in out.ravel()
                ))
                if any(o.name == "num_output_tokens" for o in result.get_response().outputs):
                    tokens.add(result.as_numpy("num_output_tokens").ravel().tolist())
                else:
                    tokens.add(None)
            params = result.get_response().parameters
            if "triton_final_response" in params and params["triton_final_response"].bool_param:
                done.set()

        self.client.start_stream(callback=callback, stream_timeout=self.timeout)
        cancel = True
        try:
            self.client.async_stream_infer(
                self.model_name(),
                self._inputs(request),
                request_id=self.next_request_id(),
                enable_empty_final_response=True,
            )
            if not done.wait(self.timeout):
                raise TimeoutError(f"no final response within {self.timeout:g}s")
            # the final response or an error response ended the request: cancelling a call the server has just
            # written to is the pattern of Triton 2.51's cancellation abort (docs/reliability.md)
            cancel = False
        finally:
            self.client.stop_stream(cancel_requests=cancel)
        if failure:
            raise RuntimeError(failure[0])
        return tokens.total


def _model_is_batched(ctx: LoadContext, client, model: str) -> bool:
    """Whether ``model`` has ``max_batch_size > 0`` (then every input carries a leading batch dim)."""
    cache = ctx.__dict__.setdefault("_batched", {})
    if model not in cache:
        try:
            config = client.get_model_config(model, as_json=True, client_timeout=10.0)
            cache[model] = int(config.get("config", {}).get("max_batch_size", 0) or 0) > 0
        except Exception as exc:  # noqa: BLE001 - the request itself will then report the server's error
            log.warning("could not read the config of %s: %s", model, _message(exc))
            return True
    return cache[model]


# -- HTTP (SSE) ------------------------------------------------------------------------------------------------


def _http_client(base: str, timeout: float) -> tuple[HTTPClient, str]:
    parts = urlsplit(base if "://" in base else f"http://{base}")
    client = HTTPClient(
        parts.hostname or "127.0.0.1",
        parts.port or (443 if parts.scheme == "https" else 80),
        ssl=parts.scheme == "https",
        connection_timeout=min(timeout, 10.0),
        network_timeout=timeout,
        concurrency=1,
    )
    return client, parts.path.rstrip("/")


def _iter_sse(response, deadline: float):
    """Yield the ``data:`` payloads of a Server-Sent Events response."""
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("stream did not finish in time")
        line = response.readline(b"\n")
        if not line:
            return
        line = line.strip()
        if line.startswith(b"data:"):
            yield line[5:].strip()


class _SSEUser(LLMStreamUser):
    abstract = True

    def on_start(self) -> None:
        super().on_start()
        self.http, self.prefix = _http_client(self.host or "http://127.0.0.1:8000", self.timeout)

    def on_stop(self) -> None:
        self.http.close()

    def post_stream(self, path: str, body: dict):
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        response = self.http.post(self.prefix + path, body=payload, headers=headers)
        if response.status_code != 200:
            text = response.read().decode("utf-8", errors="replace")
            try:
                text = json.loads(text).get("error", text)
                if isinstance(text, dict):
                    text = text.get("message", json.dumps(text, ensure_ascii=False))
            except (json.JSONDecodeError, AttributeError):
                pass
            raise RuntimeError(f"HTTP {response.status_code}: {text}")
        return response


class TritonHttpUser(_SSEUser):
    """Triton ``generate_stream`` (SSE): one ``data:`` event per response, ``text_output`` deltas."""

    abstract = False
    protocol = "http"

    def stream(self, request: LoadRequest, timer: StreamTimer) -> int | None:
        body = {"id": self.next_request_id(), **self.generation_inputs(request)}
        response = self.post_stream(f"/v2/models/{self.model_name()}/generate_stream", body)
        tokens = ServerTokenCount()
        try:
            for data in _iter_sse(response, time.monotonic() + self.timeout):
                event = json.loads(data)
                if "error" in event:
                    raise RuntimeError(str(event["error"]))
                if "text_output" not in event:
                    continue
                text = event["text_output"]
                if isinstance(text, list):
                    text = "".join(map(str, text))
                timer.chunk(text)
                tokens.add(event.get("num_output_tokens"))
        finally:
            response.release()
        return tokens.total


class OpenAIChatUser(_SSEUser):
    """An OpenAI-compatible gateway: ``/v1/chat/completions`` with ``stream: true``."""

    abstract = False
    protocol = "openai"

    def model_name(self) -> str:
        return self.ctx.opts.openai_model or self.ctx.profile.name

    def model_prompt_tokens(self, request: LoadRequest) -> int | None:
        """The gateway renders the messages with the profile's template and system prompt (its own
        ``usage.prompt_tokens`` replaces this count when it sends one)."""
        from koserve.chat import render_prompt

        key = None if request.prompt_id.startswith("synthetic-") else request.prompt_id
        return self.ctx.model_prompt_tokens(key, lambda: render_prompt(self.ctx.profile, request.messages))

    def stream(self, request: LoadRequest, timer: StreamTimer) -> int | None:
        body = {
            "model": self.model_name(),
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        usage: int | None = None
        finished = False
        response = self.post_stream("/v1/chat/completions", body)
        try:
            for data in _iter_sse(response, time.monotonic() + self.timeout):
                if data == b"[DONE]":
                    finished = True
                    break
                event = json.loads(data)
                if "error" in event:
                    err = event["error"]
                    raise RuntimeError(err.get("message", str(err)) if isinstance(err, dict) else str(err))
                for choice in event.get("choices") or ():
                    timer.chunk((choice.get("delta") or {}).get("content") or "")
                if event.get("usage"):
                    usage = int(event["usage"].get("completion_tokens") or 0) or None
                    timer.server_prompt_tokens(event["usage"].get("prompt_tokens"))
        finally:
            response.release()
        if not finished:
            raise RuntimeError("stream ended without [DONE]")
        return usage
