"""Every line the supervisor shows: `HH:MM:SS service.N | text`, coloured per service on a terminal, plain
otherwise; or, with `--log-format json`, one JSON object a line (time, service, worker, level, message, and
method, path, status, ms, request_id, upstream for access lines).

Workers and the gateway write plain text lines; their access lines (`GET /x 200 1.2ms [-> upstream id=..]`)
are recognised here, so the JSON fields cost the workers nothing. Lines under `--log-level` are dropped,
and so are the access lines of health probes (`GET <health path>`) unless they were asked for.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Iterable, TextIO

COLOURS = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")
SYSTEM = "microkit"
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
FORMATS = ("text", "json")
ACCESS = re.compile(r"^(?P<method>[A-Z]{3,10}) (?P<path>/\S*|\*) (?P<status>\d{3}|-) (?P<ms>\d+(?:\.\d+)?)ms"
                    r"(?: -> (?P<upstream>\S+) id=(?P<request_id>\S+)(?: trace=(?P<trace_id>[0-9a-f]{32}))?)?$")
LEVEL_WORD = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")


class Printer:
    """Writes prefixed lines to one stream, flushing each, so pipes and terminals see them at once."""

    def __init__(self, stream: TextIO | None = None, colour: bool | None = None, log_format: str = "text",
                 level: str = "info", quiet_paths: Iterable[str] = (), clock=time.time):
        self.stream = stream or sys.stdout
        if colour is None:
            colour = self.stream.isatty() and not os.environ.get("NO_COLOR")
        self.json = log_format == "json"
        self.colour = colour and not self.json
        self.threshold = LEVELS[level]
        self.quiet = tuple(f"{method} {path} " for path in quiet_paths for method in ("GET", "HEAD"))
        self.second, self.clock_text = -1, ""
        self.clock = clock
        self.width = len(SYSTEM)
        self.colours: dict[str, str] = {}

    def reserve(self, sources: Iterable[str]) -> None:
        """Widen the prefix column for sources known in advance, so prefixes align from the first line."""
        self.width = max([self.width, *map(len, sources)])

    def line(self, source: str, text: str, level: str | None = None) -> None:
        """One line from `source` ("users.2", or "microkit" for the supervisor itself)."""
        text = text.rstrip()
        if self.quiet and text.startswith(self.quiet) and source != SYSTEM and ACCESS.match(text):
            return
        if level is None:
            word = LEVEL_WORD.match(text) if text[:1] in "DIWEC" else None
            level = {"CRITICAL": "error"}.get(word.group(1), word.group(1).lower()) if word else "info"
        if LEVELS.get(level, 20) < self.threshold:
            return
        now = self.clock()
        if self.json:
            self.write(json.dumps(self.record(source, text, level, now)) + "\n")
            return
        if len(source) > self.width:
            self.width = len(source)
        prefix = f"{source:<{self.width}} |"
        if self.colour:
            service = source.split(".", 1)[0]
            code = "1" if source == SYSTEM else self.colours.setdefault(
                service, COLOURS[len(self.colours) % len(COLOURS)])
            prefix = f"\033[{code}m{prefix}\033[0m"
        second = int(now)
        if second != self.second:  # one strftime a second, not one a line
            self.second, self.clock_text = second, time.strftime("%H:%M:%S", time.localtime(now))
        self.write(f"{self.clock_text} {prefix} {text}\n")

    def record(self, source: str, text: str, level: str, now: float) -> dict:
        service, _, worker = source.partition(".")
        record = {"time": stamp(now), "service": service, "worker": source if worker else None,
                  "level": level, "message": text}
        access = ACCESS.match(text) if source != SYSTEM else None
        if access is not None:
            fields = access.groupdict()
            record.update(method=fields["method"], path=fields["path"],
                          status=int(fields["status"]) if fields["status"].isdigit() else None,
                          ms=float(fields["ms"]), request_id=fields["request_id"], upstream=fields["upstream"],
                          trace_id=fields["trace_id"])
        return record

    def say(self, text: str, level: str = "info") -> None:
        """A line from the supervisor."""
        self.line(SYSTEM, text, level)

    def plain(self, text: str) -> None:
        """A line without prefix, for what scripts look for (`ready: ...`); a JSON object in JSON mode."""
        if self.json:
            self.write(json.dumps({"time": stamp(self.clock()), "service": SYSTEM, "worker": None,
                                   "level": "info", "message": text}) + "\n")
            return
        self.write(f"\033[1m{text}\033[0m\n" if self.colour else f"{text}\n")

    def write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass


def stamp(now: float) -> str:
    """ISO 8601 in UTC with milliseconds: `2026-12-01T08:20:01.123Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
