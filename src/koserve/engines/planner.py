"""Capacity planner: what a recipe costs in GPU memory and what it can serve, before any GPU work.

All figures are estimates from the profile's architecture and the recipe; the model is
written out in the docstrings of the helpers below so a reader can check each number:

* weights: every linear layer at the recipe's precision (FP8: 1 byte; INT4-AWQ: 0.5 byte plus
  one FP16 scale per ``awq_block_size`` weights; NVFP4: 0.5 byte plus one FP8 scale per 16
  weights; INT8/INT4 weight-only: plus one FP16 scale per output channel), embeddings, ``lm_head`` and norms in BF16 (ModelOpt leaves them unquantized);
  the vocabulary embedding and ``lm_head`` are sharded over TP, layers over PP;
* KV cache per token: layers × KV heads × head dim × 2 (K and V) × dtype bytes, divided by TP
  (and PP) per GPU;
* activations: TensorRT's execution context for ``max_num_tokens`` tokens in flight (QKV, MLP
  gate/up and hidden state buffers, BF16, double-buffered) plus FP32 logits for
  ``max_batch_size`` sequences; runtime: CUDA context, cuBLAS/TensorRT workspaces (2.5 GiB) and
  NCCL buffers (0.5 GiB) when the engine spans several GPUs;
* backend pytorch (the LLM API on a HF checkpoint) is planned with the same model: the same weights
  per rank, and the PyTorch executor's activation and CUDA-graph buffers are taken to be what the
  TensorRT context takes for the same ``max_num_tokens`` (an estimate: no NVIDIA document gives a
  memory rule for either);
* KV tokens: TensorRT-LLM gives the KV cache ``kv_cache_free_gpu_mem_fraction`` of the memory
  left after weights and activations, in blocks of ``tokens_per_block`` tokens;
* decode roofline: one decode step reads every weight and the KV cache of every running
  sequence from HBM once, so tokens/s ≤ concurrency × bandwidth / bytes read per step. This is
  an **upper bound**, not a prediction (real kernels reach a fraction of peak bandwidth).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from koserve.engines.gpus import GIB, GpuSpec, get_gpu
from koserve.engines.recipe import PYTORCH_INT4_AWQ_FAMILIES, EngineRecipe, resolve_local_path

# Bytes per weight of a linear layer, by precision (scales added separately).
_LINEAR_BYTES = {"bf16": 2.0, "fp8": 1.0, "int8_wo": 1.0, "int4_wo": 0.5, "int4_awq": 0.5, "nvfp4": 0.5}
NVFP4_BLOCK = 16  # NVFP4: one FP8 (E4M3) scale per 16 weights
_KV_BYTES = {"fp8": 1, "int8": 1, "bf16": 2}
_BF16 = 2

RUNTIME_OVERHEAD_BYTES = int(2.5 * GIB)
NCCL_OVERHEAD_BYTES = int(0.5 * GIB)
# ModelOpt calibration (quantize.py) loads the whole BF16 checkpoint over the visible GPUs (device_map="auto") and
# runs calibration forward passes. Derived need = BF16 weights + one forward pass of batch_size x
# calib_max_seq_length tokens (fp32 logits + the widest activations, x2 for the quantizer hooks) + for AWQ the
# cached inputs of the widest layer over the whole calibration set. The per-GPU reserve (CUDA context, PyTorch
# caching-allocator slack, accelerate's uneven split) is an ESTIMATE, not an upstream figure: no NVIDIA document
# gives a memory rule for quantize.py.
CALIBRATION_GPU_RESERVE_BYTES = int(4 * GIB)  # estimate, per GPU
NODE_GPU_COUNTS = (1, 2, 4, 8)
DEFAULT_SCENARIOS = ((128, 128), (2048, 2048))
DEFAULT_MIN_CONCURRENCY = 32


@dataclass
class Scenario:
    """Capacity at one ISL/OSL (input / output sequence length)."""

    isl: int
    osl: int
    verdict: str  # "ok" | "kv-starved" | "exceeds-engine-limits" | "does-not-fit"
    kv_concurrency: int  # sequences of isl+osl tokens the KV cache holds at once
    concurrency: int  # min(kv_concurrency, max_batch_size)
    decode_tokens_per_s_upper_bound: float  # whole engine, at `concurrency`
    decode_tokens_per_s_per_stream_upper_bound: float
    note: str = ""


@dataclass
class BuildPlan:
    recipe: str
    profile: str
    gpu: str
    gpu_count: int
    precision: str
    kv_cache_dtype: str
    tp: int
    pp: int
    num_parameters: int
    gpu_memory_bytes: int
    weight_bytes_total: int
    weight_bytes_per_gpu: int
    kv_bytes_per_token_total: int
    kv_bytes_per_token_per_gpu: int
    activation_bytes_per_gpu: int
    runtime_overhead_bytes_per_gpu: int
    kv_cache_free_gpu_mem_fraction: float
    kv_cache_bytes_per_gpu: int
    kv_tokens: int
    max_seq_len: int
    max_batch_size: int
    min_concurrency: int
    calibration_memory_bytes: int
    calibration_gpus: int
    calibration_gpus_needed: int
    scenarios: list[Scenario] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    backend: str = "trtllm"

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        data["decode_roofline_is_upper_bound"] = True
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


# -- the model ------------------------------------------------------------------------------------

def _linear_weight_bytes(num_weights: int, out_channels: int, recipe: EngineRecipe) -> float:
    precision = recipe.quantization.precision
    size = num_weights * _LINEAR_BYTES[precision]
    if precision == "int4_awq":
        size += num_weights / recipe.quantization.awq_block_size * _BF16
    elif precision == "nvfp4":
        size += num_weights / NVFP4_BLOCK
    elif precision in ("int4_wo", "int8_wo"):
        size += out_channels * _BF16
    return size


def weight_bytes(recipe: EngineRecipe) -> tuple[int, int]:
    """(total, per GPU of the largest pipeline stage) weight bytes of the engine."""
    a = recipe.model_profile.architecture
    h, hd, inter, vocab = a.hidden_size, a.head_dim, a.intermediate_size, a.vocab_size
    qkv_out = (a.num_attention_heads + 2 * a.num_kv_heads) * hd
    layer = (
        _linear_weight_bytes(h * qkv_out, qkv_out, recipe)
        + _linear_weight_bytes(h * h, h, recipe)
        + _linear_weight_bytes(h * 2 * inter, 2 * inter, recipe)  # gate + up
        + _linear_weight_bytes(inter * h, h, recipe)  # down
        + 2 * h * _BF16  # input and post-attention RMSNorm
    )
    embedding = vocab * h * _BF16
    lm_head = vocab * h * _BF16 + h * _BF16  # + final norm
    tp, pp = recipe.parallelism.tp, recipe.parallelism.pp
    total = a.num_layers * layer + embedding + lm_head
    layers_per_stage = math.ceil(a.num_layers / pp)
    if pp == 1:
        stage = layers_per_stage * layer + embedding + lm_head
    else:
        stage = layers_per_stage * layer + max(embedding, lm_head)
    return int(total), int(stage / tp)


def kv_bytes_per_token(recipe: EngineRecipe) -> tuple[int, int]:
    """(whole model, per GPU) KV-cache bytes for one token."""
    a = recipe.model_profile.architecture
    dtype_bytes = _KV_BYTES[recipe.quantization.kv_cache_dtype]
    total = a.num_layers * a.num_kv_heads * a.head_dim * 2 * dtype_bytes
    tp, pp = recipe.parallelism.tp, recipe.parallelism.pp
    kv_heads_per_gpu = max(1, a.num_kv_heads // tp)
    per_gpu = math.ceil(a.num_layers / pp) * kv_heads_per_gpu * a.head_dim * 2 * dtype_bytes
    return total, per_gpu


def activation_bytes(recipe: EngineRecipe) -> int:
    """TensorRT execution-context memory per GPU for ``max_num_tokens`` tokens plus logits."""
    a = recipe.model_profile.architecture
    tp = recipe.parallelism.tp
    qkv_out = (a.num_attention_heads + 2 * a.num_kv_heads) * a.head_dim
    per_token = a.hidden_size + qkv_out / tp + 2 * a.intermediate_size / tp
    context = recipe.limits.max_num_tokens * per_token * _BF16 * 2
    logits = recipe.limits.max_batch_size * a.vocab_size / tp * 4
    return int(context + logits)


def runtime_overhead_bytes(recipe: EngineRecipe) -> int:
    return RUNTIME_OVERHEAD_BYTES + (NCCL_OVERHEAD_BYTES if recipe.parallelism.world_size > 1 else 0)


def calibration_weight_bytes(recipe: EngineRecipe) -> int:
    """The BF16 checkpoint quantize.py loads onto the GPUs."""
    return int(recipe.model_profile.architecture.num_parameters * _BF16)


def calibration_activation_bytes(recipe: EngineRecipe) -> int:
    """Peak activations of calibration (derived; see CALIBRATION_GPU_RESERVE_BYTES for what is estimated)."""
    a, cal = recipe.model_profile.architecture, recipe.calibration
    tokens = cal.batch_size * cal.max_seq_length
    forward = tokens * (a.vocab_size * 4 + 2 * max(a.hidden_size, a.intermediate_size) * _BF16)
    if recipe.quantization.precision == "int4_awq":
        forward += cal.size * cal.max_seq_length * a.intermediate_size * _BF16  # AWQ caches a layer's inputs
    return int(forward)


def calibration_memory_bytes(recipe: EngineRecipe) -> int:
    """GPU memory ModelOpt calibration needs in total, before the per-GPU reserve: weights + activations."""
    return calibration_weight_bytes(recipe) + calibration_activation_bytes(recipe)


def calibration_gpus_needed(recipe: EngineRecipe, gpu: GpuSpec) -> int:
    """Fewest GPUs of a node that hold calibration (each loses CALIBRATION_GPU_RESERVE_BYTES, an estimate)."""
    need = calibration_memory_bytes(recipe)
    usable = gpu.memory_bytes - CALIBRATION_GPU_RESERVE_BYTES
    for count in NODE_GPU_COUNTS:
        if count * usable >= need:
            return count
    return math.ceil(need / usable)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


# -- the plan -------------------------------------------------------------------------------------

def plan(
    recipe: EngineRecipe,
    scenarios: list[tuple[int, int]] | tuple[tuple[int, int], ...] = DEFAULT_SCENARIOS,
    *,
    min_concurrency: int = DEFAULT_MIN_CONCURRENCY,
) -> BuildPlan:
    """Plan ``recipe``: memory per GPU, KV capacity, concurrency per ISL/OSL, refusals."""
    gpu = get_gpu(recipe.gpu)
    profile = recipe.model_profile
    a = profile.architecture
    q, lim, par = recipe.quantization, recipe.limits, recipe.parallelism
    errors: list[str] = []
    warnings: list[str] = []

    # Structural refusals.
    if a.num_kv_heads % par.tp:
        errors.append(
            f"tp {par.tp} does not divide the {a.num_kv_heads} KV heads of {profile.name}: "
            f"use tp in {[d for d in range(1, a.num_kv_heads + 1) if a.num_kv_heads % d == 0]}"
        )
    elif a.num_attention_heads % par.tp:
        errors.append(f"tp {par.tp} does not divide the {a.num_attention_heads} attention heads of {profile.name}")
    if par.pp > a.num_layers:
        errors.append(f"pp {par.pp} exceeds the {a.num_layers} layers of {profile.name}")
    if lim.max_seq_len > a.max_position_embeddings:
        errors.append(
            f"max_seq_len {lim.max_seq_len} is beyond {profile.name}'s {a.max_position_embeddings} positions "
            "(max_position_embeddings); the model was not trained on longer sequences"
        )
    if recipe.build.use_paged_context_fmha != "enable" and lim.max_num_tokens < lim.max_input_len:
        errors.append(
            f"max_num_tokens {lim.max_num_tokens} < max_input_len {lim.max_input_len} needs chunked context: "
            "enable use_paged_context_fmha or raise max_num_tokens"
        )

    # GPU feature refusals.
    if q.precision == "fp8" and not gpu.supports_fp8:
        errors.append(
            f"FP8 weights need FP8 tensor cores (Ada 8.9 / Hopper 9.0 or newer); "
            f"{gpu.display_name} is {gpu.architecture} {gpu.cc_text}"
        )
    if q.kv_cache_dtype == "fp8" and not gpu.supports_fp8:
        errors.append(
            f"an FP8 KV cache needs Ada 8.9 / Hopper 9.0 or newer; {gpu.display_name} is "
            f"{gpu.architecture} {gpu.cc_text}: use kv_cache_dtype int8"
        )
    if q.precision in ("int4_awq", "int4_wo", "int8_wo") and not gpu.supports_int4_awq:
        errors.append(
            f"{q.precision.upper()} needs TensorRT-LLM's weight-only kernels (Ampere 8.0 or newer); "
            f"{gpu.display_name} is {gpu.architecture} {gpu.cc_text}"
        )
    if not gpu.supports_bf16:
        errors.append(f"BF16 activations need Ampere 8.0 or newer; {gpu.display_name} is {gpu.cc_text}")
    if q.precision == "nvfp4" and not gpu.supports_nvfp4:
        errors.append(f"NVFP4 needs Blackwell (10.0 or newer); {gpu.display_name} is {gpu.architecture} "
                      f"{gpu.cc_text}: use fp8 (Ada/Hopper) or int4_awq")
    if recipe.backend == "pytorch":
        _check_pytorch_support(recipe, gpu, errors)

    # Memory.
    w_total, w_gpu = weight_bytes(recipe)
    kv_total, kv_gpu = kv_bytes_per_token(recipe)
    act = activation_bytes(recipe)
    runtime = runtime_overhead_bytes(recipe)
    left = gpu.memory_bytes - w_gpu - act - runtime
    frac = recipe.serving.kv_cache_free_gpu_mem_fraction
    kv_cache = max(0, int(left * frac))
    kv_tokens = kv_cache // kv_gpu if kv_gpu else 0
    tpb = recipe.build.tokens_per_block
    kv_blocks = kv_tokens // tpb
    if w_gpu > gpu.memory_bytes:
        errors.append(
            f"weights do not fit: {_gb(w_gpu)} of {q.precision} weights per GPU (tp {par.tp}, pp {par.pp}) "
            f"> {_gb(gpu.memory_bytes)} on one {gpu.display_name}; use more GPUs (tp) or a smaller precision"
        )
    elif left <= 0:
        errors.append(
            f"no memory left for the KV cache: {_gb(w_gpu)} weights + {_gb(act)} activations + "
            f"{_gb(runtime)} runtime > {_gb(gpu.memory_bytes)} on one {gpu.display_name}"
        )
    elif kv_blocks < math.ceil(lim.max_seq_len / tpb):
        errors.append(
            f"the KV cache ({kv_tokens} tokens) cannot hold one sequence of max_seq_len {lim.max_seq_len}; "
            "use more GPUs or a smaller precision"
        )

    # Calibration.
    calib_need = calibration_memory_bytes(recipe) if recipe.needs_calibration else 0
    calib_gpus = recipe.calibration_gpus
    calib_gpus_needed = calibration_gpus_needed(recipe, gpu) if calib_need else 0
    if calib_need and calib_gpus < calib_gpus_needed:
        errors.append(
            f"{q.precision.upper()} calibration of {profile.name} needs ~{_gb(calib_need)} of GPU memory "
            f"({_gb(calibration_weight_bytes(recipe))} BF16 weights + {_gb(calibration_activation_bytes(recipe))} "
            f"activations, derived) plus ~{_gb(CALIBRATION_GPU_RESERVE_BYTES)} per GPU (estimate); "
            f"calibration.num_gpus {calib_gpus} × {gpu.display_name} = {_gb(calib_gpus * gpu.memory_bytes)}: "
            f"set calibration.num_gpus to {calib_gpus_needed} (quantize on a {calib_gpus_needed}-GPU node; the "
            f"engine still serves on {par.world_size})"
        )
    if recipe.needs_calibration:
        _check_calibration_data(recipe, warnings)
    if recipe.checkpoint_is_hub_id:
        warnings.append(
            f"checkpoint {recipe.checkpoint} is a Hugging Face id: download it first and pass --checkpoint-dir"
        )

    # Scenarios.
    results = []
    fits = not any(e.startswith(("weights do not fit", "no memory left")) for e in errors)
    for isl, osl in scenarios:
        results.append(
            _scenario(recipe, gpu, isl, osl, fits, kv_blocks, w_gpu, kv_gpu, min_concurrency)
        )

    return BuildPlan(
        recipe=recipe.name, profile=profile.name, gpu=gpu.display_name, gpu_count=par.world_size,
        precision=q.precision, kv_cache_dtype=q.kv_cache_dtype, tp=par.tp, pp=par.pp,
        num_parameters=a.num_parameters, gpu_memory_bytes=gpu.memory_bytes,
        weight_bytes_total=w_total, weight_bytes_per_gpu=w_gpu,
        kv_bytes_per_token_total=kv_total, kv_bytes_per_token_per_gpu=kv_gpu,
        activation_bytes_per_gpu=act, runtime_overhead_bytes_per_gpu=runtime,
        kv_cache_free_gpu_mem_fraction=frac, kv_cache_bytes_per_gpu=kv_cache, kv_tokens=kv_tokens,
        max_seq_len=lim.max_seq_len, max_batch_size=lim.max_batch_size, min_concurrency=min_concurrency,
        calibration_memory_bytes=calib_need, calibration_gpus=calib_gpus if calib_need else 0,
        calibration_gpus_needed=calib_gpus_needed, scenarios=results, errors=errors, warnings=warnings,
        backend=recipe.backend,
    )


def _scenario(recipe, gpu, isl, osl, fits, kv_blocks, w_gpu, kv_gpu, min_concurrency) -> Scenario:
    lim = recipe.limits
    tpb = recipe.build.tokens_per_block
    seq = isl + osl
    blocks_per_seq = math.ceil(seq / tpb)
    kv_conc = kv_blocks // blocks_per_seq if fits else 0
    conc = min(kv_conc, lim.max_batch_size)
    ctx = isl + osl / 2  # average context length while decoding

    def bound(n: int) -> float:
        if n <= 0:
            return 0.0
        step_bytes = w_gpu + n * ctx * kv_gpu
        return n * gpu.hbm_bandwidth_gbps * 1e9 / step_bytes

    note = ""
    if not fits:
        verdict = "does-not-fit"
        note = "weights do not fit"
    elif isl > lim.max_input_len or seq > lim.max_seq_len:
        verdict = "exceeds-engine-limits"
        positions = recipe.model_profile.architecture.max_position_embeddings
        beyond = " (more than the model has: no engine of it serves this)" if seq > positions else ""
        note = (f"needs max_input_len ≥ {isl} and max_seq_len ≥ {seq}; {recipe.profile}'s position limit is "
                f"{positions:,}{beyond}")
    elif kv_conc < min(min_concurrency, lim.max_batch_size):
        verdict = "kv-starved"
        note = f"KV cache holds {kv_conc} sequences of {seq} tokens (< {min(min_concurrency, lim.max_batch_size)})"
    else:
        verdict = "ok"
    return Scenario(
        isl=isl, osl=osl, verdict=verdict, kv_concurrency=kv_conc, concurrency=conc,
        decode_tokens_per_s_upper_bound=round(bound(conc), 1),
        decode_tokens_per_s_per_stream_upper_bound=round(bound(1), 1) if fits else 0.0,
        note=note,
    )


def _check_pytorch_support(recipe: EngineRecipe, gpu: GpuSpec, errors: list[str]) -> None:
    """TensorRT-LLM's quantization support matrices (docs/source/features/quantization.md@09d4c79b): the model
    matrix marks W4A16 AWQ for LLaMA / LLaMA-v2 but not LLaMA 3; the hardware matrix marks W4A16 AWQ for Ampere,
    Ada and Hopper, not Blackwell."""
    q, family = recipe.quantization, recipe.model_profile.tokenizer_family
    if q.precision != "int4_awq":
        return
    if family not in PYTORCH_INT4_AWQ_FAMILIES:
        errors.append(
            f"backend pytorch: INT4-AWQ (W4A16) is not marked for LLaMA 3 in TensorRT-LLM's quantization support "
            f"matrix (docs/source/features/quantization.md@09d4c79b; {recipe.profile} is a {family} model): use fp8 "
            "on Hopper/Ada or nvfp4 on Blackwell, or backend trtllm for its int4_awq engine"
        )
    if not gpu.supports_pytorch_int4_awq:
        errors.append(f"backend pytorch: W4A16 AWQ is marked for Ampere, Ada and Hopper only; {gpu.display_name} is "
                      f"{gpu.architecture} {gpu.cc_text}")


def _check_calibration_data(recipe: EngineRecipe, warnings: list[str]) -> None:
    dataset = recipe.calibration.dataset
    if dataset in ("cnn_dailymail", "ccdv/cnn_dailymail", "pileval"):
        warnings.append(
            f"calibration dataset {dataset} is English; {recipe.profile} is a Korean fine-tune: "
            "point calibration.dataset at Korean text (e.g. recipes/calibration/ko)"
        )
        return
    from koserve.engines.calibration import count_calibration_texts

    path = resolve_local_path(dataset)
    if not path.exists():
        warnings.append(f"calibration dataset {dataset} is neither a local file/folder here nor a known name")
        return
    n = count_calibration_texts(path)
    if n < recipe.calibration.size:
        warnings.append(
            f"calibration dataset {dataset} has {n} texts, fewer than calibration.size {recipe.calibration.size}: "
            f"quantize.py calibrates on those {n}"
        )


# -- output ---------------------------------------------------------------------------------------

def _mib_or_kib(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < (1 << 20) else f"{n / (1 << 20):.2f} MiB"


def format_plan(p: BuildPlan) -> str:
    """A readable table of the plan."""
    rows = [
        ("recipe", p.recipe),
        ("backend", "pytorch (LLM API on a HF checkpoint)" if p.backend == "pytorch" else "trtllm (TensorRT engine)"),
        ("model", f"{p.profile} ({p.num_parameters / 1e9:.1f} B parameters)"),
        ("GPUs", f"{p.gpu_count} × {p.gpu} ({_gb(p.gpu_memory_bytes)} each), tp {p.tp} pp {p.pp}"),
        ("precision / KV cache", f"{p.precision} / {p.kv_cache_dtype}"),
        ("weights", f"{_gb(p.weight_bytes_total)} total, {_gb(p.weight_bytes_per_gpu)} per GPU"),
        ("KV cache per token", f"{_mib_or_kib(p.kv_bytes_per_token_total)} total, "
                               f"{_mib_or_kib(p.kv_bytes_per_token_per_gpu)} per GPU"),
        ("activations + runtime", f"{_gb(p.activation_bytes_per_gpu)} + {_gb(p.runtime_overhead_bytes_per_gpu)} per GPU"),
        ("KV cache", f"{_gb(p.kv_cache_bytes_per_gpu)} per GPU at kv_cache_free_gpu_mem_fraction "
                     f"{p.kv_cache_free_gpu_mem_fraction} = {p.kv_tokens:,} tokens"),
        ("engine limits", f"max_batch_size {p.max_batch_size}, max_seq_len {p.max_seq_len}"),
    ]
    if p.calibration_memory_bytes:
        rows.append(("calibration", f"needs ~{_gb(p.calibration_memory_bytes)} (derived) + ~"
                                    f"{_gb(CALIBRATION_GPU_RESERVE_BYTES)} per GPU (estimate): quantize.py "
                                    f"calibrates on {p.calibration_gpus} GPU(s) (calibration.num_gpus; at least "
                                    f"{p.calibration_gpus_needed} needed), the engine serves on {p.gpu_count}"))
    width = max(len(k) for k, _ in rows)
    out = [f"{k.ljust(width)}  {v}" for k, v in rows]
    out.append("")
    header = ("ISL/OSL", "verdict", "KV seqs", "concurrency", "decode tok/s ≤ (bound)", "per stream ≤")
    table = [header] + [
        (f"{s.isl}/{s.osl}", s.verdict, str(s.kv_concurrency), str(s.concurrency),
         f"{s.decode_tokens_per_s_upper_bound:,.0f}", f"{s.decode_tokens_per_s_per_stream_upper_bound:,.0f}")
        for s in p.scenarios
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        out.append("  ".join(c.ljust(widths[j]) for j, c in enumerate(r)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    out.append("decode tok/s are HBM-roofline upper bounds (bandwidth / bytes read per step), not predictions.")
    for s in p.scenarios:
        if s.note:
            out.append(f"  {s.isl}/{s.osl}: {s.note}")
    for w in p.warnings:
        out.append(f"warning: {w}")
    for e in p.errors:
        out.append(f"REFUSED: {e}")
    out.append("verdict: " + ("buildable" if p.ok else "refused"))
    return "\n".join(out)

