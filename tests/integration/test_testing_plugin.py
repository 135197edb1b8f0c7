"""The pytest plugin as users meet it: real test files run by pytest (pytester, in a subprocess, so the
plugin arrives through its entry point) against a project made with the real CLI, `microkit new project`
and `microkit new service`."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from microkit.testing import eventually
from support.cli import MICROKIT_ENVIRONMENT, run_cli
from support.up import gone

def scaffold(folder: Path, *services: str) -> Path:
    """`microkit new project shop` and `microkit new service NAME` for each name, through the real CLI."""
    result = run_cli("new", "project", "shop", cwd=folder)
    assert result.returncode == 0, result.stderr
    root = folder / "shop"
    for name in services:
        result = run_cli("new", "service", name, cwd=root)
        assert result.returncode == 0, result.stderr
    return root


def add_settings(root: Path, service: str, lines: str, top: str = "") -> None:
    """Add lines to [services.NAME] of the project's microkit.toml (and tables at its end)."""
    toml = root / "microkit.toml"
    text = toml.read_text().replace(f"[services.{service}]\n", f"[services.{service}]\n{lines}\n")
    toml.write_text(text + top)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return scaffold(tmp_path_factory.mktemp("generated"), "users", "orders")


def section(result, test: str) -> str:
    """The report of one failed inner test."""
    text = result.stdout.str()
    start = text.index(f" {test} _")
    end = min((i for i in (text.find("\n___", start + 1), text.find("\n===", start + 1)) if i > 0), default=len(text))
    return text[start:end]



def test_services_in_process_and_as_workers_with_a_database_each(runner, generated):
    result = runner("""
        import json, os, sys
        from pathlib import Path
        OUT = Path(os.environ["MKT_OUT"])

        def test_create_and_read(service):
            users = service("users")
            ada = users.post("/users/", json={"name": "ada"}, expect=201).json()
            assert users.get(f"/users/{ada['id']}", expect=200).json()["name"] == "ada"
            assert users.url.startswith("http://127.0.0.1:") and users.pids == [os.getpid()]

        def test_each_test_gets_a_fresh_database(service):
            assert service("users").get("/users/", expect=200).json() == []

        def test_two_services_two_databases(service):
            users, orders = service("users"), service("orders")
            users.post("/users/", json={"name": "u"}, expect=201)
            assert orders.get("/orders/", expect=200).json() == []
            assert users.get("/users/", expect=200).json()[0]["name"] == "u"

        def test_worker_processes_through_the_cli(service, microkit_test):
            users = service("users", mode="process", workers=2)
            assert len(users.pids) == 2 and os.getpid() not in users.pids
            (OUT / "pids").write_text(json.dumps(users.pids))
            users.post("/users/", json={"name": "ada"}, expect=201)
            assert [u["name"] for u in users.get("/users/", expect=200).json()] == ["ada"]
            ports = {i.port for i in microkit_test.project.registry.instances("users")}
            assert len(ports) == 2, ports  # each worker registers a port of its own
            assert "serving services.users.app:app" in users.log()

        def test_no_gevent_in_the_test_process(service):
            service("users")
            assert "gevent" not in sys.modules

        def test_a_wrong_status_shows_the_answer(service):
            service("users").post("/users/", json={}, expect=201)
        """, "--microkit-config", str(generated / "microkit.toml"))
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(["*POST http://127.0.0.1:*/users/: expected status 201, got 400:*name*is required*"])
    pids = json.loads((runner.out / "pids").read_text())
    assert len(pids) == 2 and all(gone(pid) for pid in pids), "worker processes outlived the test"


def test_the_project_is_found_from_the_test_file(runner, tmp_path):
    root = scaffold(tmp_path, "users")
    test_file = root / "services" / "users" / "tests" / "test_with_plugin.py"
    test_file.write_text(textwrap.dedent("""
        def test_found(service, microkit_config):
            assert microkit_config.parent.name == "shop"
            service("users").post("/users/", json={"name": "ada"}, expect=201)
        """))
    generated = runner("def test_nothing(): pass", str(root / "services"), "--collect-only", "-q")
    count = sum(1 for line in generated.outlines if "::" in line and "test_with_plugin" not in line)
    result = runner("def test_nothing(): pass", str(root / "services"))
    result.assert_outcomes(passed=count + 1)  # the generated tests (parametrized) and ours
    assert not (root / "data").exists() and not (root / ".microkit").exists(), "the test wrote into the project"


def test_errors_are_one_clear_line(runner, tmp_path):
    root = scaffold(tmp_path, "users", "broken", "sick")
    (root / "services" / "broken" / "app.py").write_text("raise RuntimeError('cannot boot: no settings')\n")
    (root / "services" / "sick" / "app.py").write_text(
        "import bottle\napp = bottle.Bottle()\napp.get('/healthz')(lambda: bottle.HTTPResponse('ill', 500))\n")
    result = runner("""
        import pytest

        def test_unknown_service(service):
            service("nope")

        def test_a_service_that_cannot_boot(service):
            service("broken", mode="process")

        def test_a_service_that_never_gets_healthy(service):
            service("sick", mode="process", timeout=2)

        def test_bad_mode(service):
            service("users", mode="threads")

        class TestUnreachableRegistry:
            @pytest.fixture
            def microkit_registry_url(self):
                return "redis://127.0.0.1:1/0"

            def test_start(self, service):
                service("users")

        class TestMissingConfig:
            @pytest.fixture
            def microkit_config(self, tmp_path):
                return tmp_path / "nowhere" / "microkit.toml"

            def test_start(self, service):
                service("users")
        """, "--microkit-config", str(root / "microkit.toml"))
    result.assert_outcomes(failed=5, errors=2)
    for line in ["*microkit.testing: no service named 'nope' in */microkit.toml (known: users, broken, sick)",
                 "*microkit.testing: `microkit run broken -c */microkit.toml` exited with code 2 before it was ready*",
                 "*cannot boot: no settings*",
                 "*microkit.testing: service sick (`microkit run sick`): not ready within 2s; its output (*sick.log):",
                 "*microkit | supervisor pid *",
                 "*microkit.testing: service users: mode expected one of inprocess, process, got 'threads'",
                 "*microkit.testing: registry redis://127.0.0.1:1/0 unavailable*",
                 "*microkit.testing: cannot delete this test's keys (shop_t*:*) on redis://127.0.0.1:1/0*",
                 "*microkit.testing: */nowhere/microkit.toml: no such file"]:
        result.stdout.fnmatch_lines([line])
    assert "During handling" not in result.stdout.str()
    assert "Traceback" not in section(result, "test_unknown_service")
    assert "Traceback" not in section(result, "test_bad_mode")


def test_the_gateway_applies_the_projects_policies(runner, generated, tmp_path):
    root = scaffold(tmp_path, "users", "orders")
    add_settings(root, "users", 'auth = "apikey"\nscopes = ["users"]\ncors = { origins = ["https://app.example.com"] }')
    add_settings(root, "orders", 'auth = "jwt"\nscopes = ["orders"]\nrate_limit = "3/min"\nrate_limit_by = "subject"',
                 top='\n[gateway.auth.jwt]\nalgorithms = ["HS256"]\n')
    result = runner("""
        import time

        def test_api_keys(service, gateway, api_key):
            service("users")
            gateway.post("/users/", json={"name": "ada"}, expect=401)
            gateway.with_headers({"X-API-Key": api_key("other", scopes=["x"])}).get("/users/", expect=403)
            billing = gateway.with_headers({"X-API-Key": api_key("billing", scopes=["users"])})
            ada = billing.post("/users/", json={"name": "ada"}, expect=201).json()
            assert billing.get(f"/users/{ada['id']}", expect=200).json()["name"] == "ada"
            preflight = gateway.options("/users/", headers={"Origin": "https://app.example.com",
                                                          "Access-Control-Request-Method": "POST"}, expect=204)
            assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example.com"

        def test_jwts(service, gateway, jwt_token):
            service("orders", mode="process")
            gateway.get("/orders/", expect=401)
            gateway.bearer(jwt_token("ada", scopes=["other"])).get("/orders/", expect=403)
            gateway.bearer(jwt_token("ada", scopes=["orders"], exp=int(time.time()) - 3600)).get("/orders/", expect=401)
            gateway.bearer(jwt_token("ada", scopes=["orders"])).get("/orders/", expect=200)

        def test_rate_limit(service, gateway, jwt_token):
            service("orders")
            ada = gateway.bearer(jwt_token("ada", scopes=["orders"]))
            for _ in range(3):
                ada.get("/orders/", expect=200)
            assert ada.get("/orders/", expect=429).headers["Retry-After"]

        def test_limits_start_again_in_each_test(service, gateway, jwt_token):
            service("orders")
            ada = gateway.bearer(jwt_token("ada", scopes=["orders"]))
            for _ in range(3):
                ada.get("/orders/", expect=200)

        def test_the_services_are_reached_only_through_policies(service, gateway):
            users = service("users")
            users.post("/users/", json={"name": "direct"}, expect=201)  # the service itself has no auth
            gateway.get("/users/", expect=401)
        """, "--microkit-config", str(root / "microkit.toml"))
    result.assert_outcomes(passed=5)


def test_tokens_for_rs256_and_es256_projects(runner, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from cryptography.hazmat.primitives.asymmetric import ec

    root = scaffold(tmp_path, "orders")
    (root / "keys").mkdir()
    for name, key in (("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                      ("ec", ec.generate_private_key(ec.SECP256R1()))):
        (root / "keys" / f"{name}.pem").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    add_settings(root, "orders", 'auth = "jwt"', top='\n[gateway.auth.jwt]\nalgorithms = ["RS256", "ES256"]\n'
                 'public_keys = { rsa = "keys/rsa.pem", ec = "keys/ec.pem" }\nissuer = "https://login.example"\n'
                 'audience = "shop"\n')
    result = runner("""
        import jwt

        def test_rs256(service, gateway, jwt_token):
            service("orders")
            token = jwt_token("ada")
            header, claims = jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})
            assert header["alg"] == "RS256" and claims["iss"] == "https://login.example" and claims["aud"] == "shop"
            gateway.bearer(token).get("/orders/", expect=200)
            gateway.bearer(jwt_token("ada", aud="elsewhere")).get("/orders/", expect=401)
            es = jwt_token("ada", alg="ES256")
            assert jwt.get_unverified_header(es)["alg"] == "ES256"
            gateway.bearer(es).get("/orders/", expect=200)

        def test_hs256_is_not_pinned(jwt_token):
            jwt_token("ada", alg="HS256")
        """, "--microkit-config", str(root / "microkit.toml"))
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*microkit.testing: HS256 is not among gateway.auth.jwt.algorithms (RS256, ES256)"])


def test_command_services_run_as_processes(runner, tmp_path):
    root = scaffold(tmp_path, "users")
    (root / "microkit.toml").write_text((root / "microkit.toml").read_text() + textwrap.dedent("""
        [services.files]
        command = "python3 -m http.server --bind 127.0.0.1 $PORT"
        route = "/files"
        health = "/"
        """))
    result = runner("""
        def test_files(service, gateway):
            files = service("files")  # a command cannot be imported: it runs as its own process
            assert files.get("/", expect=200).text.startswith("<!DOCTYPE")
            assert "SimpleHTTP" in gateway.get("/files/nothing").headers["Server"]
        """, "--microkit-config", str(root / "microkit.toml"))
    result.assert_outcomes(passed=1)


def test_calls_made_at_request_time_reach_the_tests_gateway(runner, tmp_path):
    root = scaffold(tmp_path, "users", "caller")
    (root / "services" / "caller" / "app.py").write_text(textwrap.dedent("""
        import bottle
        from microkit.client import ServiceClient

        app = bottle.Bottle()
        app.get("/healthz")(lambda: {"status": "ok"})

        @app.get("/caller/users")
        def users():
            return {"users": ServiceClient().get("/users/").json()}  # reads MICROKIT_GATEWAY_URL now
        """))
    result = runner("""
        import os

        def test_through_the_gateway(service, gateway):
            service("users").post("/users/", json={"name": "ada"}, expect=201)
            caller = service("caller")
            assert [u["name"] for u in caller.get("/caller/users", expect=200).json()["users"]] == ["ada"]
            assert os.environ["MICROKIT_GATEWAY_URL"] == gateway.url

        def test_without_a_gateway_nothing_is_reached(service):
            service("caller").get("/caller/users", expect=500)
            assert os.environ["MICROKIT_GATEWAY_URL"] == "http://127.0.0.1:0"
        """, "--microkit-config", str(root / "microkit.toml"))
    result.assert_outcomes(passed=2)
    assert "MICROKIT_GATEWAY_URL" not in os.environ


def test_a_killed_test_run_leaves_no_process_behind(generated, tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys

    for name in MICROKIT_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    facts = tmp_path / "pids.json"
    (tmp_path / "test_killed.py").write_text(textwrap.dedent(f"""
        import json, time

        def test_hangs(service, gateway):
            users = service("users", mode="process", workers=2)
            pids = users.pids + [users.process.proc.pid, gateway.process.proc.pid]
            open({str(facts)!r}, "w").write(json.dumps(pids))
            time.sleep(120)
        """))
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--microkit-config",
                            str(generated / "microkit.toml"), "test_killed.py"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def started() -> bool:
            assert run.poll() is None, "the inner pytest exited"
            return facts.exists() and bool(facts.read_text())

        eventually(started, 60, "the inner test's services started")
        pids = json.loads(facts.read_text())
        assert len(pids) == 4 and not any(gone(pid) for pid in pids)
        run.send_signal(signal.SIGKILL)
        run.wait()
        eventually(lambda: all(gone(pid) for pid in pids), 15, f"every one of {pids} gone after pytest was killed")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
