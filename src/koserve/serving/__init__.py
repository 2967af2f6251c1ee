"""Serving: the logic of koserve's Triton models, the CPU engine stand-in, repo rendering and the server launcher.

- :mod:`koserve.serving.params` — request parsing and validation (limits named in every error)
- :mod:`koserve.serving.preprocess` — text → token ids, stop/bad word lists, end ids (the ``preprocessing`` model)
- :mod:`koserve.serving.postprocess` — per-request incremental detokenization (the ``postprocessing`` model)
- :mod:`koserve.serving.bls` — the streaming ``tensorrt_llm_bls`` model
- :mod:`koserve.serving.render` — ``koserve repo render``
- :mod:`koserve.serving.tritonserver` — start/stop a real tritonserver (CPU wheel or GPU ``mpirun``)
- :mod:`koserve.serving.engine` — the CPU stand-in for the TensorRT-LLM engine

Nothing here imports Triton's ``triton_python_backend_utils`` at import time: the thin ``model.py`` adapters pass it in.
"""
