#!/usr/bin/env bash
# GPU acceptance run: the first thing to run on a new GPU box, inside koserve's image (deploy/docker/Dockerfile, on
# nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3, TensorRT-LLM 1.2.1) with one GPU, as the image is built
# (uid 1000, no network needed):
#   docker run --rm --gpus 1 <registry>/koserve-triton:0.1.0-26.04-trtllm /opt/koserve/scripts/gpu_smoke.sh
# Builds a BF16 engine from the tiny Llama-3-vocabulary checkpoint (made in the container with its own transformers
# and torch), serves it, checks Korean streaming through ensemble and tensorrt_llm_bls over gRPC and HTTP, runs a
# 30 s bounded load and prints a pass/fail table (docs/build.md). Writes under $KOSERVE_CACHE (the image:
# /var/cache/koserve). Arguments go to `koserve gpu-smoke` (--help lists them). Exit 0 only when every row passes.
set -euo pipefail
if command -v koserve >/dev/null 2>&1; then
  exec koserve gpu-smoke "$@"
fi
exec "${KOSERVE_PYTHON:-python3}" -m koserve gpu-smoke "$@"
