"""A rolling restart that no user notices, and a replica killed outright (issue 30 item 6): two real ``koserve
serve`` replicas behind one real ``koserve gateway``, load from the real ``koserve loadtest`` (locust, OpenAI
protocol, streaming). The same runs print the figures of docs/reliability.md (scripts/reliability_report.py)."""

from __future__ import annotations

import pytest

from koserve.testing.fleet import run_replica_kill, run_rolling_restart

pytestmark = pytest.mark.server


def test_sigterm_one_replica_then_the_other_under_load_fails_no_request_and_cuts_no_stream(tmp_path):
    figures = run_rolling_restart(tmp_path / "roll")
    assert figures.requests >= 50, figures  # the load really ran through both restarts
    assert figures.failed == 0 and figures.succeeded == figures.requests, figures.errors  # no 503, no cut stream
    for restart in figures.restarts:
        assert restart.under_load, restart  # the SIGTERM came while the load ran
        assert restart.exit_code == 0, restart  # drained, then exited by itself (not killed by a timeout)
        assert "the engine holds no request" in restart.drain_line, restart
        assert restart.ready_again_s is not None
    assert len(figures.restarts) == 2
    served = {url: r["served"] for url, r in figures.replicas.items()}
    assert len(served) == 2 and all(n > 0 for n in served.values()), figures.replicas  # both carried load


def test_sigkill_of_a_replica_ends_its_streams_clearly_and_new_requests_go_to_the_live_one(tmp_path):
    figures = run_replica_kill(tmp_path / "kill")
    assert figures.hung == 0  # every stream ended within the bound
    cut = [s for s in figures.streams if not s.done]
    whole = [s for s in figures.streams if s.done]
    assert cut and whole, figures.streams  # streams ran on both replicas
    for s in cut:  # the killed replica's streams: a clear error event after some text, never a silent end
        assert s.error and "the model server is unavailable" in s.error and "cannot reach Triton" in s.error, s
        assert s.text, s
    for s in whole:
        assert s.error is None and s.text, s
    assert figures.after and all(a.done and a.error is None for a in figures.after), figures.after
    assert figures.first_ok_after_s is not None and figures.first_ok_after_s < 1.0  # within the health period
