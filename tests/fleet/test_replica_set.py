"""The gateway's replica choice and failover rules (koserve.gateway.replicas) as pure state."""

from __future__ import annotations

from koserve.client.errors import ServerError, ServerUnavailableError
from koserve.gateway.replicas import Replica, ReplicaSet, is_refusal


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(n: int, clock: Clock) -> ReplicaSet:
    return ReplicaSet([Replica(f"127.0.0.1:{8001 + i}", client=None) for i in range(n)], cooldown_s=5.0,
                      clock=clock)


def test_least_in_flight_then_in_turn():
    clock = Clock()
    rs = make(2, clock)
    a = rs.acquire()
    b = rs.acquire()
    assert a is not b  # one each
    rs.release(a)
    assert rs.acquire() is a  # a has fewer in flight
    assert [r.in_flight for r in rs.replicas] == [1, 1] and [r.served for r in rs.replicas] == [2, 1]


def test_a_refusal_takes_a_replica_out_for_the_cooldown_and_a_failed_check_until_it_passes():
    clock = Clock()
    rs = make(2, clock)
    a, b = rs.replicas
    rs.refused(a, "server is draining")
    assert rs.available() == [b] and all(rs.acquire() is b for _ in range(3))
    rs.health(a, True)  # a draining Triton still answers ready: the cooldown keeps it out
    assert rs.available() == [b]
    clock.now = 5.0
    assert rs.available() == [a, b]
    rs.health(b, False)
    assert rs.available() == [a]
    rs.health(b, True)
    assert rs.available() == [a, b]


def test_with_every_replica_out_the_others_are_tried_anyway_and_excluded_ones_never():
    clock = Clock()
    rs = make(2, clock)
    a, b = rs.replicas
    rs.refused(a, "x")
    rs.health(b, False)
    assert rs.acquire(exclude=(b,)) is a
    try:
        rs.acquire(exclude=(a, b))
    except ServerUnavailableError as exc:
        assert "no replica of this model is available" in str(exc)
    else:
        raise AssertionError("acquire with every replica excluded must fail")


def test_refusals_are_unreachable_draining_or_stopping_servers_only():
    assert is_refusal(ServerUnavailableError("cannot reach Triton at 127.0.0.1:1 (gRPC): connection refused"))
    assert is_refusal(ServerError("x", server_message="in ensemble 'ensemble', server is draining (shutting down)"))
    assert is_refusal(ServerError("x", server_message="Server is stopping, scheduler for model has stopped ..."))
    assert not is_refusal(ServerError("x", server_message="max_tokens must be >= 1"))
    assert not is_refusal(ValueError("server is draining"))


def test_a_route_lists_replicas_with_a_bar_or_a_yaml_list_and_refuses_empty_or_repeated_ones(tmp_path):
    import pytest

    from koserve.errors import ConfigError
    from koserve.gateway.config import load_config

    config = load_config(model_specs=["akallama-70b=127.0.0.1:8001|127.0.0.1:9001"])
    assert config.models[0].urls == ("127.0.0.1:8001", "127.0.0.1:9001")
    yaml_file = tmp_path / "gateway.yaml"
    yaml_file.write_text("models:\n  - name: akallama-70b\n    url: [127.0.0.1:8001, 127.0.0.1:9001]\n")
    assert load_config(yaml_file).models[0].urls == ("127.0.0.1:8001", "127.0.0.1:9001")
    assert load_config(model_specs=["akallama-70b=127.0.0.1:8001"]).models[0].urls == ("127.0.0.1:8001",)
    with pytest.raises(ConfigError, match="empty address"):
        load_config(model_specs=["akallama-70b=127.0.0.1:8001|"])
    with pytest.raises(ConfigError, match="names a replica twice"):
        load_config(model_specs=["akallama-70b=127.0.0.1:8001|127.0.0.1:8001"])
