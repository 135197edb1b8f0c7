"""Rate limits: GCRA arithmetic, the Redis script shared by two processes, the Redis-down policies against
a private redis-server this file starts and stops, and the in-process limiter giving the same answers."""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
import uuid

import pytest
import redis

from microkit.gateway.security.ratelimit import (
    GCRA_SHA, Decision, LocalLimiter, Rate, RedisLimiter, gcra, limit_key,
)
from microkit.gateway.security.request import Denied, Identity, RequestInfo
from microkit.testing import eventually
from support.servers import REDIS_URL, delete_namespace, require_redis

PER_MINUTE = Rate.parse("100/min")


@pytest.fixture
def namespace():
    """A key prefix of this test's own on the shared Redis, deleted afterwards."""
    require_redis(REDIS_URL)
    name = f"mktest-{uuid.uuid4().hex[:12]}"
    yield name
    delete_namespace(REDIS_URL, name)


# --- Rate ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, limit, period", [
    ("100/min", 100, 60), ("10/s", 10, 1), ("10/sec", 10, 1), ("1/second", 1, 1), ("5/minute", 5, 60),
    ("1000/h", 1000, 3600), ("1000/hour", 1000, 3600), ("10000/day", 10000, 86400), (" 20 / 10s ", 20, 10),
    ("3/days", 3, 86400), ("7/2min", 7, 120),
])
def test_rates_parse(text, limit, period):
    rate = Rate.parse(text)
    assert (rate.limit, rate.period) == (limit, period)


@pytest.mark.parametrize("text", ["", "100", "100/", "/min", "100/fortnight", "0/min", "-1/min", "1.5/s",
                                  "100/0min", "100 per minute", "100/m"])
def test_bad_rates_name_the_accepted_form(text):
    with pytest.raises(ValueError, match='write COUNT/UNIT such as "100/min"|limit >= 1'):
        Rate.parse(text)


# --- GCRA and the local limiter --------------------------------------------------------------------------

def test_gcra_admits_the_burst_then_one_per_interval():
    rate = PER_MINUTE
    tat, now = None, 10_000_000
    results = []
    for _ in range(101):
        allowed, new_tat, remaining, retry, reset = gcra(tat, now, rate.interval_us, rate.window_us, 1)
        tat = new_tat if allowed else tat
        results.append((allowed, remaining))
    assert results[0] == (True, 99) and results[99] == (True, 0) and results[100] == (False, 0)
    assert retry == rate.interval_us and reset == 60_000_000
    later = now + rate.interval_us
    assert gcra(tat, later, rate.interval_us, rate.window_us, 1)[0] is True


def test_local_limiter_burst_of_300_admits_100():
    now = [50.0]
    limiter = LocalLimiter(clock=lambda: now[0])
    decisions = [limiter.check("k", PER_MINUTE) for _ in range(300)]
    assert sum(d.allowed for d in decisions) == 100
    assert decisions[0].headers() == [("RateLimit-Limit", "100"), ("RateLimit-Remaining", "99"),
                                      ("RateLimit-Reset", "1")]
    assert decisions[-1].headers() == [("RateLimit-Limit", "100"), ("RateLimit-Remaining", "0"),
                                       ("RateLimit-Reset", "60"), ("Retry-After", "1")]
    now[0] += 0.6
    assert limiter.check("k", PER_MINUTE).allowed
    assert not limiter.check("k", PER_MINUTE).allowed
    assert limiter.check("other", PER_MINUTE).allowed


def test_a_refusal_is_a_429_with_retry_after():
    limiter = LocalLimiter(clock=lambda: 0.0)
    rate = Rate.parse("1/min")
    limiter.enforce("k", rate)
    with pytest.raises(Denied) as caught:
        limiter.enforce("k", rate)
    error = caught.value
    assert error.status == 429 and error.message == "rate limit exceeded"
    assert dict(error.headers) == {"RateLimit-Limit": "1", "RateLimit-Remaining": "0", "RateLimit-Reset": "60",
                                   "Retry-After": "60"}


def test_burst_can_be_smaller_than_the_limit():
    limiter = LocalLimiter(clock=lambda: 0.0)
    rate = Rate.parse("100/min", burst=10)
    assert sum(limiter.check("k", rate).allowed for _ in range(50)) == 10


def test_local_limiter_forgets_idle_keys_beyond_max_keys():
    now = [0.0]
    limiter = LocalLimiter(max_keys=10, clock=lambda: now[0])
    rate = Rate.parse("1/s")
    for n in range(10):
        limiter.check(f"k{n}", rate)
    now[0] += 2
    limiter.check("fresh", rate)
    assert set(limiter._tats) == {"fresh"}
    for n in range(30):
        limiter.check(f"busy{n}", rate)
    assert len(limiter._tats) <= 10


# --- Redis -----------------------------------------------------------------------------------------------

def test_redis_limiter_burst_of_300_admits_100(namespace):
    limiter = RedisLimiter(REDIS_URL, namespace)
    decisions = [limiter.check("k", PER_MINUTE) for _ in range(300)]
    limiter.close()
    assert sum(d.allowed for d in decisions) == 100
    assert decisions[0].remaining == 99 and decisions[99].remaining == 0
    assert not decisions[-1].allowed and decisions[-1].retry_after > 0


def test_redis_and_local_limiters_give_the_same_answers(namespace):
    redis_limiter, local = RedisLimiter(REDIS_URL, namespace), LocalLimiter()
    rate = Rate.parse("50/hour")
    remote = [redis_limiter.check("k", rate) for _ in range(60)]
    mine = [local.check("k", rate) for _ in range(60)]
    redis_limiter.close()
    assert [(d.allowed, d.remaining, d.limit) for d in remote] == [(d.allowed, d.remaining, d.limit) for d in mine]
    assert [d.headers()[-1][0] for d in remote] == [d.headers()[-1][0] for d in mine]


def test_redis_keys_expire_and_use_the_server_clock(namespace):
    limiter = RedisLimiter(REDIS_URL, namespace)
    limiter.check("k", PER_MINUTE)
    limiter.close()
    client = redis.Redis.from_url(REDIS_URL)
    key = f"{namespace}:rl:k"
    seconds, micros = client.time()
    stored = int(client.get(key))
    ttl = client.pttl(key)
    client.close()
    server_now = seconds * 1_000_000 + micros
    assert 0 < stored - server_now <= PER_MINUTE.interval_us
    assert 0 < ttl <= 600


def _burst(url: str, namespace: str, count: int, ready, go, results) -> None:
    limiter = RedisLimiter(url, namespace)
    limiter._run._process().client.ping()
    ready.release()
    go.wait(10)
    results.put(sum(limiter.check("shared", PER_MINUTE).allowed for _ in range(count)))
    limiter.close()


def test_two_processes_share_one_limit(namespace):
    """Issue 5: across 2 processes, a limit of 100/min admits between 95 and 100 of a burst of 300."""
    context = multiprocessing.get_context("spawn")
    ready, go, results = context.Semaphore(0), context.Event(), context.Queue()
    workers = [context.Process(target=_burst, args=(REDIS_URL, namespace, 150, ready, go, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            assert ready.acquire(timeout=20)
        go.set()
        admitted = [results.get(timeout=20) for _ in workers]
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
                worker.join()
    assert all(worker.exitcode == 0 for worker in workers)
    assert 95 <= sum(admitted) <= 100, admitted


def test_the_script_is_reloaded_after_a_script_flush(private_redis):
    limiter = RedisLimiter(private_redis.url, "ns")
    assert limiter.check("k", PER_MINUTE).remaining == 99
    client = redis.Redis.from_url(private_redis.url)
    client.script_flush()
    assert client.script_exists(GCRA_SHA) == [False]
    assert limiter.check("k", PER_MINUTE).remaining == 98
    assert client.script_exists(GCRA_SHA) == [True]
    client.close()
    limiter.close()


def test_redis_down_fails_open_and_logs_once(private_redis, caplog):
    limiter = RedisLimiter(private_redis.url, "ns", on_redis_down="open", retry_interval=0.05)
    rate = Rate.parse("1/min")
    assert limiter.check("k", rate).allowed
    assert not limiter.check("k", rate).allowed
    private_redis.stop()
    with caplog.at_level(logging.WARNING, logger="microkit.gateway.ratelimit"):
        for _ in range(5):
            decision = limiter.check("k", rate)
            assert decision.allowed and decision.degraded and decision.headers() == []
            time.sleep(0.06)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "admitting every request" in errors[0].getMessage()
        private_redis.start()
        def counted():
            decision = limiter.check("k2", rate)
            return None if decision.degraded else [decision]

        [first] = eventually(counted, 2, "the limiter counting on Redis again")
        assert first.allowed and not limiter.check("k2", rate).allowed
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    limiter.close()


def test_redis_down_fails_closed_with_503(private_redis):
    limiter = RedisLimiter(private_redis.url, "ns", on_redis_down="closed", retry_interval=0.05)
    assert limiter.check("k", PER_MINUTE).allowed
    private_redis.stop()
    decision = limiter.check("k", PER_MINUTE)
    assert not decision.allowed and decision.status == 503
    with pytest.raises(Denied) as caught:
        limiter.enforce("k", PER_MINUTE)
    assert caught.value.status == 503 and caught.value.message == "rate limiter unavailable"
    assert dict(caught.value.headers) == {"Retry-After": "1"}
    private_redis.start()
    eventually(lambda: limiter.check("k", PER_MINUTE).allowed, 2, "the limiter on Redis again")
    assert limiter.enforce("k", PER_MINUTE).allowed
    limiter.close()


def test_an_outage_is_not_retried_on_every_request(private_redis, monkeypatch):
    limiter = RedisLimiter(private_redis.url, "ns", on_redis_down="closed", retry_interval=30)
    private_redis.stop()
    limiter.check("k", PER_MINUTE)
    calls = []
    monkeypatch.setattr(limiter._run, "_send", lambda *a: calls.append(a))
    for _ in range(100):
        assert limiter.check("k", PER_MINUTE).status == 503
    assert calls == []
    limiter.close()


def _hammer(limiter: RedisLimiter, rate: Rate, threads: int, each: int) -> list[Decision]:
    decisions: list[Decision] = []
    start = threading.Barrier(threads)

    def run() -> None:
        start.wait()
        for _ in range(each):
            decisions.append(limiter.check("k", rate))

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    return decisions


def test_concurrent_checks_share_round_trips_and_each_gets_its_own_answer(namespace, monkeypatch):
    limiter = RedisLimiter(REDIS_URL, namespace)
    sizes = []
    send = limiter._run._send
    monkeypatch.setattr(limiter._run, "_send", lambda client, batch: sizes.append(len(batch)) or send(client, batch))
    decisions = _hammer(limiter, Rate.parse("500/hour"), threads=20, each=40)
    limiter.close()
    assert len(decisions) == 800 and sum(d.allowed for d in decisions) == 500
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(500))
    assert max(sizes) > 1 and len(sizes) < 800


def test_concurrent_checks_recover_from_a_script_flush(private_redis):
    limiter = RedisLimiter(private_redis.url, "ns")
    limiter.check("warm", PER_MINUTE)
    client = redis.Redis.from_url(private_redis.url)
    client.script_flush()
    client.close()
    decisions = _hammer(limiter, Rate.parse("1000/hour"), threads=10, each=20)
    limiter.close()
    assert sorted(d.remaining for d in decisions) == list(range(800, 1000))


def test_concurrent_checks_all_get_the_policy_when_redis_dies(private_redis):
    limiter = RedisLimiter(private_redis.url, "ns", on_redis_down="closed")
    limiter.check("warm", PER_MINUTE)
    private_redis.stop()
    decisions = _hammer(limiter, PER_MINUTE, threads=10, each=5)
    limiter.close()
    assert len(decisions) == 50 and all(d.status == 503 and not d.allowed for d in decisions)


def test_on_redis_down_must_be_open_or_closed():
    with pytest.raises(ValueError, match='"open" or "closed"'):
        RedisLimiter(REDIS_URL, "ns", on_redis_down="maybe")


# --- keys ------------------------------------------------------------------------------------------------

def test_limit_keys():
    info = RequestInfo("GET", "/", {}, "203.0.113.9")
    with_key = Identity("billing", frozenset(), "AbCdEfGhIjK", "apikey")
    jwt_user = Identity("alice", frozenset(), None, "jwt")
    assert limit_key("key", info, with_key, "/orders") == "/orders|key:AbCdEfGhIjK"
    assert limit_key("key", info, jwt_user, "/orders") == "/orders|sub:alice"
    assert limit_key("key", info, None, "/orders") == "/orders|ip:203.0.113.9"
    assert limit_key("subject", info, with_key) == "|sub:billing"
    assert limit_key("ip", info, with_key) == "|ip:203.0.113.9"
    long = limit_key("subject", info, Identity("x" * 500, frozenset(), None, "jwt"))
    assert len(long) < 80 and long.startswith("|sub:")
    with pytest.raises(ValueError, match='"key", "subject" or "ip"'):
        limit_key("header", info)


def test_ipv6_clients_are_counted_per_64_prefix():
    a = RequestInfo("GET", "/", {}, "2001:db8:1:2:aaaa::1")
    b = RequestInfo("GET", "/", {}, "2001:db8:1:2:bbbb::2")
    c = RequestInfo("GET", "/", {}, "2001:db8:1:3::1")
    assert limit_key("ip", a) == limit_key("ip", b) == "|ip:2001:db8:1:2::"
    assert limit_key("ip", c) != limit_key("ip", a)
    assert limit_key("ip", RequestInfo("GET", "/", {}, "::ffff:198.51.100.7")) == "|ip:198.51.100.7"


def test_decision_headers_when_admitted():
    assert Decision(True, 100, 42, 0.0, 34.2).headers() == [
        ("RateLimit-Limit", "100"), ("RateLimit-Remaining", "42"), ("RateLimit-Reset", "35")]
    assert Decision(True, 100, 42, 0.0, 34.2).error() is None
