"""Issue 10, item 5: `up -d`, `logs`, `stop`, and the project's `.env`."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

from support.cli import CLI, run_cli
from support.up import Up, alive, get, make_project


@pytest.fixture
def project(tmp_path):
    root = make_project(tmp_path / "proj", {"web": {"app": "services.web.app:app"}}, {"web": "env_app.py"})
    yield root
    state = root / ".microkit" / "supervisor.json"
    if state.exists():  # a test that failed half-way: do not leave the detached `up` behind
        import json
        pid = json.loads(state.read_text())["pid"]
        if alive(pid):
            os.killpg(pid, signal.SIGKILL)


def test_up_detached_logs_and_stop(project):
    started = run_cli("up", "-d", "--no-gateway", cwd=project, timeout=60)
    assert started.returncode == 0, started.stdout + started.stderr
    ready, background = started.stdout.splitlines()
    url = re.fullmatch(r"ready: web (http://[\d.:]+)", ready).group(1)
    pid = int(re.search(r"pid (\d+)", background).group(1))
    assert alive(pid) and ".microkit/logs/up.log" in background
    assert get(url + "/HOME")[0] == 200

    follow = subprocess.Popen([*CLI, "logs", "-f", "web"], cwd=project, stdout=subprocess.PIPE, text=True)
    try:
        get(url + "/PATH")
        line = follow.stdout.readline()
        while "GET /PATH 200" not in line:
            line = follow.stdout.readline()
            assert line, "logs -f ended"
        assert re.match(r"^\d\d:\d\d:\d\d web\.1 +\| GET /PATH 200 ", line)
    finally:
        follow.terminate()
        follow.wait(5)

    every = run_cli("logs", cwd=project)
    assert every.returncode == 0 and "microkit | supervisor pid" in every.stdout.replace("  ", " ")
    only = run_cli("logs", "web", cwd=project).stdout.splitlines()
    assert only and all(re.match(r"^\d\d:\d\d:\d\d web\.1 ", line) for line in only), only
    assert run_cli("logs", "nope", cwd=project).returncode == 2

    stopped = run_cli("stop", cwd=project, timeout=30)
    assert stopped.returncode == 0 and f"stopped `microkit up` (pid {pid})" in stopped.stdout
    assert not alive(pid)
    assert "stopped" in (project / ".microkit" / "logs" / "up.log").read_text().splitlines()[-1]
    again = run_cli("stop", cwd=project)
    assert again.returncode == 1 and again.stderr.startswith("microkit: error: no `microkit up` is running")


def test_up_detached_reports_a_failure(tmp_path):
    root = make_project(tmp_path / "proj", {"broken": {"app": "services.broken.app:app"}}, {"broken": "broken_app.py"})
    result = run_cli("up", "-d", "--no-gateway", cwd=root, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("microkit: error: every service failed to start")
    assert len(result.stderr.strip().splitlines()) == 1


def test_stop_stops_a_foreground_up_too(project):
    up = Up(project)
    try:
        up.ready()
        assert run_cli("stop", cwd=project, timeout=30).returncode == 0
        assert up.process.poll() == 0
    finally:
        up.close()


def test_dot_env_is_loaded_and_microkit_toml_wins(project):
    toml = project / "microkit.toml"
    toml.write_text(toml.read_text().replace('app = "services.web.app:app"',
                                             'app = "services.web.app:app"\nenv = { BOTH = "from toml" }'))
    (project / ".env").write_text('# the project\'s variables\nGREETING="hello there"  # a comment\n'
                                  "export BOTH=from-dotenv\nSHELL_WINS=from-dotenv\nQUOTED='a #b'\n")
    up = Up(project, env={"SHELL_WINS": "from the shell"})
    try:
        url = up.ready()["web"]
        assert get(url + "/GREETING") == (200, "hello there")
        assert get(url + "/BOTH") == (200, "from toml")
        assert get(url + "/SHELL_WINS") == (200, "from the shell")
        assert get(url + "/QUOTED") == (200, "a #b")
        up.signal(signal.SIGTERM)
        assert up.wait() == 0
    finally:
        up.close()
    other = project / "other.env"
    other.write_text("GREETING=from other\n")
    up = Up(project, "--env-file", "other.env")
    try:
        url = up.ready()["web"]
        assert get(url + "/GREETING") == (200, "from other")
    finally:
        up.close()


def test_bad_env_files_are_refused(project):
    missing = run_cli("up", "--env-file", "nope.env", cwd=project)
    assert missing.returncode == 2 and "nope.env: no such file (--env-file)" in missing.stderr
    (project / ".env").write_text("GOOD=1\nthis is not a setting\n")
    bad = run_cli("check", cwd=project)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "microkit: error: .env: line 2: expected KEY=VALUE, got 'this is not a setting'")
    (project / ".env").write_text('OPEN="no end\n')
    assert "line 1: OPEN: no closing \"" in run_cli("check", cwd=project).stderr
