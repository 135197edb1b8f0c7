"""`microkit export systemd|compose|kubernetes`: the files, `--check`, and validation by real tools:
systemd-analyze verify, the compose-spec JSON schema (check-jsonschema's vendored copy), and the
Kubernetes JSON schemas (kubernetes-validate, strict)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml as pyyaml

from support.cli import PROGRAMS, microkit_executable, run_cli, snapshot
from support.netns import NetnsUnavailable, Network, http_get
from support.servers import free_port, server_missing

from microkit.export import plan, yaml
from microkit.testing import eventually

BIN = Path(sys.executable).parent
SECRET = "s3cr3t-in-toml"


def write_project(folder: Path, registry: str | None = "redis://127.0.0.1:6379/2", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "microkit.toml").write_text(
        '[project]\nname = "shop"\n\n'
        + (f'[registry]\nurl = "{registry}"\n\n' if registry else "")
        + '[gateway]\nlisten = "0.0.0.0:8080"\nworkers = 2\n\n'
        '[services.users]\napp = "services.users.app:app"\nroute = "/users"\nworkers = 3\n'
        f'env = {{ DATABASE_URL = "postgresql://app:{SECRET}@db/users" }}\n\n'
        '[services.orders]\napp = "services.orders.app:app"\nroute = "/orders"\nhealth = "/ping"\n'
        'graceful_timeout = 20\n' + extra)
    return folder


def export(root: Path, target: str, *args: str) -> subprocess.CompletedProcess:
    return run_cli("export", target, *args, cwd=root)


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: pip install -e '.[test]'")
    return str(path)


# The YAML writer.

@pytest.mark.parametrize("value", [
    "yes", "no", "on", "null", "true", "8000", "0.0.0.0:8000", "1.5", "-x", "a: b", "#c", "", " lead",
    "line\nbreak", "quote\"s", "é", "~", "@at", "*star", "&amp", "!bang", "%pct", "a,b", "[x]", "{y}", "1e3",
    "/healthz", "app.kubernetes.io/name", "redis:7-alpine",
])
def test_yaml_strings_read_back_as_the_same_strings(value):
    document = {"key": value, "list": [value, {"k": value}], value or "empty": [value]}
    assert pyyaml.safe_load(yaml.dump(document)) == document


def test_yaml_nesting_and_scalars_read_back():
    document = {"a": {"b": [1, 2.5, True, None, {"c": [], "d": {}}, [["x"], {"e": "f"}]]}, "g": [{"h": 1, "i": [1]}]}
    assert pyyaml.safe_load(yaml.dump(document)) == document
    assert list(pyyaml.safe_load_all(yaml.dump_all([document, {"z": 1}]))) == [document, {"z": 1}]


def test_registry_kinds():
    assert plan.registry_of(None).kind == "embedded"
    assert plan.registry_of("redis://127.0.0.1:6379/4") == plan.Registry("local", "redis://127.0.0.1:6379/4", "4")
    assert plan.registry_of("redis://localhost").kind == "local"
    assert plan.registry_of("redis://[::1]:6379/0").kind == "local"
    assert plan.registry_of("rediss://:pw@redis.internal:6380/1").kind == "external"
    assert plan.registry_of("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0").kind == "external"


# The command.

def test_every_target_writes_deterministic_files_and_check_passes(tmp_path):
    root = write_project(tmp_path / "a")
    other = write_project(tmp_path / "b")
    for target in ("systemd", "compose", "kubernetes"):
        first = export(root, target)
        assert first.returncode == 0, first.stderr
        assert "written" in first.stdout
        again = export(root, target)
        assert again.returncode == 0 and f"0 written" in again.stdout, again.stdout
        export(other, target)
        assert snapshot(root / "deploy" / target) == snapshot(other / "deploy" / target)
        check = export(root, target, "--check")
        assert check.returncode == 0, check.stderr
        assert "match microkit.toml" in check.stdout
    assert sorted(snapshot(root / "deploy" / "systemd")) == [
        "shop-gateway.service", "shop-orders.service", "shop-users.service", "shop.target"]
    assert sorted(snapshot(root / "deploy" / "compose")) == ["compose.yaml"]
    assert sorted(snapshot(root / "deploy" / "kubernetes")) == [
        "gateway.yaml", "orders.yaml", "registry-redis.yaml", "users.yaml"]


def test_check_names_changed_missing_and_stale_files_and_exits_1(tmp_path):
    root = write_project(tmp_path / "p")
    out = tmp_path / "out"
    assert export(root, "systemd", "--output", str(out)).returncode == 0
    (out / "shop-users.service").write_text((out / "shop-users.service").read_text().replace("Restart=", "#"))
    (out / "shop.target").unlink()
    (out / "notes.txt").write_text("mine")
    result = export(root, "systemd", "--output", str(out), "--check")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "shop-users.service (changed)" in lines[0] and "shop.target (missing)" in lines[0]
    assert "notes.txt" not in lines[0] and "Traceback" not in result.stderr

    # A removed service: its unit is reported, then removed by the next export; the user's file stays.
    text = (root / "microkit.toml").read_text()
    (root / "microkit.toml").write_text(text.split("[services.orders]")[0])
    result = export(root, "systemd", "--output", str(out), "--check")
    assert result.returncode == 1 and "shop-orders.service (no longer generated)" in result.stderr
    result = export(root, "systemd", "--output", str(out))
    assert result.returncode == 0 and "removed (shop-orders.service)" in result.stdout
    assert sorted(snapshot(out)) == ["notes.txt", "shop-gateway.service", "shop-users.service", "shop.target"]
    assert export(root, "systemd", "--output", str(out), "--check").returncode == 0


def test_a_changed_worker_count_fails_the_check(tmp_path):
    root = write_project(tmp_path / "p")
    for target in ("systemd", "compose", "kubernetes"):
        assert export(root, target).returncode == 0
    text = (root / "microkit.toml").read_text()
    (root / "microkit.toml").write_text(text.replace("workers = 3", "workers = 4"))
    for target, name in (("systemd", "shop-users.service"), ("compose", "compose.yaml"), ("kubernetes", "users.yaml")):
        result = export(root, target, "--check")
        assert result.returncode == 1 and f"{name} (changed)" in result.stderr, (target, result.stderr)


def test_bad_usage_and_unwritable_output_are_one_line(tmp_path):
    root = write_project(tmp_path / "p")
    result = export(root, "nomad")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    (tmp_path / "file").write_text("x")
    result = export(root, "compose", "--output", str(tmp_path / "file" / "sub"))
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("microkit: error: cannot write") and len(result.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "microkit.toml").write_text('[project]\nname = "x"\n')
    result = export(empty, "systemd")
    assert result.returncode == 2 and "no services" in result.stderr
    assert not (empty / "deploy").exists()


def test_no_secret_is_inlined(tmp_path):
    root = write_project(tmp_path / "p", registry=f"redis://:{SECRET}@redis.internal:6379/0")
    for target in ("systemd", "compose", "kubernetes"):
        assert export(root, target).returncode == 0
    for name, data in snapshot(root / "deploy").items():
        assert SECRET.encode() not in data, name
        assert b"DATABASE_URL" not in data, name


# What each target says, read back by a real parser.

def test_systemd_units_reference_env_files_and_require_a_local_registry(tmp_path):
    root = write_project(tmp_path / "p")
    export(root, "systemd")
    units = root / "deploy" / "systemd"
    users = (units / "shop-users.service").read_text()
    assert "ExecStart=/srv/shop/.venv/bin/microkit run users -c /srv/shop/microkit.toml" in users
    assert "EnvironmentFile=-/etc/microkit/shop/users.env" in users
    assert "Requires=redis-server.service" in users and "After=network-online.target redis-server.service" in users
    assert "(microkit, 3 workers)" in users
    assert "TimeoutStopSec=25" in (units / "shop-orders.service").read_text()
    gateway = (units / "shop-gateway.service").read_text()
    assert "microkit gateway -c" in gateway and "shop-orders.service shop-users.service" in gateway
    assert "Wants=shop-orders.service shop-users.service shop-gateway.service" in (units / "shop.target").read_text()

    remote = write_project(tmp_path / "r", registry="redis://10.1.2.3:6379/0")
    export(remote, "systemd")
    text = (remote / "deploy" / "systemd" / "shop-users.service").read_text()
    assert "redis-server" not in text and "Wants=network-online.target" in text


def test_compose_carries_depends_on_healthchecks_and_env_files(tmp_path):
    root = write_project(tmp_path / "p")
    export(root, "compose")
    doc = pyyaml.safe_load((root / "deploy" / "compose" / "compose.yaml").read_text())
    services = doc["services"]
    assert sorted(services) == ["gateway", "orders", "registry-redis", "users"]
    for name in ("gateway", "orders", "users"):
        service = services[name]
        assert service["depends_on"] == {"registry-redis": {"condition": "service_healthy"}}
        assert service["env_file"] == [{"path": f"env/{name}.env", "required": False}]
        assert service["environment"]["MICROKIT_REGISTRY_URL"] == "redis://registry-redis:6379/2"
    assert services["users"]["command"] == ["microkit", "run", "users", "--listen", "0.0.0.0:8000"]
    assert services["users"]["labels"] == {"microkit.workers": "3"}
    assert "http://127.0.0.1:8000/ping" in services["orders"]["healthcheck"]["test"][-1]
    assert "/__microkit/health" in services["gateway"]["healthcheck"]["test"][-1]
    assert services["gateway"]["ports"] == ["8080:8080"]
    assert services["gateway"]["command"][-1] == "0.0.0.0:8080"
    assert services["registry-redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_kubernetes_uses_the_registry_with_pod_ips_and_waits_for_it(tmp_path):
    root = write_project(tmp_path / "p")
    export(root, "kubernetes")
    folder = root / "deploy" / "kubernetes"
    users = list(pyyaml.safe_load_all((folder / "users.yaml").read_text()))
    assert [d["kind"] for d in users] == ["Deployment"]
    pod = users[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["MICROKIT_ADVERTISE_HOST"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["MICROKIT_REGISTRY_URL"]["value"] == "redis://shop-registry-redis:6379/2"
    assert container["envFrom"] == [{"secretRef": {"name": "shop-users", "optional": True}}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "shop-registry-redis" in pod["initContainers"][0]["command"][-1]
    assert "with 3 worker processes" in (folder / "users.yaml").read_text()
    gateway = list(pyyaml.safe_load_all((folder / "gateway.yaml").read_text()))
    assert [d["kind"] for d in gateway] == ["Deployment", "Service"]
    registry = list(pyyaml.safe_load_all((folder / "registry-redis.yaml").read_text()))
    assert [d["kind"] for d in registry] == ["PersistentVolumeClaim", "Deployment", "Service"]


def test_an_external_registry_comes_from_a_secret(tmp_path):
    root = write_project(tmp_path / "p", registry="rediss://redis.internal:6380/1")
    export(root, "kubernetes")
    export(root, "compose")
    assert not (root / "deploy" / "kubernetes" / "registry-redis.yaml").exists()
    users = pyyaml.safe_load((root / "deploy" / "kubernetes" / "users.yaml").read_text())
    env = {e["name"]: e for e in users["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MICROKIT_REGISTRY_URL"]["valueFrom"]["secretKeyRef"] == {"name": "shop-registry",
                                                                         "key": "MICROKIT_REGISTRY_URL"}
    doc = pyyaml.safe_load((root / "deploy" / "compose" / "compose.yaml").read_text())
    assert "registry-redis" not in doc["services"]
    assert doc["services"]["users"]["env_file"][0] == {"path": "env/registry.env", "required": True}


def test_kubernetes_names_that_clash_are_refused(tmp_path):
    root = write_project(tmp_path / "p", extra='\n[services.Users]\napp = "services.u.app:app"\n')
    result = export(root, "kubernetes")
    assert result.returncode == 2 and "'shop-users'" in result.stderr, result.stderr


# Validation with real tools.

@pytest.mark.parametrize("registry", ["redis://127.0.0.1:6379/2", None, "redis://10.1.2.3:6379/0"])
def test_systemd_analyze_verify_accepts_the_units(tmp_path, registry):
    """Verified on this host's systemd, in a private mount namespace whose /srv holds the layout the units
    expect (the real microkit executable at /srv/shop/.venv/bin/microkit); the host's /srv is untouched."""
    for needed in ("systemd-analyze", "unshare"):
        if shutil.which(needed) is None:
            pytest.fail(f"{needed} is missing (apt-get install systemd util-linux; .ci/run installs them)")
    root = write_project(tmp_path / "p", registry=registry)
    export(root, "systemd")
    units = sorted(str(p) for p in (root / "deploy" / "systemd").iterdir())
    broken = tmp_path / "broken" / "shop-users.service"
    broken.parent.mkdir()
    broken.write_text((root / "deploy" / "systemd" / "shop-users.service").read_text().replace("Restart=", "Restrt="))
    script = ("mount -t tmpfs none /srv && mkdir -p /srv/shop/.venv/bin && "
              f"ln -s {BIN / 'microkit'} /srv/shop/.venv/bin/microkit && "
              f'systemd-analyze verify "$@"')
    result = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *units], capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0 and "unshare failed" in result.stderr:
        pytest.fail(f"cannot make a mount namespace here: {result.stderr.strip()}")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    bad = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(broken)], capture_output=True, text=True,
                         timeout=60)
    assert "Unknown key" in bad.stderr


@pytest.mark.parametrize("registry", ["redis://127.0.0.1:6379/2", "rediss://redis.internal:6380/1"])
def test_compose_file_is_valid_against_the_compose_spec_schema(tmp_path, registry):
    root = write_project(tmp_path / "p", registry=registry)
    export(root, "compose")
    compose_file = root / "deploy" / "compose" / "compose.yaml"
    checker = tool("check-jsonschema")
    result = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec", str(compose_file)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(compose_file.read_text().replace("working_dir:", "workdir:", 1))
    result = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec", str(broken)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "workdir" in result.stdout


@pytest.mark.parametrize("registry", ["redis://127.0.0.1:6379/2", "rediss://redis.internal:6380/1"])
def test_kubernetes_manifests_are_valid_against_the_kubernetes_schemas(tmp_path, registry):
    root = write_project(tmp_path / "p", registry=registry)
    export(root, "kubernetes")
    files = sorted(str(p) for p in (root / "deploy" / "kubernetes").iterdir())
    validate = tool("kubernetes-validate")
    result = subprocess.run([validate, "--strict", *files], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == sum(Path(f).read_text().count("kind:") for f in files)
    broken = tmp_path / "broken.yaml"
    broken.write_text(Path(files[-1]).read_text().replace("periodSeconds", "periodSecs"))
    result = subprocess.run([validate, "--strict", str(broken)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "periodSecs" in result.stdout + result.stderr


def test_listen_option_is_checked(tmp_path):
    root = write_project(tmp_path / "p")
    for args in (("run", "users", "--listen", "nowhere"), ("gateway", "--listen", "1.2.3.4:99999")):
        result = run_cli(*args, cwd=root)
        assert result.returncode == 2 and result.stderr.startswith("microkit: error: --listen: expected"), result.stderr


def users_project(root: Path, app: str, toml: str) -> Path:
    """A project at `root` whose users service is programs/APP, with `toml` as its microkit.toml."""
    (root / "services" / "users").mkdir(parents=True)
    for init in ("services/__init__.py", "services/users/__init__.py"):
        (root / init).write_text("")
    shutil.copy(PROGRAMS / app, root / "services" / "users" / "app.py")
    (root / "microkit.toml").write_text(toml)
    return root


def test_run_listens_where_told_and_passes_the_deployments_gateway_url_on(tmp_path):
    """What the exported containers rely on: `microkit run NAME --listen 0.0.0.0:PORT`, and the gateway's
    address from MICROKIT_GATEWAY_URL when no gateway runs in the same process."""
    root = users_project(tmp_path / "p", "gateway_url_app.py",
                         '[project]\nname = "envtest"\n\n[services.users]\n'
                         'app = "services.users.app:app"\nroute = "/users"\nhealth = "/"\n')
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MICROKIT_")}
    environ["MICROKIT_GATEWAY_URL"] = "http://gateway.invalid:8000"
    process = subprocess.Popen([microkit_executable(), "run", "users", "--listen", f"127.0.0.1:{port}"], cwd=root,
                               env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        def answer() -> str | None:
            assert process.poll() is None, "microkit run exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                    return response.read().decode()
            except OSError:
                return None

        assert eventually(answer, 20, f"microkit run answering on port {port}") == "http://gateway.invalid:8000"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
        process.stdout.close()


# The exported container commands, run for real: each "container" is a network namespace of its own.

def test_the_exported_commands_and_healthchecks_work_as_containers_would_run_them(tmp_path):
    """compose.yaml's commands and healthchecks, and the Kubernetes probes, on three namespace hosts standing
    in for containers: the registry's Redis, users, the gateway. Only the registry's address differs (no
    container DNS here): MICROKIT_REGISTRY_URL names the Redis host's address, and MICROKIT_ADVERTISE_HOST
    the pod IP, as the Kubernetes manifests set it."""
    network = Network(3)
    try:
        network.build()
    except NetnsUnavailable as exc:
        server_missing("network namespaces", exc)
    root = users_project(tmp_path / "app", "users_here_app.py",
                         '[project]\nname = "shop"\n\n[registry]\nurl = "redis://127.0.0.1:6379/0"\n\n'
                         '[services.users]\napp = "services.users.app:app"\nroute = "/users"\n'
                         'health = "/users/ok"\nworkers = 2\n')
    assert export(root, "compose").returncode == 0
    assert export(root, "kubernetes").returncode == 0
    compose = pyyaml.safe_load((root / "deploy" / "compose" / "compose.yaml").read_text())["services"]
    manifests = {name: pyyaml.safe_load((root / "deploy" / "kubernetes" / f"{name}.yaml").read_text().split("---")[0])
                 for name in ("users", "gateway")}
    redis_host, users_host, gateway_host = network.hosts
    started: list[subprocess.Popen] = []
    try:
        started.append(subprocess.Popen(redis_host.command(shutil.which("redis-server"), "--bind", redis_host.address,
                                                           "--save", "", "--protected-mode", "no"),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        for name, host in (("users", users_host), ("gateway", gateway_host)):
            service = compose[name]
            environ = {k: v for k, v in os.environ.items() if not k.startswith("MICROKIT_")}
            environ.update(service["environment"])
            environ["MICROKIT_REGISTRY_URL"] = f"redis://{redis_host.address}:6379/0"
            environ["MICROKIT_ADVERTISE_HOST"] = host.address
            environ["PATH"] = f"{BIN}:{environ['PATH']}"   # `microkit` and `python` as in the image
            started.append(subprocess.Popen(host.command(*service["command"]), cwd=root, env=environ,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True))

        def healthcheck(name: str, host) -> int:
            test = compose[name]["healthcheck"]["test"]
            assert test[0] == "CMD"
            environ = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
            return subprocess.run(host.command(*test[1:]), env=environ, capture_output=True, timeout=10).returncode

        def probe(name: str, host) -> tuple[int, str]:
            container = manifests[name]["spec"]["template"]["spec"]["containers"][0]
            path = container["readinessProbe"]["httpGet"]["path"]
            port = container["ports"][0]["containerPort"]
            return host.call(http_get, host.address, port, path)

        for name, host in (("users", users_host), ("gateway", gateway_host)):
            eventually(lambda: healthcheck(name, host) == 0, 30, f"{name}'s healthcheck passing")
            assert probe(name, host)[0] == 200
        eventually(lambda: gateway_host.call(http_get, gateway_host.address, 8000, "/users/x") == (200, "users here"),
                   10, "the gateway routing to users")
        # A healthcheck that can fail: with users stopped, its healthcheck fails.
        os.killpg(started[1].pid, signal.SIGKILL)
        started[1].wait(5)
        eventually(lambda: healthcheck("users", users_host) != 0, 10, "users' healthcheck failing with users stopped")
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        network.destroy()


def test_the_units_exec_start_runs_the_service_and_stops_it_within_timeout_stop_sec(tmp_path, private_redis):
    """The unit's ExecStart, run as systemd would (in WorkingDirectory, with the layout the unit expects at
    /srv/shop in a private mount namespace): the service registers, and SIGTERM stops it within TimeoutStopSec."""
    root = users_project(tmp_path / "app", "users_here_app.py",
                         f'[project]\nname = "shop"\n\n[registry]\nurl = "{private_redis.url}"\n\n'
                         '[services.users]\napp = "services.users.app:app"\nroute = "/users"\n'
                         'health = "/users/ok"\n')
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "microkit").symlink_to(BIN / "microkit")
    assert export(root, "systemd").returncode == 0
    unit = (root / "deploy" / "systemd" / "shop-users.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    script = (f"mount -t tmpfs none /srv && mkdir /srv/shop && mount --bind {root} /srv/shop && "
              f"cd {shlex.quote(settings['WorkingDirectory'])} && exec {settings['ExecStart']}")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MICROKIT_")}
    process = subprocess.Popen(["unshare", "-m", "sh", "-c", script], env=environ, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def registered() -> bool:
            assert process.poll() is None, "the unit's process exited"
            status = run_cli("status", "--json", cwd=root)
            return status.returncode == 0 and bool(json.loads(status.stdout)["services"].get("users"))

        eventually(registered, 30, "the unit's service registered")
        process.send_signal(signal.SIGTERM)
        assert process.wait(int(settings["TimeoutStopSec"])) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def test_targets_sharing_one_folder_leave_each_others_files_alone(tmp_path):
    root = write_project(tmp_path / "p")
    out = tmp_path / "deploy"
    for target in ("systemd", "compose", "kubernetes"):
        assert export(root, target, "--output", str(out)).returncode == 0
    for target in ("systemd", "compose", "kubernetes"):
        result = export(root, target, "--output", str(out), "--check")
        assert result.returncode == 0, result.stderr
    assert len(snapshot(out)) == 4 + 1 + 4
