"""Preflight: everything `up`, `run` and `gateway` can check before they fork or write anything.

`microkit check` runs the same checks and prints each. Bad config (a missing or short HS256 secret, a
key file that does not load, an `app` that does not import, a command that is not found) raises
ConfigError (exit 2); what is wrong with the machine right now (a port in use, a registry that does not
answer within `[registry] connect_timeout`, another `up` running) raises SupervisorError (exit 1).

Apps are imported, and the gateway's security settings built, in short-lived subprocesses (all at
once), with each service's environment: the supervisor itself never imports an app or gevent, so its
forks stay clean, and an app that misbehaves at import cannot hurt it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .config import Address, Config, display_path
from .errors import ConfigError, SupervisorError
from .supervisor import control

IMPORT_TIMEOUT = 60.0
REGISTRY_RETRY = 0.2


@dataclass(frozen=True)
class Plan:
    """What a command is about to run: the services by name, the gateway or not, monolith or not."""

    services: Sequence[str]
    gateway: bool
    monolith: bool = False
    control_name: str = control.UP
    beside_running: bool = False  # `check` beside a running `up`: its addresses are in use, by it


def run(conf: Config, plan: Plan, report: Callable[[str], None] = lambda line: None,
        environ: dict[str, str] | None = None, notice: Callable[[str], None] = lambda line: None) -> None:
    """Every check, in order; `report` gets one line per check that passed, `notice` a line while it waits
    for the registry. Raises at the first failure."""
    environ = dict(os.environ if environ is None else environ)
    pid = control.running(conf.root, plan.control_name)
    if pid is not None and not plan.beside_running:
        what = "`microkit up`" if plan.control_name == control.UP else f"`microkit {plan.control_name}`"
        raise SupervisorError(f"{what} is already running for this project (pid {pid}); "
                              f"stop it first (`microkit stop`), or use `microkit reload`")
    report(f"config: {display_path(conf.path)} ({len(conf.services)} service(s))")
    gateway_url = f"http://{conf.gateway.listen.host}:{conf.gateway.listen.port}"
    running = [conf.services[name] for name in plan.services]

    jobs: list[tuple[str, str, subprocess.Popen]] = []
    if plan.gateway and not plan.monolith and security_configured(conf):
        jobs.append(("gateway.auth", "gateway security settings load", spawn(["gateway", str(conf.path)],
                                                                               conf.root, environ)))
    for service in running:
        if service.app is not None:
            env = {**environ, "MICROKIT_GATEWAY_URL": gateway_url, **service.env}
            jobs.append((f"services.{service.name}.app", f"{service.app} imports",
                         spawn(["app", str(conf.root), service.app], conf.root, env)))
    try:
        outcomes = [(key, ok, finish(process)) for key, ok, process in jobs]
    finally:
        for _, _, process in jobs:
            if process.poll() is None:
                process.kill()
                process.wait()
    for key, ok, error in outcomes:
        if error is not None:
            if key == "gateway.auth" and error.startswith("jwt: "):
                error = "gateway.auth." + error
            raise ConfigError(error if key == "gateway.auth" else f"{key}: {error}")
        report(f"{key}: {ok}")
    for service in running:
        if service.command is not None:
            report(f"services.{service.name}.command: {program(conf.root, service.name, service.command, service.env, environ)}")

    addresses: list[tuple[str, Address]] = []
    if plan.gateway:
        addresses.append(("gateway.listen", conf.gateway.listen))
    for service in running:
        if service.listen.port == 0 or (plan.monolith and service.app is not None):
            continue
        count = service.workers if service.command else 1
        for n in range(count):
            addresses.append((f"services.{service.name}.listen",
                              Address(service.listen.host, service.listen.port + n)))
    if pid is not None and addresses:
        report(f"listen addresses: not checked, `microkit up` (pid {pid}) is running")
        addresses = []
    for key, address in addresses:
        free(key, address)
        report(f"{key}: {address} is free")

    if conf.registry.url is not None:
        report(f"registry: {reachable(conf, notice)}")
    else:
        report(f"registry: embedded ({display_path(conf.root / control.STATE_DIR)})")


def security_configured(conf: Config) -> bool:
    """Whether the gateway has keys, secrets or CORS rules to build (else its check is skipped: it costs an
    import of the whole gateway)."""
    auth = conf.gateway.auth
    routed = [s for s in conf.services.values() if s.route is not None]
    return (bool(auth.jwt.algorithms) or auth.token.signing_key is not None
            or any((s.auth or auth.default) == "jwt" or s.cors is not None for s in routed))


def spawn(args: list[str], root: Path, env: dict[str, str]) -> subprocess.Popen:
    env = {**env, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen([sys.executable, "-m", "microkit.preflight", *args], cwd=root, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def finish(process: subprocess.Popen) -> str | None:
    """None when the child's check passed, else its one-line error."""
    try:
        out, _ = process.communicate(timeout=IMPORT_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"took more than {IMPORT_TIMEOUT:g}s"
    if process.returncode == 0:
        return None
    try:
        return json.loads(out.strip().splitlines()[-1])["error"]
    except (ValueError, IndexError, KeyError, TypeError):
        return f"the check exited with code {process.returncode}"


def program(root: Path, name: str, command: str, service_env: dict, environ: dict) -> str:
    """The program a command service runs, found as the supervisor will run it."""
    env = {**environ, **service_env, "PORT": "0", "HOST": "127.0.0.1"}
    try:
        args = [string.Template(arg).safe_substitute(env) for arg in shlex.split(command)]
    except ValueError as exc:
        raise ConfigError(f"services.{name}.command: cannot split {command!r}: {exc}") from None
    if not args:
        raise ConfigError(f"services.{name}.command: is empty")
    first = args[0]
    if "/" in first:
        path = root / first
        if not path.is_file() or not os.access(path, os.X_OK):
            raise ConfigError(f"services.{name}.command: {first}: no such executable file (from {root})")
        return str(path)
    found = shutil.which(first, path=env.get("PATH"))
    if found is None:
        raise ConfigError(f"services.{name}.command: program {first!r} is not on PATH")
    return found


def free(key: str, address: Address) -> None:
    """Bind and release `address`: a port in use is a runtime failure, a host we do not have is config."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.host, address.port))
        except OSError as exc:
            raise SupervisorError(f"{key}: cannot listen on {address}: {exc.strerror or exc}") from None


def reachable(conf: Config, notice: Callable[[str], None] = lambda line: None) -> str:
    """Wait up to `[registry] connect_timeout` for the registry to answer; SupervisorError otherwise."""
    from . import registry

    url, timeout = conf.registry.url, conf.registry.connect_timeout
    deadline = time.monotonic() + timeout
    store = registry.connect(url, project_root=conf.root, namespace=conf.project.name)
    try:
        while True:
            try:
                store.services()
                return f"{registry.redacted(url)} answers"
            except registry.RegistryUnavailable as exc:
                if time.monotonic() + REGISTRY_RETRY >= deadline:
                    raise SupervisorError(f"registry {registry.redacted(url)} did not answer within {timeout:g}s "
                                          f"([registry] connect_timeout): {exc}") from None
                if notice is not None:
                    notice(f"waiting up to {timeout:g}s for the registry {registry.redacted(url)} ({exc})")
                    notice = None
            time.sleep(REGISTRY_RETRY)
    finally:
        store.close()


# The child side: `python -m microkit.preflight app ROOT MODULE:ATTR` or `... gateway CONFIG`.

def check_app(root: str, app: str) -> None:
    sys.path.insert(0, root)
    module_name, attr = app.split(":")
    import importlib
    try:
        target = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except BaseException as exc:  # the app's own import failed: say how, in one line
        raise ConfigError(f"cannot import {app}: {type(exc).__name__}: {exc}{where(exc, root)}") from None
    if not callable(target):
        raise ConfigError(f"{app} is a {type(target).__name__}, not a WSGI callable")


def where(exc: BaseException, root: str) -> str:
    """` (services/x/app.py, line 3)`: the last frame of the project's own code, if any."""
    import traceback
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.startswith(root + os.sep) and "site-packages" not in frame.filename:
            return f" ({os.path.relpath(frame.filename, root)}, line {frame.lineno})"
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" ({exc.filename}, line {exc.lineno})"
    return ""


def check_gateway(path: str) -> None:
    """Build what the gateway would build at boot from `[gateway.auth]`: its own validation, run early."""
    from . import config
    from .gateway.app import routes_from_config
    from .gateway.policy import Security

    conf = config.load(Path(path))
    security = Security(conf)
    policies = [route.policy for route in routes_from_config(conf)]
    if any(p.auth == "jwt" for p in policies) or security.issues_tokens:
        security.jwt_settings
    if security.issues_tokens:
        security.signing_key


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["app"] and len(argv) == 3:
            check_app(argv[1], argv[2])
        elif argv[:1] == ["gateway"] and len(argv) == 2:
            check_gateway(argv[1])
        else:
            print(json.dumps({"error": "usage: python -m microkit.preflight app ROOT APP | gateway CONFIG"}))
            return 2
    except ConfigError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
