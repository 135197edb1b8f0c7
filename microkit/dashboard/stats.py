"""Traffic over the last minutes from samples of the gateway's added-up counters: req/s, error rate,
p50/p99 (interpolated within histogram buckets, as Prometheus's histogram_quantile does)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from microkit.metrics import CODE_CLASSES, METHODS
from microkit.metrics.gateway import AUTH_REFUSED, DURATION, RATELIMITED, REQUESTS
from microkit.metrics.table import Layout

KEEP = 300.0  # seconds of samples kept
RATE_WINDOW = 10.0
WINDOW = 60.0


def quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The q-quantile of bucket counts (not cumulative; the last one is +Inf), or None without data."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    running = 0.0
    for index, count in enumerate(counts):
        if running + count >= rank and count > 0:
            if index >= len(bounds):
                return bounds[-1]
            lower = bounds[index - 1] if index else 0.0
            return lower + (bounds[index] - lower) * (rank - running) / count
        running += count
    return bounds[-1]


class History:
    """Samples (time, cells) of one gateway layout's totals."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.samples: deque[tuple[float, list[float]]] = deque()

    def add(self, now: float, totals: list[float]) -> None:
        self.samples.append((now, totals))
        while self.samples and now - self.samples[0][0] > KEEP:
            self.samples.popleft()

    def _before(self, now: float, window: float) -> tuple[float, list[float]] | None:
        """The newest sample at least `window` old, else the oldest one."""
        chosen = None
        for sample in self.samples:
            if now - sample[0] >= window or chosen is None:
                chosen = sample
            else:
                break
        return chosen

    def routes(self, routes: Sequence[tuple[str, str]]) -> list[dict]:
        if not self.samples:
            return []
        now, last = self.samples[-1]
        rate_from = self._before(now, RATE_WINDOW)
        window_from = self._before(now, WINDOW)
        layout = self.layout
        family = next(f for f in layout.families if f.name == DURATION)
        bounds = family.buckets
        rows = []
        for key in routes:
            def total(cells: list[float], classes=CODE_CLASSES) -> float:
                return sum(cells[layout.offset(REQUESTS, *key, m, c)] for m in METHODS for c in classes)
            span = now - rate_from[0]
            rps = (total(last) - total(rate_from[1])) / span if span > 0 else 0.0
            done = total(last) - total(window_from[1])
            errors = total(last, ("5xx",)) - total(window_from[1], ("5xx",))
            start = layout.offset(DURATION, *key)
            counts = [last[start + i] - window_from[1][start + i] for i in range(len(bounds) + 1)]
            auth = sum(last[layout.offset(AUTH_REFUSED, *key, code)] for code in ("401", "403"))
            rows.append({
                "route": key[0], "service": key[1], "rps": round(rps, 2), "requests": int(total(last)),
                "requests_last_minute": int(done),
                "error_rate": round(errors / done, 4) if done else 0.0,
                "p50_ms": _ms(quantile(0.5, bounds, counts)), "p99_ms": _ms(quantile(0.99, bounds, counts)),
                "auth_refusals": int(auth), "ratelimit_refusals": int(last[layout.offset(RATELIMITED, *key)]),
            })
        return rows


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
