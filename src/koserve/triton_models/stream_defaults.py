"""Defaults and limits of the BLS's stream holding (model parameters ``stream_*``, render options ``bls_stream_*``).

No imports: the CLI's help texts read them at start-up (:mod:`koserve.triton_models.outbox` imports numpy).
"""

# defaults of the model parameters stream_send_share / stream_max_interval_us (and render's bls_stream_* options)
DEFAULT_SEND_SHARE = 0.25
DEFAULT_MAX_INTERVAL_US = 100_000
MAX_INTERVAL_LIMIT_US = 10_000_000
# stream_max_wait_gaps: the longest wait between two responses of a stream, in engine gaps. 1.5: at 64 streams on the
# 2-core VM ≈ 1.5–1.6 tokens per response, p99 gap 1.2–1.9 × the engine's own, 0.84–1.06 × its tokens/s (9 rounds);
# 2 gave p99 gaps ≈ 2.2 ×, 1 cost a quarter of the tokens/s (docs/serving.md)
DEFAULT_MAX_WAIT_GAPS = 1.5
MAX_WAIT_GAPS_LIMIT = 1000.0
