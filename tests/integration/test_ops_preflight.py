"""Issue 10, items 1 and 2: preflight before anything starts or is written, and `microkit check`."""

from __future__ import annotations

import socket
import sys
import time

from support.cli import run_cli
from support.servers import free_port
from support.up import make_project


SECRET = "s" * 40


def project(tmp_path, services=None, gateway='listen = "127.0.0.1:0"', extra=""):
    root = make_project(tmp_path / "proj", services or {"plain": {"app": "services.plain.app:app", "route": "/plain"}},
                        {"plain": "plain_app.py"})
    text = (root / "microkit.toml").read_text().replace('listen = "127.0.0.1:0"', gateway)
    (root / "microkit.toml").write_text(text + extra)
    return root


def one_line(result, code: int, message: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert message in lines[0], lines[0]


HS256 = '\n[gateway.auth.jwt]\nalgorithms = ["HS256"]\n'


def test_hs256_without_a_secret_is_refused_before_anything_starts(tmp_path):
    root = project(tmp_path, {"plain": {"app": "services.plain.app:app", "route": "/plain", "auth": "jwt"}},
                   extra=HS256)
    for command in (["up"], ["gateway"], ["check"]):
        result = run_cli(*command, cwd=root, timeout=30)
        one_line(result, 2, "gateway.auth.jwt: environment variable MICROKIT_JWT_SECRET (the HS256 secret) is not set")
    short = run_cli("up", cwd=root, env={"MICROKIT_JWT_SECRET": "12345"}, timeout=30)
    one_line(short, 2, "MICROKIT_JWT_SECRET must hold at least 32 bytes")
    assert not (root / ".microkit").exists(), "nothing is written before the checks pass"


def test_missing_app_module_is_refused_before_anything_is_written(tmp_path):
    root = project(tmp_path, {"plain": {"app": "services.nope.app:app", "route": "/plain"}})
    for command in (["up"], ["run", "plain"], ["check"]):
        result = run_cli(*command, cwd=root, timeout=30)
        one_line(result, 2, "services.plain.app: cannot import services.nope.app:app: ModuleNotFoundError")
    assert not (root / ".microkit").exists()
    assert not list(root.rglob("__pycache__"))


def test_app_env_is_applied_while_importing(tmp_path):
    root = project(tmp_path, {"plain": {"app": "services.plain.app:app"}})
    toml = root / "microkit.toml"
    toml.write_text(toml.read_text().replace('app = "services.plain.app:app"',
                                             'app = "services.plain.app:app"\nenv = { NEEDED = "1" }'))
    (root / "services" / "plain" / "app.py").write_text(
        "import os\nif os.environ.get('NEEDED') != '1':\n    raise RuntimeError('NEEDED is not set')\n"
        "def app(environ, start_response):\n    return []\n")
    assert run_cli("check", cwd=root, timeout=30).returncode == 0
    (root / "microkit.toml").write_text((root / "microkit.toml").read_text().replace('NEEDED = "1"', 'NEEDED = "0"'))
    one_line(run_cli("check", cwd=root, timeout=30), 2,
             "services.plain.app: cannot import services.plain.app:app: RuntimeError: NEEDED is not set "
             "(services/plain/app.py, line 3)")


def test_missing_command_program_is_refused(tmp_path):
    root = project(tmp_path, {"cmd": {"command": "no-such-program-for-microkit --port $PORT"}})
    one_line(run_cli("up", cwd=root, timeout=30), 2, "services.cmd.command: program 'no-such-program-for-microkit' "
                                                     "is not on PATH")
    assert not (root / ".microkit").exists()


def test_a_taken_port_is_a_runtime_failure(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        root = project(tmp_path, gateway=f'listen = "127.0.0.1:{port}"')
        for command in (["up"], ["gateway"], ["check"]):
            one_line(run_cli(*command, cwd=root, timeout=30), 1, f"gateway.listen: cannot listen on 127.0.0.1:{port}")
    assert not (root / ".microkit").exists()


def test_check_prints_what_it_checked(tmp_path):
    root = project(tmp_path, {"plain": {"app": "services.plain.app:app", "route": "/plain", "auth": "jwt"},
                              "cmd": {"command": f"{sys.executable} -c pass"}}, extra=HS256)
    result = run_cli("check", cwd=root, env={"MICROKIT_JWT_SECRET": SECRET}, timeout=30)
    assert result.returncode == 0, result.stderr
    for expected in ("ok  gateway.auth: gateway security settings load",
                     "ok  services.plain.app: services.plain.app:app imports",
                     f"ok  services.cmd.command: {sys.executable}", "ok  gateway.listen: 127.0.0.1:0 is free",
                     "ok  registry: embedded", "all checks passed"):
        assert expected in result.stdout, result.stdout
    assert not (root / ".microkit").exists()


def test_check_beside_a_running_up_checks_the_edited_file(tmp_path):
    from support.up import Up
    root = project(tmp_path)
    up = Up(root)
    try:
        up.ready()
        result = run_cli("check", cwd=root, timeout=30)
        assert result.returncode == 0, result.stderr
        assert "ok  listen addresses: not checked, `microkit up` (pid" in result.stdout
        toml = root / "microkit.toml"
        toml.write_text(toml.read_text().replace("services.plain.app:app", "services.gone.app:app"))
        one_line(run_cli("check", cwd=root, timeout=30), 2, "services.plain.app: cannot import services.gone.app:app")
        assert run_cli("up", cwd=root, timeout=30).returncode == 1, "a second `up` is still refused"
    finally:
        up.close()


def test_unreachable_registry_fails_after_connect_timeout(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    root = project(tmp_path, extra=f'\n[registry]\nurl = "{url}"\nconnect_timeout = 1.5\n')
    for command in (["up"], ["check"]):
        started = time.monotonic()
        result = run_cli(*command, cwd=root, timeout=30)
        took = time.monotonic() - started
        one_line(result, 1, f"registry {url} did not answer within 1.5s ([registry] connect_timeout)")
        assert 1.2 < took < 8, took
        assert f"waiting up to 1.5s for the registry {url}" in result.stdout
    assert not (root / ".microkit").exists()


def test_a_key_file_that_does_not_load_is_refused(tmp_path):
    root = project(tmp_path, {"plain": {"app": "services.plain.app:app", "route": "/plain", "auth": "jwt"}},
                   extra='\n[gateway.auth.jwt]\nalgorithms = ["RS256"]\npublic_key = "keys/public.pem"\n')
    (root / "keys").mkdir()
    (root / "keys" / "public.pem").write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    result = run_cli("up", cwd=root, timeout=30)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "public.pem" in result.stderr and "Traceback" not in result.stderr
    assert not (root / ".microkit").exists()
