"""The one TensorRT-LLM release koserve's GPU path targets, and NVIDIA's container that ships it.

Evidence (docs/build.md, "The container"): triton-inference-server/tensorrtllm_backend release branches
r26.04 - r26.07 pin ``TENSORRTLLM_REPO_TAG=release/1.2.1`` / ``TENSORRTLLM_VER=1.2.1`` in
``dockerfile/Dockerfile.triton.trt_llm_backend``; r25.12 - r26.02 pin 1.1.0 and r26.03 1.2.0rc8.
"""

from __future__ import annotations

import re

TRTLLM_VERSION = "1.2.1"
TRITON_TRTLLM_TAG = "26.04"
TRITON_TRTLLM_IMAGE = f"nvcr.io/nvidia/tritonserver:{TRITON_TRTLLM_TAG}-trtllm-python-py3"
# NGC tritonserver "-trtllm-python-py3" tags whose tensorrtllm_backend branch pins TensorRT-LLM 1.2.1.
TAGS_SHIPPING_TRTLLM_1_2_1 = ("26.04", "26.05", "26.06", "26.07")
# Known pins of other tags (so an error can say what a wrong image ships).
OTHER_TAGS = {"25.12": "1.1.0", "26.01": "1.1.0", "26.02": "1.1.0", "26.03": "1.2.0rc8"}
# Where NVIDIA's image has TensorRT-LLM's examples/ (Dockerfile: WORKDIR /app; COPY .../tensorrt_llm/examples examples).
CONTAINER_EXAMPLES_DIR = "/app/examples"

TRTLLM_IMAGE_TAG_RE = re.compile(r"(\d\d\.\d\d)-trtllm")
