"""Every line the supervisor shows: `service.N | text`, coloured per service on a terminal, plain otherwise."""

from __future__ import annotations

import os
import sys
from typing import TextIO

COLOURS = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")
SYSTEM = "microkit"


class Printer:
    """Writes prefixed lines to one stream, flushing each, so pipes and terminals see them at once."""

    def __init__(self, stream: TextIO | None = None, colour: bool | None = None):
        self.stream = stream or sys.stdout
        if colour is None:
            colour = self.stream.isatty() and not os.environ.get("NO_COLOR")
        self.colour = colour
        self.width = len(SYSTEM)
        self.colours: dict[str, str] = {}

    def reserve(self, sources) -> None:
        """Widen the prefix column for sources known in advance, so prefixes align from the first line."""
        self.width = max([self.width, *map(len, sources)])

    def line(self, source: str, text: str) -> None:
        """One line from `source` ("users.2", or "microkit" for the supervisor itself)."""
        self.width = max(self.width, len(source))
        prefix = f"{source:<{self.width}} |"
        if self.colour:
            service = source.split(".", 1)[0]
            code = "1" if source == SYSTEM else self.colours.setdefault(
                service, COLOURS[len(self.colours) % len(COLOURS)])
            prefix = f"\033[{code}m{prefix}\033[0m"
        self.write(f"{prefix} {text.rstrip()}\n")

    def say(self, text: str) -> None:
        """A line from the supervisor."""
        self.line(SYSTEM, text)

    def plain(self, text: str) -> None:
        """A line without prefix, for what scripts look for (`ready: ...`)."""
        self.write(f"\033[1m{text}\033[0m\n" if self.colour else f"{text}\n")

    def write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass
