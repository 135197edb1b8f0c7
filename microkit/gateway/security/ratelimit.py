"""Rate limits with GCRA (the generic cell rate algorithm): one number per key, the theoretical arrival time.

A rate "100/min" means one request per 600 ms on average, with bursts of up to `burst` (default: the
limit, 100) at once; so a fresh key admits 100 requests immediately and then one every 600 ms.
`RedisLimiter` runs the algorithm as one Lua script on Redis's own clock (TIME), so any number of
gateway processes on any number of hosts share a limit exactly, whatever their clocks say; concurrent
checks of one process share round trips (see `pipelining`), and identical checks in one round trip
(same key, rate and cost: a busy caller) run as one script call for `count` requests in a row, which
answers how many of them fit and the arrival time before them; each caller works out its own answer.
`LocalLimiter` runs the same arithmetic in-process, for the embedded registry (one host, one limit per
process).

When Redis cannot be reached, `on_redis_down` decides: "open" admits (and logs once per outage),
"closed" refuses with 503. After a failure Redis is not tried again for `retry_interval` seconds, so an
outage costs nothing per request beyond the policy.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from microkit.gateway.security.pipelining import ScriptRunner
from microkit.rates import UNITS, Rate  # noqa: F401  (part of this module's API)
from microkit.gateway.security.request import Denied, Identity, RequestInfo
from microkit.registry.redis_registry import redacted

log = logging.getLogger("microkit.gateway.ratelimit")

_US = 1_000_000
MAX_KEY_PART = 128
IPV6_PREFIX = 64

GCRA_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local step = interval * cost
local admitted = math.floor((now + window - tat) / step)
if admitted > count then admitted = count end
if admitted > 0 then
  local new_tat = tat + admitted * step
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
else
  admitted = 0
end
return redis.status_reply(string.format('%d %d', admitted, tat - now))
"""
GCRA_SHA = hashlib.sha1(GCRA_SCRIPT.encode()).hexdigest()


@dataclass(frozen=True)
class Decision:
    """A limiter's answer; `headers()` are the RateLimit-* headers (and Retry-After when refused)."""

    allowed: bool
    limit: int
    remaining: int
    retry_after: float  # seconds until a request of this cost would pass; 0 when allowed
    reset: float  # seconds until the full burst is available again
    status: int = 429  # the status a refusal answers with: 429, or 503 when the limiter is unavailable
    degraded: bool = False  # admitted without counting (Redis down, fail open): no RateLimit headers

    def headers(self) -> list[tuple[str, str]]:
        if self.degraded:
            return []
        if self.status == 503:
            return [("Retry-After", str(max(1, math.ceil(self.retry_after))))]
        headers = [("RateLimit-Limit", str(self.limit)), ("RateLimit-Remaining", str(self.remaining)),
                   ("RateLimit-Reset", str(math.ceil(self.reset)))]
        if not self.allowed:
            headers.append(("Retry-After", str(max(1, math.ceil(self.retry_after)))))
        return headers

    def error(self) -> Denied | None:
        """The Denied to raise for a refusal (None when allowed)."""
        if self.allowed:
            return None
        message = "rate limit exceeded" if self.status == 429 else "rate limiter unavailable"
        return Denied(self.status, message, self.headers())


def gcra(tat: int | None, now: int, interval: int, window: int, cost: int) -> tuple[bool, int, int, int, int]:
    """One GCRA step (the Lua script's twin): (allowed, new tat, remaining, retry_after µs, reset µs)."""
    tat = now if tat is None or tat < now else tat
    new_tat = tat + interval * cost
    allow_at = new_tat - window
    if allow_at > now:
        return False, tat, (now + window - tat) // interval, allow_at - now, tat - now
    return True, new_tat, (now + window - new_tat) // interval, 0, new_tat - now


def _placed(rate: Rate, cost: int, admitted: int, before: int, place: int) -> Decision:
    """The answer to the `place`-th (0-based) of identical requests counted together, of which the first
    `admitted` fit, the arrival time being `before` µs ahead of now before them (the script's answer)."""
    step = rate.interval_us * cost
    window = rate.window_us
    if place < admitted:
        tat = before + (place + 1) * step
        return _decision(rate, True, (window - tat) // rate.interval_us, 0, tat)
    tat = before + admitted * step
    return _decision(rate, False, (window - tat) // rate.interval_us, tat + step - window, tat)


def _decision(rate: Rate, allowed: bool, remaining: int, retry_us: int, reset_us: int) -> Decision:
    return Decision(bool(allowed), rate.limit, int(remaining), retry_us / _US, reset_us / _US)


class RedisLimiter:
    """GCRA limits kept in Redis under `{namespace}:rl:{key}`, shared by every process that uses them."""

    def __init__(self, url: str, namespace: str, on_redis_down: str = "open", *, retry_interval: float = 1.0,
                 socket_timeout: float = 0.25) -> None:
        if on_redis_down not in ("open", "closed"):
            raise ValueError(f'on_redis_down must be "open" or "closed", not {on_redis_down!r}')
        self.url = url
        self.prefix = f"{namespace}:rl:"
        self.on_redis_down = on_redis_down
        self.retry_interval = retry_interval
        self.socket_timeout = socket_timeout
        self._run = ScriptRunner(url, GCRA_SCRIPT, socket_timeout=socket_timeout)
        self._down_until = 0.0
        self._down = False

    def check(self, key: str, rate: Rate, cost: int = 1) -> Decision:
        """Count one request (of `cost`) against `key`'s limit."""
        if self._down_until and time.monotonic() < self._down_until:
            return self._unavailable(rate)
        try:
            reply, place = self._run(self.prefix + key, rate.interval_us, rate.window_us, cost)
        except redis.RedisError as exc:
            self._mark_down(exc)
            return self._unavailable(rate)
        if self._down:
            self._down, self._down_until = False, 0.0
            log.warning("rate limiter: Redis at %s reachable again", redacted(self.url))
        admitted, before = map(int, reply.split())
        return _placed(rate, cost, admitted, before, place)

    def enforce(self, key: str, rate: Rate, cost: int = 1) -> Decision:
        """`check`, raising Denied (429 or 503) for a refusal; the allowed Decision's headers go on the response."""
        decision = self.check(key, rate, cost)
        if not decision.allowed:
            raise decision.error()
        return decision

    def close(self) -> None:
        """Close this process's Redis connections."""
        self._run.close()

    def _mark_down(self, exc: Exception) -> None:
        self._down_until = time.monotonic() + self.retry_interval
        if not self._down:
            self._down = True
            action = "admitting every request" if self.on_redis_down == "open" else "refusing requests with 503"
            log.error("rate limiter: Redis at %s unreachable (%s); %s until it is back",
                      redacted(self.url), type(exc).__name__, action)

    def _unavailable(self, rate: Rate) -> Decision:
        if self.on_redis_down == "open":
            return Decision(True, rate.limit, rate.burst or rate.limit, 0.0, 0.0, degraded=True)
        return Decision(False, rate.limit, 0, self.retry_interval, 0.0, status=503)


class LocalLimiter:
    """The same GCRA in this process's memory (for the embedded registry); keeps at most `max_keys` keys."""

    def __init__(self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._tats: dict[str, int] = {}
        self._evictions = 0
        self._lock = threading.Lock()

    def check(self, key: str, rate: Rate, cost: int = 1) -> Decision:
        """Count one request (of `cost`) against `key`'s limit."""
        now = int(self.clock() * _US)
        with self._lock:
            allowed, tat, remaining, retry_us, reset_us = gcra(
                self._tats.get(key), now, rate.interval_us, rate.window_us, cost)
            if allowed:
                self._tats.pop(key, None)
                self._tats[key] = tat
                if len(self._tats) > self.max_keys:
                    self._evict(now)
        return _decision(rate, allowed, remaining, retry_us, reset_us)

    def enforce(self, key: str, rate: Rate, cost: int = 1) -> Decision:
        """`check`, raising Denied 429 for a refusal."""
        decision = self.check(key, rate, cost)
        if not decision.allowed:
            raise decision.error()
        return decision

    def close(self) -> None:
        """Nothing to release."""

    def _evict(self, now: int) -> None:
        """Make room in O(1): drop the least recently admitted key (the dict keeps admission order). Every
        max_keys / 10 evictions, also sweep the keys whose arrival time has passed (back to a full burst),
        so a flood of new keys cannot turn every request into a full scan."""
        self._evictions += 1
        if self._evictions >= max(1, self.max_keys // 10):
            self._evictions = 0
            self._tats = {k: tat for k, tat in self._tats.items() if tat > now}
        while len(self._tats) > self.max_keys:
            del self._tats[next(iter(self._tats))]


def limit_key(by: str, info: RequestInfo, identity: Identity | None = None, scope: str = "") -> str:
    """The key a request is counted under, within `scope` (a route prefix): by "key" (API key id, else the
    subject, else the IP), "subject" (else the IP) or "ip" (the socket peer; IPv6 grouped by /64)."""
    if by == "key" and identity is not None and identity.key_id is not None:
        part = "key:" + identity.key_id
    elif by in ("key", "subject") and identity is not None:
        part = "sub:" + identity.subject
    elif by in ("key", "subject", "ip"):
        part = "ip:" + _client_ip(info.peer)
    else:
        raise ValueError(f'rate limit key must be "key", "subject" or "ip", not {by!r}')
    if len(part) > MAX_KEY_PART:
        part = part[:4] + hashlib.sha256(part.encode()).hexdigest()
    return f"{scope}|{part}"


def _client_ip(peer: str) -> str:
    if ":" not in peer:
        return peer
    try:
        address = ipaddress.IPv6Address(peer)
    except ValueError:
        return peer
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False).network_address)
