"""A small YAML writer for the mappings, lists and scalars that exports produce.

Output is deterministic (keys in the order given), block style, with lists of scalars written inline.
A string is written bare only when YAML cannot read it as anything else; otherwise it is double-quoted
(JSON's escapes are valid YAML), so `"yes"`, `"8000"` or `"0.0.0.0:8000"` stay strings.
"""

from __future__ import annotations

import json
import re
from typing import Any

_BARE = re.compile(r"^[A-Za-z/][A-Za-z0-9_./@+-]*$")
_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if not isinstance(value, str):
        raise TypeError(f"cannot write {type(value).__name__} as YAML")
    if _BARE.match(value) and value.lower() not in _WORDS:
        return value
    return json.dumps(value, ensure_ascii=False)


def _lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            head = f"{pad}{scalar(key)}:"
            if isinstance(item, (dict, list)) and item and not _inline(item):
                out.append(head)
                out += _lines(item, indent + 2)
            else:
                out.append(f"{head} {_flow(item)}")
        return out
    out = []
    for item in value:
        if isinstance(item, (dict, list)) and item and not _inline(item):
            nested = _lines(item, indent + 2)
            out.append(f"{pad}- {nested[0][indent + 2:]}")
            out += nested[1:]
        else:
            out.append(f"{pad}- {_flow(item)}")
    return out


def _inline(value: Any) -> bool:
    return isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value)


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{}" if not value else "{" + ", ".join(f"{scalar(k)}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return scalar(value)


def dump(value: dict) -> str:
    """One YAML document for a mapping."""
    return "\n".join(_lines(value, 0)) + "\n"


def dump_all(documents: list[dict]) -> str:
    """Several documents, separated by `---`."""
    return "---\n".join(dump(d) for d in documents)
