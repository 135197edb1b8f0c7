"""Rates such as "100/min": parsed once, shared by the config loader and the rate limiters (stdlib only)."""

from __future__ import annotations

import re
from dataclasses import dataclass

UNITS = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600, "day": 86400}
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d*)\s*([A-Za-z]+?)s?\s*")
_US = 1_000_000


@dataclass(frozen=True)
class Rate:
    """`limit` requests per `period` seconds, with bursts of up to `burst` (default: `limit`)."""

    limit: int
    period: float
    burst: int | None = None

    def __post_init__(self) -> None:
        if self.limit < 1 or self.period <= 0 or (self.burst is not None and self.burst < 1):
            raise ValueError("a rate needs a limit >= 1, a period > 0 and a burst >= 1")

    @classmethod
    def parse(cls, text: str, burst: int | None = None) -> Rate:
        """`"100/min"`, `"10/s"`, `"5000/hour"`, `"20/10s"`; units s, sec, second, min, minute, h, hour, day."""
        match = _RATE.fullmatch(text) if isinstance(text, str) else None
        unit = match and UNITS.get(match.group(3).lower())
        if not match or unit is None or (match.group(2) and int(match.group(2)) == 0):
            raise ValueError(f'rate {text!r}: write COUNT/UNIT such as "100/min" '
                             f'(units: s, sec, second, min, minute, h, hour, day)')
        return cls(int(match.group(1)), unit * int(match.group(2) or 1), burst)

    @property
    def interval_us(self) -> int:
        """Microseconds between requests at the steady rate."""
        return max(1, round(self.period * _US / self.limit))

    @property
    def window_us(self) -> int:
        """How far ahead of now the arrival time may run: the burst, in microseconds."""
        return self.interval_us * (self.burst or self.limit)

    def __str__(self) -> str:
        return f"{self.limit}/{self.period:g}s"
