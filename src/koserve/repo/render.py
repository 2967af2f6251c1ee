"""``koserve repo render``: fill the ``model_repository/`` templates into a servable Triton model repository.

``engine_backend`` picks the engine step (the model ``tensorrt_llm`` either way): ``trtllm`` (default) the C++
backend on a TensorRT engine, ``pytorch`` the LLM API step (template ``tensorrt_llm_llmapi``, :mod:`koserve.llmapi_engine`)
on a Hugging Face checkpoint (``checkpoint_dir``) on GPU, or on the CPU stand-in's LLM API object for ``cpu_model_dir`` /
``replay``.

GPU (``engine_dir``): the C++ ``tensorrtllm`` backend config, sized from the engine's ``config.json`` (max batch
size, max input / sequence length, TP×PP), so Triton's limits never disagree with the engine's. CPU
(``cpu_model_dir`` or ``replay``): the python stand-in (template ``tensorrt_llm_cpu``) rendered as ``tensorrt_llm``.
The rendered folder also holds ``koserve_repo.json`` (what was rendered), which ``koserve serve`` reads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import jinja2

from koserve.errors import ConfigError
from koserve.guided.tokenizer_info import TOKENIZER_INFO_FILE, write_tokenizer_info
from koserve.triton_models.stream_defaults import (
    DEFAULT_MAX_INTERVAL_US,
    DEFAULT_MAX_WAIT_GAPS,
    DEFAULT_SEND_SHARE,
    MAX_INTERVAL_LIMIT_US,
    MAX_WAIT_GAPS_LIMIT,
)

REPO_INFO = "koserve_repo.json"
SERVING_MODELS = ("preprocessing", "postprocessing", "ensemble", "tensorrt_llm_bls")
ENGINE_BACKENDS = ("trtllm", "pytorch")
DEFAULT_POSTPROCESSING_MAX_QUEUE_DELAY_US = 1000


def templates_dir() -> Path:
    """``$KOSERVE_TEMPLATES``, else the templates shipped in the package (``koserve/repo/templates``: in a checkout a
    symlink to the top-level ``model_repository/``, in a wheel a copy of it)."""
    env = os.environ.get("KOSERVE_TEMPLATES")
    candidates = [Path(env)] if env else []
    candidates.append((Path(__file__).resolve().parent / "templates").resolve())
    for path in candidates:
        if (path / "ensemble" / "config.pbtxt").is_file():
            return path
    raise ConfigError(
        f"model repository templates not found (looked in {', '.join(map(str, candidates))}); set KOSERVE_TEMPLATES "
        "to a folder holding ensemble/config.pbtxt, or reinstall koserve (its wheel ships them)"
    )


@dataclass
class RenderOptions:
    """Inputs of ``koserve repo render`` (exactly one of engine_dir / checkpoint_dir / cpu_model_dir / replay)."""

    profile: str
    tokenizer_dir: Path
    out: Path
    engine_dir: Path | None = None
    # trtllm: the C++ backend (GPU: engine_dir). pytorch: the LLM API engine step (GPU: checkpoint_dir).
    engine_backend: str = "trtllm"
    checkpoint_dir: Path | None = None  # pytorch on GPU: a Hugging Face checkpoint (quantized or not)
    tp_size: int = 1  # pytorch on GPU: LLM(tensor_parallel_size=...), pipeline_parallel_size
    pp_size: int = 1
    max_num_tokens: int | None = None  # pytorch: LLM(max_num_tokens=...), default 8192
    kv_cache_free_gpu_memory_fraction: float = 0.9  # pytorch: KvCacheConfig(free_gpu_memory_fraction=...)
    enable_kv_cache_reuse: bool = True  # pytorch: KvCacheConfig(enable_block_reuse=...)
    cpu_model_dir: Path | None = None
    replay: bool = False
    replay_delay_ms: float = 0.0
    replay_text_file: Path | None = None
    # CPU only (GPU: from the engine)
    max_batch_size: int | None = None
    max_input_len: int | None = None
    max_seq_len: int | None = None
    triton_max_queue_delay_us: int = 0
    preprocessing_instances: int = 1
    postprocessing_instances: int = 1
    # > 0: Triton's dynamic batcher on postprocessing (several engine responses per execute call); 0: none.
    # Default 1000 µs: measured ≥ 0.8× direct-engine tokens/s at 64 streams and stable (docs/serving.md).
    postprocessing_max_queue_delay_us: int = DEFAULT_POSTPROCESSING_MAX_QUEUE_DELAY_US
    bls_instances: int = 1
    # BLS streamed responses (koserve.triton_models.outbox): share of time sending may take before a stream's tokens share
    # responses (0: one response per engine response, always), and the longest wait between two responses
    bls_stream_send_share: float = DEFAULT_SEND_SHARE
    bls_stream_max_interval_us: int = DEFAULT_MAX_INTERVAL_US
    bls_stream_max_wait_gaps: float = DEFAULT_MAX_WAIT_GAPS  # the same in engine gaps (0: no such limit)
    stream_idle_timeout_s: float = 60.0
    # tensorrt_llm's model_transaction_policy.decoupled (NVIDIA's ${decoupled_mode}), GPU and CPU stand-in alike.
    # True: streaming (ensemble, BLS, stream_infer). False: unary ModelInfer / HTTP infer on tensorrt_llm (and so on
    # the ensemble, which Triton then makes non-decoupled), one response per request; streaming=true is refused.
    engine_decoupled: bool = True
    # tensorrt_llm_bls's model_transaction_policy.decoupled (NVIDIA's ${decoupled_mode} for the BLS). False: unary
    # ModelInfer / HTTP /infer on tensorrt_llm_bls, one response per request; stream=true is refused.
    # None: as tensorrt_llm (a decoupled BLS exists to stream, and it can only stream from a decoupled engine).
    bls_decoupled: bool | None = None
    # Declare (and map from postprocessing) all of NVIDIA's optional ensemble outputs — logits, perf metrics,
    # kv-cache and draft stats, sequence_index — which koserve never sends. Off: batch_index, num_input_tokens and
    # num_output_tokens only. Each mapped output costs the ensemble CPU on every streamed response.
    ensemble_all_outputs: bool = False
    # TensorRT-LLM guided decoding (structured output): guided_decoding_backend xgrammar and NVIDIA's tokenizer-info
    # file written into tensorrt_llm/ (koserve.guided.tokenizer_info); off: both parameters empty
    guided_decoding: bool = False
    force: bool = False

    def with_overrides(self, **values) -> "RenderOptions":
        """A copy with the given fields set, except those given as None (None: keep the default)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


@dataclass(frozen=True)
class RenderedRepo:
    path: Path
    kind: str  # "gpu" | "cpu"
    profile_name: str
    world_size: int
    context: dict

    @property
    def models(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if (p / "config.pbtxt").is_file())


def read_repo_info(repo: Path) -> dict:
    """What ``koserve repo render`` wrote into ``repo`` (empty dict for a repository not rendered by koserve)."""
    path = Path(repo) / REPO_INFO
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is unreadable: {exc}") from None


def _check_positive(name: str, value) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{name} must be >= 1, got {value}")


def _bls_decoupled(opts: RenderOptions) -> bool:
    """The BLS's decoupled setting: as given, else as the engine's. A decoupled BLS over a non-decoupled engine is
    refused: the BLS exists to stream and streams from the engine, which then refuses streaming=true (as NVIDIA's
    C++ backend: "Streaming is only supported if model is deployed using decoupled mode")."""
    if opts.bls_decoupled is None:
        return bool(opts.engine_decoupled)
    if opts.bls_decoupled and not opts.engine_decoupled:
        raise ConfigError(
            "tensorrt_llm_bls decoupled (bls_decoupled=true) conflicts with tensorrt_llm not decoupled "
            "(--engine-not-decoupled): the BLS streams from tensorrt_llm, which then refuses streaming; leave "
            "bls_decoupled unset (it follows the engine) or render the engine decoupled"
        )
    return bool(opts.bls_decoupled)


def build_context(opts: RenderOptions) -> tuple[dict, str, int]:
    """The Jinja2 render context (DEVELOPERS.md, "Contracts between components"), the kind and the world size."""
    from koserve.profiles import load_profile  # noqa: PLC0415
    from koserve.profiles.loader import _DATA  # noqa: PLC0415

    modes = [opts.engine_dir is not None, opts.checkpoint_dir is not None, opts.cpu_model_dir is not None, opts.replay]
    if sum(modes) != 1:
        raise ConfigError("give exactly one of --engine DIR (GPU, trtllm), --checkpoint DIR (GPU, pytorch), "
                          "--cpu-model DIR (CPU, HF checkpoint) or --replay")
    if opts.engine_backend not in ENGINE_BACKENDS:
        raise ConfigError(f"engine backend must be one of {', '.join(ENGINE_BACKENDS)}, got {opts.engine_backend!r}")
    if opts.engine_dir is not None and opts.engine_backend != "trtllm":
        raise ConfigError("--engine DIR is a TensorRT engine (the trtllm backend); --engine-backend pytorch serves "
                          "a Hugging Face checkpoint: give --checkpoint DIR")
    if opts.checkpoint_dir is not None and opts.engine_backend != "pytorch":
        raise ConfigError("--checkpoint DIR is served by the LLM API engine step: add --engine-backend pytorch")
    profile = load_profile(opts.profile)
    builtin = _DATA / f"{opts.profile}.yaml"
    profile_file = builtin if builtin.is_file() else Path(opts.profile).expanduser().resolve()

    tok = Path(opts.tokenizer_dir).expanduser().resolve()
    if not (tok / "tokenizer.json").is_file():
        raise ConfigError(f"--tokenizer {tok}: no tokenizer.json there (a checkpoint or tokenizer folder is needed)")
    from koserve.text import load_tokenizer  # noqa: PLC0415

    tokenizer = load_tokenizer(tok)
    arch = profile.architecture
    for token_id in [*profile.generation.end_ids, profile.generation.pad_id]:
        if token_id >= tokenizer.vocab_size:
            raise ConfigError(
                f"profile {profile.name} uses token id {token_id} but the tokenizer at {tok} has only "
                f"{tokenizer.vocab_size} ids: wrong tokenizer for this profile?"
            )
    for n in ("max_batch_size", "max_input_len", "max_seq_len", "preprocessing_instances", "bls_instances"):
        _check_positive(n, getattr(opts, n))
    if opts.postprocessing_instances != 1:
        raise ConfigError(
            f"postprocessing_instances must be 1, got {opts.postprocessing_instances}: with more, a stream's "
            f"responses are split across processes and the per-request detokenizer breaks"
        )

    if not 0 <= opts.bls_stream_send_share <= 1:
        raise ConfigError(f"bls_stream_send_share must be in [0, 1], got {opts.bls_stream_send_share}")
    if not 0 <= opts.bls_stream_max_interval_us <= MAX_INTERVAL_LIMIT_US:
        raise ConfigError(
            f"bls_stream_max_interval_us must be in [0, {MAX_INTERVAL_LIMIT_US}], got {opts.bls_stream_max_interval_us}"
        )
    if not 0 <= opts.bls_stream_max_wait_gaps <= MAX_WAIT_GAPS_LIMIT:
        raise ConfigError(
            f"bls_stream_max_wait_gaps must be in [0, {MAX_WAIT_GAPS_LIMIT:g}], got {opts.bls_stream_max_wait_gaps}"
        )
    if opts.postprocessing_max_queue_delay_us < 0:
        raise ConfigError(
            f"postprocessing_max_queue_delay_us must be >= 0, got {opts.postprocessing_max_queue_delay_us}"
        )

    ctx: dict = {
        "profile_name": profile.name,
        "profile_file": str(profile_file),
        "tokenizer_dir": str(tok),
        "triton_max_queue_delay_us": int(opts.triton_max_queue_delay_us),
        "preprocessing_instances": opts.preprocessing_instances,
        "postprocessing_instances": opts.postprocessing_instances,
        "postprocessing_max_queue_delay_us": int(opts.postprocessing_max_queue_delay_us),
        "bls_instances": opts.bls_instances,
        "engine_decoupled": bool(opts.engine_decoupled),
        "bls_decoupled": _bls_decoupled(opts),
        "ensemble_all_outputs": bool(opts.ensemble_all_outputs),
        "bls_stream_send_share": float(opts.bls_stream_send_share),
        "bls_stream_max_interval_us": int(opts.bls_stream_max_interval_us),
        "bls_stream_max_wait_gaps": float(opts.bls_stream_max_wait_gaps),
        "stream_idle_timeout_s": opts.stream_idle_timeout_s,
        "engine_dir": "",
        "cpu_model_dir": "",
        "cpu_engine_mode": "",
        "replay_delay_ms": float(opts.replay_delay_ms),
        "replay_text_file": "",
        "engine_backend": opts.engine_backend,
        # the LLM API engine step (template tensorrt_llm_llmapi)
        "llm_runtime": "tensorrt_llm" if opts.checkpoint_dir is not None else "cpu_stand_in",
        "llm_model_dir": "",
        "max_num_tokens": int(opts.max_num_tokens or 8192),
        "kv_cache_free_gpu_memory_fraction": float(opts.kv_cache_free_gpu_memory_fraction),
        "enable_kv_cache_reuse": bool(opts.enable_kv_cache_reuse),
        "vocab_size": tokenizer.vocab_size,
        "end_ids": " ".join(str(i) for i in profile.generation.end_ids),
    }
    if not 0 < opts.kv_cache_free_gpu_memory_fraction <= 1:
        raise ConfigError(f"kv_cache_free_gpu_memory_fraction must be in (0, 1], got "
                          f"{opts.kv_cache_free_gpu_memory_fraction}")
    for n in ("tp_size", "pp_size", "max_num_tokens"):
        _check_positive(n, getattr(opts, n))
    if opts.checkpoint_dir is None and (opts.tp_size, opts.pp_size) != (1, 1):
        raise ConfigError("--tp / --pp apply to --checkpoint (pytorch on GPU); a TensorRT engine has its own, the "
                          "CPU stand-in runs one rank")
    if opts.engine_dir is not None:
        engine = Path(opts.engine_dir).expanduser().resolve()
        given = {k: getattr(opts, k) for k in ("max_batch_size", "max_input_len", "max_seq_len")}
        from koserve.engines.manifest import read_engine_limits  # noqa: PLC0415

        limits = read_engine_limits(engine)
        for key, value in given.items():
            if value is not None and value != getattr(limits, key):
                raise ConfigError(
                    f"--{key.replace('_', '-')} {value} disagrees with the engine's {key} {getattr(limits, key)} "
                    f"({engine / 'config.json'}); leave it out: it is read from the engine"
                )
        missing = [f"rank{r}.engine" for r in range(limits.world_size) if not (engine / f"rank{r}.engine").is_file()]
        if missing:
            raise ConfigError(f"engine folder {engine} lacks {', '.join(missing)} (world size {limits.world_size})")
        if opts.replay_text_file is not None or opts.replay_delay_ms:
            raise ConfigError("--replay-text / --replay-delay-ms only apply to --replay")
        ctx.update(
            engine_dir=str(engine),
            max_batch_size=limits.max_batch_size,
            max_input_len=limits.max_input_len,
            max_seq_len=limits.max_seq_len,
            tp_size=limits.tp_size,
            pp_size=limits.pp_size,
        )
        kind, world = "gpu", limits.world_size
    elif opts.checkpoint_dir is not None:
        ckpt = Path(opts.checkpoint_dir).expanduser().resolve()
        cfg = _checkpoint_config(ckpt)
        vocab = cfg.get("vocab_size")
        if isinstance(vocab, int):
            if vocab < tokenizer.vocab_size:
                raise ConfigError(f"--checkpoint {ckpt} has vocab_size {vocab} but the tokenizer has "
                                  f"{tokenizer.vocab_size} ids")
            ctx["vocab_size"] = vocab
        max_pos = min(arch.max_position_embeddings, int(cfg.get("max_position_embeddings") or 10**9))
        max_seq_len = opts.max_seq_len or max_pos
        max_input_len = opts.max_input_len or max_seq_len - 1
        if max_input_len >= max_seq_len or max_seq_len > max_pos:
            raise ConfigError(f"max input length {max_input_len} / max sequence length {max_seq_len}: need input < "
                              f"sequence <= the model's {max_pos} positions")
        if opts.replay_text_file is not None or opts.replay_delay_ms:
            raise ConfigError("--replay-text / --replay-delay-ms only apply to --replay")
        ctx.update(llm_model_dir=str(ckpt), max_batch_size=opts.max_batch_size or 64, max_input_len=max_input_len,
                   max_seq_len=max_seq_len, tp_size=opts.tp_size, pp_size=opts.pp_size)
        kind, world = "gpu", opts.tp_size * opts.pp_size
    else:
        max_pos = arch.max_position_embeddings
        if opts.cpu_model_dir is not None:
            model = Path(opts.cpu_model_dir).expanduser().resolve()
            cfg_path = model / "config.json"
            if not cfg_path.is_file():
                raise ConfigError(f"--cpu-model {model}: no config.json there (a Hugging Face checkpoint folder)")
            try:
                cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{cfg_path} is not valid JSON: {exc}") from None
            vocab = cfg.get("vocab_size")
            if isinstance(vocab, int) and vocab < tokenizer.vocab_size:
                raise ConfigError(
                    f"--cpu-model {model} has vocab_size {vocab} but the tokenizer has {tokenizer.vocab_size} ids"
                )
            max_pos = min(max_pos, int(cfg.get("max_position_embeddings") or max_pos))
            ctx.update(cpu_model_dir=str(model), cpu_engine_mode="hf")
        else:
            if opts.replay_text_file is not None:
                text_file = Path(opts.replay_text_file).expanduser().resolve()
                if not text_file.is_file():
                    raise ConfigError(f"--replay-text {text_file} does not exist")
                ctx["replay_text_file"] = str(text_file)
            if opts.replay_delay_ms < 0:
                raise ConfigError(f"--replay-delay-ms must be >= 0, got {opts.replay_delay_ms}")
            ctx.update(cpu_engine_mode="replay")
        max_seq_len = opts.max_seq_len or max_pos
        max_input_len = opts.max_input_len or max_seq_len - 1
        if max_input_len >= max_seq_len:
            raise ConfigError(
                f"max input length {max_input_len} must be below max sequence length {max_seq_len} "
                f"(room for at least one output token)"
            )
        if max_seq_len > max_pos:
            raise ConfigError(f"max sequence length {max_seq_len} exceeds the model's {max_pos} positions")
        ctx.update(max_batch_size=opts.max_batch_size or 64, max_input_len=max_input_len, max_seq_len=max_seq_len,
                   tp_size=1, pp_size=1)
        if opts.cpu_model_dir is not None and isinstance(vocab, int):
            ctx["vocab_size"] = vocab
        kind, world = "cpu", 1
    ctx["max_output_len"] = ctx["max_seq_len"] - 1
    # guided decoding: the C++ backend's two parameters (the info file's path is set once the output folder is known)
    ctx.update(guided_decoding_backend="xgrammar" if opts.guided_decoding else "", xgrammar_tokenizer_info_path="",
               guided_stop_token_ids=list(profile.generation.end_ids))
    return ctx, kind, world


def _checkpoint_config(ckpt: Path) -> dict:
    """A Hugging Face checkpoint's config.json (the LLM API loads the checkpoint folder itself)."""
    cfg_path = ckpt / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"--checkpoint {ckpt}: no config.json there (a Hugging Face checkpoint folder)")
    try:
        return json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{cfg_path} is not valid JSON: {exc}") from None


def engine_template(kind: str, engine_backend: str) -> str:
    """The template folder rendered as the model ``tensorrt_llm``."""
    if engine_backend == "pytorch":
        return "tensorrt_llm_llmapi"
    return "tensorrt_llm" if kind == "gpu" else "tensorrt_llm_cpu"


def render_repository(opts: RenderOptions) -> RenderedRepo:
    """Render into ``opts.out`` (replaced atomically when ``force``; refused when it exists otherwise)."""
    ctx, kind, world = build_context(opts)
    src = templates_dir()
    out = Path(opts.out).expanduser().resolve()
    if opts.guided_decoding:
        ctx["xgrammar_tokenizer_info_path"] = str(out / "tensorrt_llm" / TOKENIZER_INFO_FILE)
    if out.exists():
        if not opts.force:
            raise ConfigError(f"{out} already exists (use --force to replace it)")
        if out.is_dir() and any(out.iterdir()) and not (out / REPO_INFO).is_file():
            raise ConfigError(f"{out} exists and was not rendered by koserve: refusing to replace it")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        engine = engine_template(kind, opts.engine_backend)
        for name, template in [*((m, m) for m in SERVING_MODELS), ("tensorrt_llm", engine)]:
            folder = src / template
            if not (folder / "config.pbtxt").is_file():
                raise ConfigError(f"template {folder}/config.pbtxt is missing")
            dest = tmp / name
            shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "config.pbtxt"))
            (dest / "1").mkdir(exist_ok=True)
            try:
                text = env.from_string((folder / "config.pbtxt").read_text(encoding="utf-8")).render(**ctx)
            except jinja2.TemplateError as exc:
                raise ConfigError(f"cannot render {folder}/config.pbtxt: {exc}") from None
            (dest / "config.pbtxt").write_text(text, encoding="utf-8")
        if opts.guided_decoding:
            write_tokenizer_info(ctx["tokenizer_dir"], ctx["guided_stop_token_ids"],
                                 tmp / "tensorrt_llm" / TOKENIZER_INFO_FILE)
        info = {"kind": kind, "engine_backend": opts.engine_backend, "profile": ctx["profile_name"],
                "world_size": world, "context": ctx,
                "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}}
        (tmp / REPO_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return RenderedRepo(out, kind, ctx["profile_name"], world, ctx)
