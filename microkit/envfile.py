"""`.env` files, as honcho and foreman read them: `KEY=VALUE` lines for the project's processes.

The project's `.env` (beside microkit.toml) is read by every command that loads the project, or the file
`--env-file` names. Variables already set in the environment win over the file, and a service's `env` in
microkit.toml wins over both (it is applied last, in the service's own processes).

Syntax: blank lines and `# comments` are skipped; `export KEY=VALUE` is accepted; a value may be
'single-quoted' (taken as is) or "double-quoted" (with \\n, \\t, \\" and \\\\ escapes); an unquoted value
ends at ` #`. A line that is none of these is an error naming the file and the line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import MutableMapping

from .config import display_path
from .errors import ConfigError

NAME = ".env"
LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def parse(text: str, label: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = LINE.match(line)
        if match is None:
            raise ConfigError(f"{label}: line {number}: expected KEY=VALUE, got {line.strip()[:60]!r}")
        key, raw = match.groups()
        try:
            values[key] = value(raw)
        except ValueError as exc:
            raise ConfigError(f"{label}: line {number}: {key}: {exc}") from None
    return values


def value(raw: str) -> str:
    if raw[:1] in ("'", '"'):
        quote = raw[0]
        end = raw.find(quote, 1) if quote == "'" else closing_quote(raw)
        if end < 0:
            raise ValueError(f"no closing {quote}")
        rest = raw[end + 1:].strip()
        if rest and not rest.startswith("#"):
            raise ValueError(f"unexpected text after the closing {quote}: {rest[:20]!r}")
        inner = raw[1:end]
        if quote == "'":
            return inner
        return re.sub(r"\\(.)", lambda m: ESCAPES.get(m.group(1), "\\" + m.group(1)), inner)
    return re.split(r"\s+#", raw, 1)[0].strip()


def closing_quote(raw: str) -> int:
    escaped = False
    for index in range(1, len(raw)):
        if escaped:
            escaped = False
        elif raw[index] == "\\":
            escaped = True
        elif raw[index] == '"':
            return index
    return -1


def load(path: Path, environ: MutableMapping[str, str] | None = None, required: bool = False) -> dict[str, str]:
    """Read `path` and set what the environment does not have yet; returns the file's values."""
    environ = os.environ if environ is None else environ
    label = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{label}: no such file (--env-file)") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{label}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    values = parse(text, label)
    for key, item in values.items():
        environ.setdefault(key, item)
    return values
