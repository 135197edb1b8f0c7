"""Deployment files from microkit.toml: `microkit export systemd|compose|kubernetes`.

Each target is a module whose `render(plan)` returns the files; `files.write` puts them on disk and
`files.differences` compares (`--check`). Rendering reads nothing but the Config, so the same
microkit.toml always gives the same bytes.
"""

from __future__ import annotations

from typing import Callable

from ..config import Config
from . import compose, kubernetes, systemd
from .files import ExportError, File, differences, write
from .plan import Plan, make

targets: dict[str, Callable[[Plan], list[File]]] = {
    systemd.TARGET: systemd.render,
    compose.TARGET: compose.render,
    kubernetes.TARGET: kubernetes.render,
}

__all__ = ["ExportError", "File", "differences", "render", "targets", "write"]


def render(target: str, config: Config) -> list[File]:
    """The files of one target for a project."""
    return targets[target](make(config))
