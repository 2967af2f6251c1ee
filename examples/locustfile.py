"""koserve locustfile: streaming LLM users for Triton (gRPC, HTTP SSE) and the OpenAI gateway.

    locust -f examples/locustfile.py --headless TritonGrpcUser --host 127.0.0.1:8001 \
        --target-model ensemble --model-profile akallama-70b --prompts all \
        --shape fixed --concurrency 8 --shape-duration 60 --records-dir out/records

The users, shape and options live in ``koserve.loadtest`` (``koserve loadtest`` runs the same
definitions headless and writes a report); see docs/loadtest.md.
"""

from koserve.loadtest.locustfile import *  # noqa: F401,F403 - users, shape and option hook
