"""Fixtures of the integration tests: running `microkit up`, gateway harness processes, a new project,
an inner pytest run."""

import textwrap
from pathlib import Path

import pytest

from support.cli import MICROKIT_ENVIRONMENT, run_cli
from support.gateway import Processes
from support.up import Up, make_project


@pytest.fixture
def ups():
    """ups(root, *args, gateway=False, env=None): a running `microkit up` on the project at `root`; every one
    started is killed, with its whole process group, at teardown."""
    running: list[Up] = []

    def start(root: Path, *args: str, **options) -> Up:
        up = Up(root, *args, **options)
        running.append(up)
        return up

    yield start
    for up in running:
        up.close()


@pytest.fixture
def start(ups, tmp_path):
    """start(services, apps, *args, gateway=False): a project in tmp_path/proj, made on the first call (see
    support.up.make_project), and a running `microkit up` on it."""
    def start(services: dict, apps: dict, *args: str, **options) -> Up:
        root = tmp_path / "proj"
        if not root.exists():
            make_project(root, services, apps)
        return ups(root, *args, **options)

    return start


@pytest.fixture
def project(tmp_path) -> Path:
    """A project made by `microkit new project shop`."""
    result = run_cli("new", "project", "shop", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path / "shop"


@pytest.fixture
def procs(tmp_path):
    """Gateway and backend processes (programs/gateway_harness.py), killed at teardown."""
    processes = Processes(tmp_path)
    yield processes
    processes.close()


@pytest.fixture
def runner(pytester, monkeypatch, tmp_path):
    """runner(source, *args): a test file run by pytest in a subprocess, with none of microkit's variables
    set; `runner.out` is a folder the inner tests write facts to (MKT_OUT)."""
    for name in MICROKIT_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("MKT_OUT", str(out))

    def run(source: str, *args: str, timeout: float = 240):
        pytester.makepyfile(test_inner=textwrap.dedent(source))
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=timeout)

    run.out = out
    return run
