"""What Triton's python-backend stubs import: the logic of koserve's ``preprocessing``, ``postprocessing`` and
``tensorrt_llm_bls`` models (the ``model_repository/*/1/model.py`` adapters pass ``triton_python_backend_utils`` in).

Nothing here imports ``triton_python_backend_utils`` at import time, the CPU engine stand-in, or the test harness.
"""
