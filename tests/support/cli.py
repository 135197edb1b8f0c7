"""The real `microkit` CLI in a subprocess, and folder snapshots to compare before and after it ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = REPO / "tests" / "programs"  # the apps and scripts the tests run or copy
CLI = [sys.executable, "-m", "microkit.cli"]  # for long-running commands the test starts with Popen
# what microkit and its pytest plugin read from the environment: unset for an inner pytest run
MICROKIT_ENVIRONMENT = ("MICROKIT_CONFIG", "MICROKIT_REGISTRY_URL", "DATABASE_URL", "MICROKIT_TEST_REGISTRY_URL",
                        "MICROKIT_TEST_DATABASE_URL", "MICROKIT_TEST_MODE", "MICROKIT_JWT_SECRET")


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


def refused(result: subprocess.CompletedProcess, message: str, code: int = 2) -> None:
    """A refusal: the exit code, and exactly one line on stderr that contains the message."""
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert message in lines[0], lines[0]
