"""The OpenAI gateway app served in the test process (uvicorn on a free 127.0.0.1 port), started and stopped by the
test that uses it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from koserve.server.tritonserver import free_port


@contextlib.contextmanager
def serve_gateway(config, *, ready_timeout: float = 10.0) -> Iterator[str]:
    """Serve ``create_app(config)``; yields its base URL once ``/metrics`` answers. Raises RuntimeError when it does
    not within ``ready_timeout`` seconds."""
    import httpx  # noqa: PLC0415
    import uvicorn  # noqa: PLC0415

    from koserve.gateway import create_app  # noqa: PLC0415

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                httpx.get(base + "/metrics", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or not thread.is_alive():
                    raise RuntimeError(f"the gateway did not start on {base} within {ready_timeout:g} s") from None
                time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)
