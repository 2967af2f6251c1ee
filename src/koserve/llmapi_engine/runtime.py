"""Which LLM API implementation runs: TensorRT-LLM's, or the CPU stand-in when the rendered repository says so.

``llm_runtime`` (config.pbtxt parameter): ``tensorrt_llm`` (production: ``tensorrt_llm.LLM``, ``SamplingParams``,
``GuidedDecodingParams``, ``KvCacheConfig``) or ``cpu_stand_in`` (the CPU test server: :mod:`koserve.cpu_engine.llmapi`, imported here and
only here, lazily, so production never loads the CPU engine).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from koserve.errors import ConfigError

RUNTIMES = ("tensorrt_llm", "cpu_stand_in")


@dataclass(frozen=True)
class LlmRuntime:
    """The classes the engine step uses: ``make_llm(**llm_kwargs)``, ``SamplingParams``, ``KvCacheConfig``,
    ``GuidedDecodingParams``."""

    name: str
    make_llm: Callable
    sampling_params_cls: type
    kv_cache_config_cls: type
    guided_decoding_params_cls: type


# MPI *job* variables a process started by ``mpirun`` inherits (its rank, its job's size and servers). The LLM API
# must start its own MPI job for its workers, so the stub drops them before importing tensorrt_llm, as NVIDIA's
# llmapi Triton model does; MPI *configuration* (OMPI_MCA_*, PMIX_MCA_*) stays.
MPI_JOB_PREFIXES = ("OMPI_COMM_WORLD_", "OMPI_UNIVERSE_SIZE", "OMPI_FIRST_RANKS", "OMPI_APP_CTX_NUM_PROCS",
                    "OMPI_MCA_orte_", "ORTE_", "PMIX_", "PMI_")
MPI_CONFIG_PREFIXES = ("PMIX_MCA_",)


def drop_mpi_job_env(environ: dict) -> list[str]:
    """Remove the inherited MPI job variables from ``environ`` (``os.environ``); the names removed."""
    gone = [k for k in environ if k.startswith(MPI_JOB_PREFIXES) and not k.startswith(MPI_CONFIG_PREFIXES)]
    for key in gone:
        del environ[key]
    return gone


def load_runtime(name: str, parameters: dict[str, str]) -> LlmRuntime:
    """Import the runtime ``name``; ``parameters`` (the model's config parameters) configure the CPU stand-in."""
    if name == "tensorrt_llm":
        import os  # noqa: PLC0415

        drop_mpi_job_env(os.environ)  # before tensorrt_llm (and mpi4py) initialise MPI
        from tensorrt_llm import LLM, SamplingParams  # noqa: PLC0415
        from tensorrt_llm.llmapi import KvCacheConfig  # noqa: PLC0415
        from tensorrt_llm.sampling_params import GuidedDecodingParams  # noqa: PLC0415

        return LlmRuntime(name, LLM, SamplingParams, KvCacheConfig, GuidedDecodingParams)
    if name == "cpu_stand_in":
        from koserve.cpu_engine import llmapi  # noqa: PLC0415 - test server only, never in production

        def make_llm(**kwargs):
            return llmapi.LLM(**kwargs, stand_in_parameters=parameters)

        return LlmRuntime(name, make_llm, llmapi.SamplingParams, llmapi.KvCacheConfig, llmapi.GuidedDecodingParams)
    raise ConfigError(f"parameter llm_runtime must be one of {', '.join(RUNTIMES)}, got {name!r}")
