"""Helpers for microkit's tests: the real CLI in a subprocess, folder snapshots, server checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def server_missing(what: str, error: Exception) -> None:
    """Skip locally, fail in CI: a test that needs a server never passes by not running."""
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        pytest.fail(message + " (CI=true: a missing server is a failure)")
    pytest.skip(message)



def microkit_executable() -> str:
    """The installed `microkit` console script beside this Python: the real executable users run."""
    path = Path(sys.executable).parent / "microkit"
    if not path.exists():
        pytest.fail(f"{path} is missing: install the project first (pip install -e '.[test]')")
    return str(path)


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 60,
            executable: str | None = None) -> subprocess.CompletedProcess:
    """Run `microkit ARGS` in a subprocess, with a clean MICROKIT_* environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MICROKIT_")}
    environ.update(env or {})
    return subprocess.run([executable or microkit_executable(), *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=timeout)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under a folder with its bytes: compared before and after a refusal."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
