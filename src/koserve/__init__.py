"""koserve: serve Korean chat LLMs with Triton Inference Server and TensorRT-LLM."""

__version__ = "0.1.0"
