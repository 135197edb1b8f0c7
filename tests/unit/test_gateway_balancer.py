"""Balancing and passive health, with a fake clock."""

import pytest

from microkit.gateway.balancer import Balancer


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def balancer(policy="round_robin", n=3, **kw):
    clock = Clock()
    b = Balancer(policy, clock=clock, **kw)
    b.update((f"i{k}", "127.0.0.1", 9000 + k) for k in range(n))
    return b, clock


def test_round_robin_cycles():
    b, _ = balancer()
    assert [b.pick().key for _ in range(6)] == ["i0", "i1", "i2", "i0", "i1", "i2"]


def test_least_outstanding_prefers_the_idlest():
    b, _ = balancer("least_outstanding")
    b.upstreams[0].outstanding = 5
    b.upstreams[1].outstanding = 1
    b.upstreams[2].outstanding = 3
    assert {b.pick().key for _ in range(4)} == {"i1"}
    b.upstreams[1].outstanding = 3
    assert {b.pick().key for _ in range(6)} == {"i1", "i2"}


def test_exclude_skips_tried_instances():
    b, _ = balancer(n=2)
    first = b.pick()
    assert b.pick(exclude=[first]) is not first
    assert b.pick(exclude=b.upstreams) is None


def test_consecutive_failures_eject_for_a_growing_interval():
    b, clock = balancer(n=4, failure_threshold=3, base_ejection=1.0, max_ejection=3.0)
    bad = b.upstreams[0]
    assert [b.failed(bad) for _ in range(3)] == [False, False, True]
    assert bad not in b.healthy() and all(b.pick() is not bad for _ in range(8))
    clock.now += 1.01
    assert bad in b.healthy()
    for _ in range(3):
        b.failed(bad)
    clock.now += 1.01
    assert bad not in b.healthy(), "second ejection lasts 2 s"
    clock.now += 1.0
    assert bad in b.healthy()
    for _ in range(3):
        b.failed(bad)
    assert bad.ejected_until - clock.now == pytest.approx(3.0), "capped at max_ejection"


def test_a_success_resets_the_count():
    b, _ = balancer(n=2, failure_threshold=2)
    bad = b.upstreams[0]
    b.failed(bad)
    b.succeeded(bad)
    assert b.failed(bad) is False


def test_never_more_than_half_ejected():
    b, _ = balancer(n=4, failure_threshold=1)
    ejected = [b.failed(u) for u in b.upstreams]
    assert ejected == [True, True, False, False]
    assert len(b.healthy()) == 2
    single, _ = balancer(n=1, failure_threshold=1)
    assert single.failed(single.upstreams[0]) is False and single.pick() is not None


def test_update_keeps_counters_of_known_instances():
    b, _ = balancer(n=2)
    b.upstreams[0].outstanding = 4
    b.update([("i0", "127.0.0.1", 9000), ("i9", "127.0.0.1", 9009)])
    assert [u.key for u in b.upstreams] == ["i0", "i9"] and b.upstreams[0].outstanding == 4
    b.update([("i0", "127.0.0.1", 9100)])
    assert b.upstreams[0].outstanding == 0, "same id at a new address is a new instance"


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown balancing policy"):
        Balancer("random")
