"""``koserve serve``'s supervisor: the restart policy counts restarts within its window; bad restart flags and a busy
health port are refused before tritonserver starts."""

from __future__ import annotations

from collections import deque

from koserve.server.supervisor import RestartPolicy


def test_restart_policy_counts_restarts_within_the_window():
    policy = RestartPolicy(max_restarts=2, window_s=10.0)
    history: deque = deque()
    assert policy.allows(history, 0.0)
    history.append(0.0)
    history.append(1.0)
    assert not policy.allows(history, 5.0)
    assert policy.allows(history, 10.5)  # the first one left the window
    assert not RestartPolicy(max_restarts=0).allows(deque(), 0.0)


def test_serve_refuses_a_busy_health_port_and_bad_restart_flags_before_starting_triton(tmp_path, capsys):
    import socket

    from koserve.cli import main
    from koserve.testing.faults import render_replay_repo

    repo = render_replay_repo(tmp_path / "repo")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--repo", str(repo), "--health-port", str(port)]) == 2
    assert f"cannot serve health on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", "--repo", str(repo), "--max-restarts", "-1"]) == 2
    assert "--max-restarts must be in [0, 1000], got -1" in capsys.readouterr().err
    assert main(["serve", "--repo", str(repo), "--probe-interval", "0"]) == 2
    assert "--probe-interval must be > 0 seconds" in capsys.readouterr().err
