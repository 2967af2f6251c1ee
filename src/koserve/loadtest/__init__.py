"""Load testing with locust: streaming users (Triton gRPC / HTTP SSE, OpenAI gateway), per-token metrics, Korean
prompt sets, load shapes, and the report `koserve loadtest` writes.

Modules that import locust (and so gevent's monkey-patching): :mod:`~koserve.loadtest.users`,
:mod:`~koserve.loadtest.locust_shapes`, :mod:`~koserve.loadtest.locustfile` — import them only inside a locust
process. Everything else (:mod:`~koserve.loadtest.runner`, ``report``, ``metrics``, ``prompts``, ``shapes``,
``options``) is plain Python.
"""
