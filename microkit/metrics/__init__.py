"""Prometheus metrics for the gateway and the workers, added up across pre-forked processes.

`table` keeps each process's figures in a fixed row per worker slot of a memory-mapped file;
`exposition` writes the Prometheus text format; `workers` and `gateway` say what is measured;
`scrape` gathers everything one GET /__microkit/metrics answers.
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(".microkit") / "metrics"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other")
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_KNOWN_METHODS = frozenset(METHODS)


def folder(root: Path) -> Path:
    """Where a project's metric tables live on this host."""
    return root / METRICS_DIR


def method_label(method: str) -> str:
    return method if method in _KNOWN_METHODS else "other"


def code_class(status: int) -> str:
    """"2xx" ... "5xx"; a status the engine could not send (0) counts as 5xx."""
    return CODE_CLASSES[status // 100 - 1] if 100 <= status < 600 else "5xx"
