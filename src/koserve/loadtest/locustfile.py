"""koserve locustfile: streaming LLM users for Triton (gRPC, HTTP SSE) and the OpenAI gateway.

    locust -f examples/locustfile.py  (or this file) --headless TritonGrpcUser --host 127.0.0.1:8001 \
        --target-model ensemble --model-profile akallama-70b --prompts all \
        --shape fixed --concurrency 8 --shape-duration 60 --records-dir out/records

Pick the user class by name (TritonGrpcUser, TritonHttpUser, OpenAIChatUser); every request is
reported as the locust events ttft, tpot, chunk_gap, e2e, output_tokens and output_tokens_per_s (see
docs/loadtest.md). `koserve loadtest` runs this file headless and writes a report.
"""

from locust import events

from koserve.loadtest.locust_shapes import KoserveShape  # noqa: F401 - locust picks the shape up
from koserve.loadtest.options import add_locust_arguments
from koserve.loadtest.users import OpenAIChatUser, TritonGrpcUser, TritonHttpUser  # noqa: F401

__all__ = ["KoserveShape", "OpenAIChatUser", "TritonGrpcUser", "TritonHttpUser", "_koserve_options"]


@events.init_command_line_parser.add_listener
def _koserve_options(parser):
    add_locust_arguments(parser)
