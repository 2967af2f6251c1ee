#!/usr/bin/env bash
# GPU acceptance run: the first thing to run on a new GPU box, inside the pinned container
# (nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3, TensorRT-LLM 1.2.1) with koserve installed and one GPU:
#   docker run --rm --gpus 1 -v $PWD:/opt/koserve -w /opt/koserve <image> scripts/gpu_smoke.sh
# Builds a BF16 engine from the tiny Llama-3 checkpoint, serves it, checks Korean streaming through ensemble and
# tensorrt_llm_bls over gRPC and HTTP, runs a 30 s load test and prints a pass/fail table (docs/build.md).
# Arguments go to `koserve gpu-smoke` (--help lists them). Exit 0 only when every row passes.
set -euo pipefail
if command -v koserve >/dev/null 2>&1; then
  exec koserve gpu-smoke "$@"
fi
exec "${KOSERVE_PYTHON:-python3}" -m koserve gpu-smoke "$@"
