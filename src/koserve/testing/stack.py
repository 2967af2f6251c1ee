"""Render a CPU repository for a profile and run a real tritonserver on it: used by ``koserve demo``, the test
session fixtures (``tests/conftest.py``) and ``scripts/bench_serving.py``."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from koserve.errors import ConfigError

PROFILE_FAMILY = {"akallama-70b": "llama3", "komt-13b": "llama2"}


@dataclass(frozen=True)
class TritonEndpoints:
    """A running koserve Triton server.

    ``grpc_url`` is ``127.0.0.1:PORT`` (tritonclient.grpc), ``http_url`` is ``http://127.0.0.1:PORT``,
    ``metrics_url`` the Prometheus endpoint. Models: ``ensemble``, ``tensorrt_llm_bls``, ``tensorrt_llm`` (CPU
    stand-in), ``preprocessing``, ``postprocessing`` — NVIDIA's names. ``mode`` is ``hf`` (tiny random-weight
    checkpoint: tokens are meaningless) or ``replay`` (deterministic token sequence from ``replay_text_file``,
    or the stand-in's default text). ``max_input_len`` / ``max_seq_len`` are the limits rendered into the repository.
    """

    profile: str
    mode: str
    grpc_url: str
    http_url: str
    metrics_url: str
    repo: Path
    tokenizer_dir: Path
    max_input_len: int
    max_seq_len: int
    log_path: Path
    server: object  # the TritonServer (is_alive(), is_ready(), log_tail())
    engine_backend: str = "trtllm"  # the engine step rendered as tensorrt_llm: trtllm (stand-in) or pytorch (LLM API)


@contextlib.contextmanager
def serve_cpu(
    profile: str,
    mode: str = "hf",
    *,
    replay_text_file: Path | None = None,
    replay_delay_ms: float = 0.0,
    max_input_len: int | None = None,
    max_seq_len: int | None = None,
    max_batch_size: int | None = None,
    bls_instances: int = 1,
    postprocessing_max_queue_delay_us: int | None = None,
    bls_stream_send_share: float | None = None,
    bls_stream_max_interval_us: int | None = None,
    bls_stream_max_wait_gaps: float | None = None,
    ensemble_all_outputs: bool | None = None,
    guided_decoding: bool | None = None,
    engine_backend: str = "trtllm",
    workdir: Path | None = None,
    ready_timeout: float = 180.0,
    echo: bool = False,
    http_port: int = 0,
    grpc_port: int = 0,
    metrics_port: int = 0,
    host: str = "127.0.0.1",
    extra_args: tuple[str, ...] = (),
) -> Iterator[TritonEndpoints]:
    """Render a CPU repository (``hf``: the profile family's tiny checkpoint; ``replay``) and serve it; always stops
    the server and removes the repository it rendered. ``engine_backend``: ``trtllm`` renders the CPU stand-in's
    ``tensorrt_llm`` (the C++ backend's interface), ``pytorch`` the LLM API engine step (koserve.llmapi_engine) on
    the stand-in's LLM API object."""
    from koserve.fixtures import tiny_model_dir, tokenizer_dir  # noqa: PLC0415
    from koserve.repo.render import RenderOptions, render_repository  # noqa: PLC0415
    from koserve.cpu_engine.pytriton_server import ServerOptions, cpu_triton_server  # noqa: PLC0415

    family = PROFILE_FAMILY.get(profile)
    if family is None:
        from koserve.profiles import load_profile  # noqa: PLC0415

        family = load_profile(profile).tokenizer_family
    if mode not in ("hf", "replay"):
        raise ConfigError(f"mode must be 'hf' or 'replay', got {mode!r}")
    own_dir = workdir is None
    base = Path(tempfile.mkdtemp(prefix=f"koserve-{profile}-{mode}-")) if own_dir else Path(workdir)
    try:
        tok = tokenizer_dir(family)
        opts = RenderOptions(
            profile=profile,
            tokenizer_dir=tok,
            out=base / "repo",
            cpu_model_dir=tiny_model_dir(family) if mode == "hf" else None,
            replay=mode == "replay",
            replay_text_file=replay_text_file,
            replay_delay_ms=replay_delay_ms,
            max_input_len=max_input_len,
            max_seq_len=max_seq_len,
            max_batch_size=max_batch_size,
            bls_instances=bls_instances,
            engine_backend=engine_backend,
            force=True,
        ).with_overrides(  # None: the render default
            postprocessing_max_queue_delay_us=postprocessing_max_queue_delay_us,
            bls_stream_send_share=bls_stream_send_share,
            bls_stream_max_interval_us=bls_stream_max_interval_us,
            bls_stream_max_wait_gaps=bls_stream_max_wait_gaps,
            ensemble_all_outputs=ensemble_all_outputs,
            guided_decoding=guided_decoding,
        )
        rendered = render_repository(opts)
        server = cpu_triton_server(
            ServerOptions(rendered.path, host=host, http_port=http_port, grpc_port=grpc_port,
                          metrics_port=metrics_port, extra_args=tuple(extra_args)),
            log_path=base / "tritonserver.log",
            echo=echo,
        )
        server.start(ready_timeout)
        try:
            yield TritonEndpoints(
                profile=profile,
                mode=mode,
                grpc_url=server.grpc_url,
                http_url=server.http_url,
                metrics_url=server.metrics_url,
                repo=rendered.path,
                tokenizer_dir=tok,
                max_input_len=rendered.context["max_input_len"],
                max_seq_len=rendered.context["max_seq_len"],
                log_path=server.log_path,
                server=server,
                engine_backend=engine_backend,
            )
        finally:
            server.stop()
    finally:
        if own_dir:
            shutil.rmtree(base, ignore_errors=True)
