"""OpenAI-compatible HTTP gateway in front of Triton (``koserve gateway``): a standalone service per pod.

``create_app(load_config(model_specs=["akallama-70b=127.0.0.1:8001"]))`` gives the FastAPI app; run it with uvicorn.
Needs ``koserve[gateway]`` (FastAPI, uvicorn, prometheus-client) on top of the client; no torch.
"""

from koserve.gateway.app import create_app
from koserve.gateway.config import API_KEYS_ENV, GatewayConfig, ModelRoute, load_config, parse_model_spec

__all__ = ["API_KEYS_ENV", "GatewayConfig", "ModelRoute", "create_app", "load_config", "parse_model_spec"]
