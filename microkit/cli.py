"""The `microkit` command. Errors become one line on stderr and an exit code:
0 success, 1 runtime failure, 2 bad usage or bad config. `--debug` (or MICROKIT_DEBUG=1) shows tracebacks.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import click

from . import __version__, config
from .errors import ConfigError, MicrokitError, NotRunningError, SupervisorError, UsageError
from .supervisor import control

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def debug_enabled() -> bool:
    return os.environ.get("MICROKIT_DEBUG", "") not in ("", "0", "false", "no")


def help_without_command(ctx: click.Context) -> None:
    """A group called without a subcommand prints its help on stdout and exits 0 (like `git`)."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(0)


@click.group(context_settings=CONTEXT, invoke_without_command=True)
@click.version_option(__version__, "--version", prog_name="microkit", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors (also MICROKIT_DEBUG=1); "
                                            "accepted after the subcommand too.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """microkit: from one Python web process to many services."""
    if debug:
        os.environ["MICROKIT_DEBUG"] = "1"
    help_without_command(ctx)


config_option = click.option(
    "-c", "--config", "config_file", type=click.Path(dir_okay=False), default=None,
    help="microkit.toml to use (default: $MICROKIT_CONFIG, else the nearest in this folder or a parent).")
env_file_option = click.option(
    "--env-file", type=click.Path(dir_okay=False), default=None,
    help="Variables to load instead of the project's .env (the environment and microkit.toml win).")


def load_project(config_file: str | None, env_file: str | None = None) -> config.Config:
    """The project's config, after its .env (beside microkit.toml, or --env-file) filled the environment."""
    from . import envfile
    path = config.find(config_file)
    if env_file is not None:
        envfile.load(Path(env_file), required=True)
    else:
        envfile.load(path.resolve().parent / envfile.NAME)
    return config.load(path)


@cli.group(invoke_without_command=True)
@click.pass_context
def new(ctx: click.Context) -> None:
    """Scaffold a project or a service from templates."""
    help_without_command(ctx)


@new.command("project")
@click.argument("name")
def new_project(name: str) -> None:
    """Create the project folder NAME with microkit.toml, services/, README.md and .gitignore."""
    from . import scaffold
    scaffold.apply(scaffold.plan_project(name), Path.cwd())
    click.echo(f"created {name}/")
    click.echo(f"next: cd {name} && microkit new service users")


@new.command("service")
@click.argument("name", required=False)
@click.option("--template", "-t", default="rest", show_default=True,
              help="A built-in template name (see --list), or the path of your own template folder.")
@click.option("--route", default=None, help='Path prefix at the gateway.  [default: "/NAME"]')
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (or instances, for a command service).")
@click.option("--var", "values", multiple=True, metavar="NAME=VALUE",
              help="Set a variable the template's template.toml declares (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print the files and the microkit.toml change; write nothing.")
@click.option("--list", "list_", is_flag=True, help="List the built-in templates and exit.")
@config_option
def new_service(name: str | None, template: str, route: str | None, workers: int, values: tuple[str, ...],
                dry_run: bool, list_: bool, config_file: str | None) -> None:
    """Add services/NAME and its [services.NAME] table in microkit.toml."""
    from . import scaffold
    if list_:
        templates = scaffold.catalogue()
        width = max(len(t.name) for t in templates)
        for t in templates:
            click.echo(f"{t.name:<{width}}  {t.description}")
        return
    if name is None:
        raise UsageError("microkit new service: missing NAME (or --list for the templates)")
    settings = {}
    for value in values:
        var, sep, text = value.partition("=")
        if not sep or not var:
            raise UsageError(f"--var {value}: expected NAME=VALUE")
        settings[var] = text
    project = config.discover(config_file)
    plan = scaffold.plan_service(project, name, template=template, route=route, workers=workers, values=settings)
    if dry_run:
        click.echo(plan.describe())
        return
    scaffold.apply(plan, project.root)
    folder = config.display_path(project.root / "services" / name)
    click.echo(f"created {folder}/ and [services.{name}] in {config.display_path(project.path)}")
    click.echo(f"next: pytest {folder}")


def log_options(command):
    """--log-format, --log-level and --log-health, for the commands that supervise (they reach `supervise`)."""
    from .supervisor.printer import FORMATS, LEVELS
    command = click.option("--log-health", is_flag=True,
                           help="Also log the health probes' own requests (left out by default).")(command)
    command = click.option("--log-level", type=click.Choice(list(LEVELS)), default="info", show_default=True,
                           help="Leave out lines below this level (warning and above: no access lines).")(command)
    return click.option("--log-format", type=click.Choice(FORMATS), default="text", show_default=True,
                        help="text: `HH:MM:SS service.N | line`; json: one JSON object a line.")(command)


@cli.command()
@click.argument("services", nargs=-1)
@config_option
@click.option("--reload", "reload_", is_flag=True,
              help="Development: reload a service's workers when its Python files change.")
@click.option("--no-access-log", is_flag=True, help="No log line per request (overrides access_log).")
@click.option("--no-gateway", is_flag=True, help="Run the services only, without the gateway.")
@click.option("--monolith", is_flag=True,
              help="Every service's app mounted in one process at the gateway's address (same URLs).")
@click.option("-d", "--detach", is_flag=True,
              help="Run in the background once ready, logging to .microkit/logs/up.log (`microkit logs`, `microkit stop`).")
@env_file_option
@log_options
def up(services: tuple[str, ...], config_file: str | None, reload_: bool, no_access_log: bool,
       no_gateway: bool, monolith: bool, detach: bool, env_file: str | None, **logs) -> None:
    """Run the project's services (or the SERVICES named) and the gateway, in the foreground.

    Each service runs as `workers` gevent worker processes sharing one socket (or as its command),
    registered in the registry once healthy. Prints `ready: gateway http://HOST:PORT` once every
    service is healthy and routed. SIGINT/SIGTERM stop gracefully, SIGHUP reloads with no downtime,
    SIGTTIN/SIGTTOU add or remove a worker of every service.
    """
    if monolith and no_gateway:
        raise UsageError("--monolith serves at the gateway's address; it cannot be combined with --no-gateway")
    project = load_project(config_file, env_file)
    if monolith:
        from .monolith import check
        check(project)
    if detach:
        preflight_checks(project, services, gateway=not no_gateway, monolith=monolith)
        start_detached(project, services)
        return
    supervise(project, services, logs, reload=reload_,
              access_log=False if no_access_log else None, gateway=not no_gateway, monolith=monolith)


@cli.command()
@click.argument("service")
@config_option
@click.option("--reload", "reload_", is_flag=True, help="Reload the workers when Python files change.")
@click.option("--no-access-log", is_flag=True, help="No log line per request (overrides access_log).")
@click.option("--listen", default=None, metavar="HOST:PORT", help="Listen here instead of services.SERVICE.listen.")
@env_file_option
@log_options
def run(service: str, config_file: str | None, reload_: bool, no_access_log: bool, listen: str | None,
        env_file: str | None, **logs) -> None:
    """Run one SERVICE alone (no gateway), registering into the configured registry: for other hosts."""
    project = load_project(config_file, env_file)
    if listen is not None and service in project.services:
        services = {**project.services, service: replace(project.services[service], listen=listen_address(listen))}
        project = replace(project, services=MappingProxyType(services))
    supervise(project, (service,), logs, reload=reload_,
              access_log=False if no_access_log else None, gateway=False, control_name=f"run-{service}-{os.getpid()}")


@cli.command()
@config_option
@click.option("--no-access-log", is_flag=True, help="No log line per request (overrides gateway.access_log).")
@click.option("--listen", default=None, metavar="HOST:PORT", help="Listen here instead of gateway.listen.")
@env_file_option
@log_options
def gateway(config_file: str | None, no_access_log: bool, listen: str | None, env_file: str | None, **logs) -> None:
    """Run the gateway alone: it routes to the instances the registry lists, wherever they run."""
    project = load_project(config_file, env_file)
    if listen is not None:
        project = replace(project, gateway=replace(project.gateway, listen=listen_address(listen)))
    supervise(project, (), logs, access_log=False if no_access_log else None, run_services=False,
              control_name=f"gateway-{os.getpid()}")


def listen_address(value: str) -> config.Address:
    try:
        return config.address(value)
    except config.Invalid as exc:
        raise UsageError(f"--listen: {exc}") from None


def supervise(project: config.Config, services: tuple[str, ...], logs: dict, **options) -> None:
    """Preflight (nothing starts or is written when a check fails), then the arbiter."""
    from .supervisor.arbiter import GATEWAY_HEALTH, Arbiter
    from .supervisor.printer import LEVELS, Printer
    preflight_checks(project, services, gateway=options.get("gateway", True),
                     run_services=options.get("run_services", True), monolith=options.get("monolith", False),
                     control_name=options.get("control_name", control.UP))
    quiet = () if logs["log_health"] else {GATEWAY_HEALTH, *(s.health for s in project.services.values())}
    options["printer"] = Printer(log_format=logs["log_format"], level=logs["log_level"], quiet_paths=quiet)
    if LEVELS[logs["log_level"]] > LEVELS["info"]:
        options["access_log"] = False  # access lines are info: not written at all, rather than dropped
    if Arbiter(project, services, **options).run():
        raise SupervisorError("every service failed to start (see the errors above)")


def preflight_checks(project: config.Config, services: tuple[str, ...], *, gateway: bool, run_services: bool = True,
                     monolith: bool = False, control_name: str = control.UP, report=lambda line: None,
                     beside_running: bool = False) -> None:
    from . import preflight
    from .supervisor.arbiter import Arbiter
    names = Arbiter.select(project, services) if run_services else []
    plan = preflight.Plan(names, gateway=gateway, monolith=monolith, control_name=control_name,
                          beside_running=beside_running)
    preflight.run(project, plan, report, notice=click.echo)


@cli.command()
@click.argument("services", nargs=-1)
@config_option
@click.option("--no-gateway", is_flag=True, help="Check for `up --no-gateway`.")
@click.option("--monolith", is_flag=True, help="Check for `up --monolith`.")
@env_file_option
def check(services: tuple[str, ...], config_file: str | None, no_gateway: bool, monolith: bool,
          env_file: str | None) -> None:
    """Run the preflight checks of `up` (for the SERVICES named, or all) and print what was checked.

    Secrets and key files present and valid, each app importable with its service's env, command
    programs found, listen addresses free, the registry reachable. Exit 2 for bad config, 1 for a
    runtime problem (a port in use, the registry down), 0 when `up` would start. Beside a running
    `up`, it checks an edited microkit.toml before `microkit reload` (without the addresses).
    """
    if monolith and no_gateway:
        raise UsageError("--monolith serves at the gateway's address; it cannot be combined with --no-gateway")
    project = load_project(config_file, env_file)
    if monolith:
        from .monolith import check as check_monolith
        check_monolith(project)
    preflight_checks(project, services, gateway=not no_gateway, monolith=monolith,
                     report=lambda line: click.echo(f"ok  {line}"), beside_running=True)
    click.echo("all checks passed")


LOG_FILE = "up.log"
DETACH_READY_TIMEOUT = 120.0


def logs_dir(root: Path) -> Path:
    return root / control.STATE_DIR / "logs"


def start_detached(project: config.Config, services: tuple[str, ...]) -> None:
    """`up -d`: run this same `up` without -d in a new session, its output appended to .microkit/logs/up.log;
    wait until it is ready (print its ready line) or has failed (exit as it did, with its error)."""
    import subprocess
    folder = logs_dir(project.root)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / LOG_FILE
    args = [a for a in hoist_debug(sys.argv[1:]) if a not in ("-d", "--detach")]
    with open(log, "ab") as out:
        start = out.tell()
        child = subprocess.Popen([sys.executable, "-m", "microkit.cli", *args], stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + DETACH_READY_TIMEOUT
    shown = config.display_path(log)
    while True:
        with open(log, "rb") as source:
            source.seek(start)
            lines = source.read().decode("utf-8", "replace").splitlines()
        ready = next((message for message in map(plain_message, lines) if message.startswith("ready: ")), None)
        if ready is not None:
            click.echo(ready)
            click.echo(f"running in the background: pid {child.pid}, logs in {shown} "
                       f"(`microkit logs -f`), `microkit stop` to stop")
            return
        code = child.poll()
        if code is not None:
            errors = [line for line in lines if line.startswith("microkit: error: ")]
            message = errors[-1][len("microkit: error: "):] if errors else f"`microkit up` exited with code {code}"
            raise SupervisorError(f"{message} (see {shown})") if code != 2 else UsageError(f"{message} (see {shown})")
        if time.monotonic() > deadline:
            click.echo(f"started in the background (pid {child.pid}) but not ready after "
                       f"{DETACH_READY_TIMEOUT:g}s; see {shown}")
            return
        time.sleep(0.1)


@cli.command()
@click.argument("service", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they come (Ctrl-C to stop).")
@click.option("-n", "--lines", "count", type=click.IntRange(min=0), default=None,
              help="Only the last N lines.")
@config_option
def logs(service: str | None, follow: bool, count: int | None, config_file: str | None) -> None:
    """Print the log of `microkit up -d` (.microkit/logs/up.log), or only SERVICE's lines."""
    project = load_project(config_file)
    if service is not None and service not in project.services and service not in ("gateway", "microkit"):
        raise UsageError(f"no service named {service!r} in {project.path.name} "
                         f"(known: {', '.join(['gateway', *project.services])})")
    path = logs_dir(project.root) / LOG_FILE
    if not path.exists():
        raise NotRunningError(f"no log yet: {config.display_path(path)} is written by `microkit up -d`")
    with open(path, "rb") as source:
        lines = [line for line in source.read().decode("utf-8", "replace").splitlines() if belongs(line, service)]
        for line in lines[-count:] if count else ([] if count == 0 else lines):
            click.echo(line)
        if not follow:
            return
        pending = b""
        try:
            while True:
                chunk = source.read()
                if not chunk:
                    time.sleep(0.2)
                    continue
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    line = raw.decode("utf-8", "replace")
                    if belongs(line, service):
                        click.echo(line)
        except KeyboardInterrupt:
            return


def plain_message(line: str) -> str:
    """A line of the supervisor's own output without prefix: as is in text, the message of a JSON line."""
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            return line
        return record.get("message", "") if record.get("worker") is None and record.get("service") == "microkit" else ""
    return line


def belongs(line: str, service: str | None) -> bool:
    """Whether a log line (text or JSON) comes from SERVICE (any of its workers); every line when None."""
    if service is None:
        return True
    if line.startswith("{"):
        try:
            return json.loads(line).get("service") == service
        except ValueError:
            return False
    source = line[9:].split(" |", 1)[0].strip() if line[:2].isdigit() and " |" in line else ""
    return source.split(".", 1)[0] == service


@cli.command()
@config_option
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds to wait for it to stop.")
def stop(config_file: str | None, timeout: float) -> None:
    """Stop this project's running `microkit up` gracefully (SIGTERM), and wait until it has exited."""
    import signal
    project = load_project(config_file)
    state = control.read_state(project.root)
    if state is None or not control.pid_alive(state["pid"]):
        raise NotRunningError(f"no `microkit up` is running for {project.root}")
    pid = state["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while control.pid_alive(pid):
        if time.monotonic() > deadline:
            raise SupervisorError(f"`microkit up` (pid {pid}) is still stopping after {timeout:g}s")
        time.sleep(0.05)
    click.echo(f"stopped `microkit up` (pid {pid})")


def running_project(config_file: str | None) -> config.Config:
    """The project's config, with the registry URL that this host's running `up` uses (it records it in
    `.microkit/`), unless MICROKIT_REGISTRY_URL says otherwise."""
    import dataclasses
    project = load_project(config_file)
    if os.environ.get(config.ENV_REGISTRY_URL):
        return project
    state = control.read_state(project.root)
    if state is None or "registry" not in state or state["registry"] == project.registry.url:
        return project
    registry = dataclasses.replace(project.registry, url=state["registry"])
    return dataclasses.replace(project, registry=registry)


def local_supervisor(project: config.Config) -> dict | None:
    try:
        local = control.request(project.root, {"command": "status"})
    except NotRunningError:
        return None
    local.pop("ok", None)
    return local


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@config_option
def status(as_json: bool, config_file: str | None) -> None:
    """Every service's instances from the registry (host, port, pid, health, age), and the local `up`.

    Exit 1 when the registry cannot be read (this host's workers are still listed).
    """
    from . import overview
    project = running_project(config_file)
    local = local_supervisor(project)
    try:
        live, registry_error = overview.instances(project), None
    except overview.RegistryError as exc:
        live, registry_error = None, str(exc)
    monolith = bool(local and local.get("monolith"))
    if as_json:
        click.echo(json.dumps({"registry": project.registry.url or "embedded", "registry_error": registry_error,
                               "services": live, "supervisor": local}, indent=2))
        if registry_error:
            raise SupervisorError(registry_error)
        return
    where = project.registry.url or "embedded (" + str(project.root / ".microkit") + ")"
    click.echo(f"registry: {where}" + (f": UNREACHABLE ({registry_error})" if registry_error else ""))
    rows = [("SERVICE", "HOST", "PORT", "PID", "HEALTH", "AGE")]
    gateway = next((g for g in (local or {}).get("services", []) if g["name"] == "gateway"), None)
    for name, service in project.services.items():
        if not (service.app or service.command):
            continue  # consumers only: nothing registers; they are listed under `microkit up` below
        found = (live or {}).get(name, [])
        if monolith and service.app and gateway is not None:
            for worker in gateway["instances"]:
                rows.append((name, *gateway["urls"][0].split("//", 1)[1].rsplit(":", 1), worker["pid"],
                             "served by the monolith", duration(worker["uptime"])))
            continue
        if not found:
            rows.append((name, "-", "-", "-", "registry unreachable" if registry_error else "no instance", "-"))
        for i in found:
            rows.append((name, i["host"], i["port"], i["pid"], i["health"], duration(i["age"])))
    click.echo(overview.table(rows))
    if local is None:
        click.echo("no `microkit up` running for this project on this host")
    else:
        click.echo(f"\nmicrokit up: pid {local['pid']}, up {duration(local['uptime'])}"
                   + (" (monolith)" if monolith else ""))
        rows = [("GROUP", "WORKER", "PID", "PORT", "STATE", "RESTARTS", "UPTIME")]
        for group in local["services"]:
            rows.append((group["name"], f"{group['kind']}, {group['workers']} wanted", "", "",
                         group["state"], group["restarts"], ""))
            if group["state"] == "FATAL" and group.get("error"):
                rows.append(("", f"error: {last_line(group['error'])}", "", "", "", "", ""))
            for worker in group["instances"]:
                rows.append(("", worker["name"], worker["pid"], worker["port"] or "-", worker["state"],
                             worker["restarts"], duration(worker["uptime"])))
        click.echo(overview.table(rows))
    if registry_error:
        raise SupervisorError(registry_error)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@config_option
def routes(as_json: bool, config_file: str | None) -> None:
    """The gateway's routing table: prefix, service, timeout, balancing, live instances.

    Exit 1 when the registry cannot be read.
    """
    from . import overview
    project = running_project(config_file)
    local = local_supervisor(project)
    try:
        live, registry_error = overview.instances(project), None
    except overview.RegistryError as exc:
        live, registry_error = None, str(exc)
    rows = overview.routes(project, live)
    gateway = next((g for g in (local or {}).get("services", []) if g["name"] == "gateway"), None)
    if local and local.get("monolith") and gateway is not None:
        for row in rows:
            if project.services[row["service"]].app:
                row["instances"] = len(gateway["instances"])
                row["served_by"] = "monolith"
    split = project.gateway.legacy is not None
    if split:
        store = migration_store(project)
        try:
            overrides = store.splits()
        except MicrokitError:
            overrides = {}  # the store is the registry's: INSTANCES "unknown" already says it cannot be read
        finally:
            store.close()
        for row in rows:
            if row["service"] in overrides:
                row["split"], row["split_live"] = overrides[row["service"]]["split"], True
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(overview.table([("PREFIX", "SERVICE", "TIMEOUT", "BALANCE", "INSTANCES") + (("SPLIT",) if split else ())] + [
            (r["prefix"], r["service"], f"{r['timeout']:g}s", r["balance"],
             "unknown" if r["instances"] is None else
             f"{r['instances']} (monolith)" if r.get("served_by") else r["instances"])
            + ((("-" if r["split"] is None else f"{r['split']:g}%") + (" (live)" if r.get("split_live") else "")
                 + (" +shadow" if r["shadow"] else ""),) if split else ())
            for r in rows]))
        legacy = project.gateway.legacy
        click.echo(f"anything else: {'legacy ' + legacy if legacy else '404'} (gateway {project.gateway.listen})")
    if registry_error:
        raise SupervisorError(registry_error)


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


wait_options = [
    click.option("--no-wait", is_flag=True, help="Return at once instead of waiting for the outcome."),
    click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True,
                 help="Seconds to wait for the outcome."),
]


def with_wait_options(command):
    for option in reversed(wait_options):
        command = option(command)
    return command


@cli.command()
@click.argument("services", nargs=-1)
@config_option
@with_wait_options
def reload(services: tuple[str, ...], config_file: str | None, no_wait: bool, timeout: float) -> None:
    """Rolling restart of the running services (or the SERVICES named): new code, no refused request.

    Waits for the outcome and prints it (`reloaded users: 2 workers, pids ...`); exit 1 when the new
    workers do not boot (the old ones keep serving).
    """
    try:
        root = load_project(config_file).root
    except ConfigError as exc:  # the running `up` re-reads the file itself and says what is wrong with it
        root = config.find(config_file).resolve().parent
        if control.read_state(root) is None:
            raise exc from None
    reply = control.request(root, {"command": "reload", "services": list(services)})
    if no_wait:
        click.echo(f"reloading {', '.join(reply['services'])}")
        return
    wait_for_outcome(root, "reload", reply["services"], reply, timeout)


@cli.command()
@click.argument("counts", nargs=-1, required=True, metavar="SERVICE=N...")
@config_option
@with_wait_options
def scale(counts: tuple[str, ...], config_file: str | None, no_wait: bool, timeout: float) -> None:
    """Change how many workers the running services have, e.g. `microkit scale users=3 orders=1`
    (`gateway=N` for the gateway's workers).

    Waits until they run and prints them (`scaled users: 3 workers, pids ...`); exit 1 when new
    workers do not boot.
    """
    workers = {}
    for item in counts:
        name, _, number = item.partition("=")
        if not name or not number.isdigit() or int(number) < 1:
            raise UsageError(f"expected SERVICE=N with N >= 1 (e.g. users=3), got {item!r}")
        workers[name] = int(number)
    project = load_project(config_file)
    reply = control.request(project.root, {"command": "scale", "workers": workers})
    if no_wait:
        click.echo(", ".join(f"{name}={reply['workers'][name]}" for name in workers))
        return
    wait_for_outcome(project.root, "scale", list(workers), reply, timeout)


def wait_for_outcome(root: Path, what: str, names: list[str], reply: dict, timeout: float) -> None:
    """Poll `up` until every named group settled after a reload or scale: print each outcome, raise if one failed."""
    deadline = time.monotonic() + timeout
    pending = list(names)
    failed: list[str] = []
    while pending:
        groups = {g["name"]: g for g in control.request(root, {"command": "status"})["services"]}
        for name in list(pending):
            group = groups.get(name)
            outcome = settled(group, reply["generations"].get(name, 0), reply["failures"].get(name, 0))
            if outcome is None:
                continue
            pending.remove(name)
            ok, text = outcome
            if ok:
                click.echo(f"{'reloaded' if what == 'reload' else 'scaled'} {name}: {text}")
            else:
                failed.append(f"{what} of {name} failed: {text}")
        if pending:
            if time.monotonic() > deadline:
                raise SupervisorError(f"{what} of {', '.join(pending)} not finished after {timeout:g}s "
                                      f"(see `microkit status`)")
            time.sleep(0.1)
    if failed:
        raise SupervisorError("; ".join(failed))


def settled(group: dict | None, generation: int, failures: int) -> tuple[bool, str] | None:
    """(ok, what to print) once a group is done with a reload or scale, else None."""
    if group is None:
        return False, "it is no longer running"
    if group.get("failures", 0) > failures:
        failure = group["failure"]
        return False, f"{failure['outcome']}: {last_line(failure['error'])}"
    if group["state"] == "FATAL":
        return False, f"FATAL: {last_line(group.get('error') or 'its workers do not boot')}"
    instances = group["instances"]
    current = [i for i in instances if i["generation"] >= generation]
    if group["state"] != "running" or len(current) != len(instances) or len(current) != group["workers"]:
        return None
    if not all(i["state"] == "ready" for i in current):
        return None
    pids = ", ".join(str(i["pid"]) for i in current)
    return True, f"{len(current)} worker{'s' if len(current) != 1 else ''}, pid{'s' if len(current) != 1 else ''} {pids}"


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text


@cli.group(invoke_without_command=True)
@click.pass_context
def keys(ctx: click.Context) -> None:
    """API keys for routes with `auth = "apikey"`, `POST /auth/token` and the admin endpoints.

    Keys are stored hashed in the registry's store (Redis, or the embedded SQLite file); a revoked key
    stops working within gateway.auth.apikeys.cache_ttl seconds (default 1).
    """
    help_without_command(ctx)


def keystore(config_file: str | None):
    from .gateway.security import connect_keystore
    project = running_project(config_file)
    return connect_keystore(project.registry.url, project_root=project.root, namespace=project.project.name)


@keys.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, metavar="SCOPE",
              help="A scope the key holds (repeat for several), e.g. --scope orders:write.")
@config_option
def keys_create(name: str, scopes: tuple[str, ...], config_file: str | None) -> None:
    """Make a key called NAME and print it once: only its hash is stored."""
    store = keystore(config_file)
    try:
        key_id, plaintext = store.create(name, scopes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    finally:
        store.close()
    click.echo(plaintext)
    click.echo(f"created key {key_id} ({name}); store it now, it cannot be shown again", err=True)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@config_option
def keys_list(as_json: bool, config_file: str | None) -> None:
    """Every key: id, name, scopes, creation time, revoked or not (never the key itself)."""
    from . import overview
    store = keystore(config_file)
    try:
        records = store.list()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([{"id": r.key_id, "name": r.name, "scopes": sorted(r.scopes),
                                "created_at": r.created_at, "revoked": r.revoked} for r in records], indent=2))
        return
    rows = [("ID", "NAME", "SCOPES", "CREATED", "STATE")]
    rows += [(r.key_id, r.name, " ".join(sorted(r.scopes)) or "-",
              time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at)), "revoked" if r.revoked else "active")
             for r in records]
    click.echo(overview.table(rows) if records else "no API keys (create one: microkit keys create NAME)")


@keys.command("revoke")
@click.argument("key_id", metavar="KEY")
@config_option
def keys_revoke(key_id: str, config_file: str | None) -> None:
    """Revoke KEY: its id (as `keys list` shows it) or the whole key; gateways refuse it within
    apikeys.cache_ttl."""
    from .gateway.security.apikeys import PREFIX, key_id_of, well_formed
    if key_id.startswith(PREFIX):
        if not well_formed(key_id):
            raise UsageError(f"{key_id[:len(PREFIX) + 4]}...: not a whole microkit key (give the key or its id)")
        key_id = key_id_of(key_id)
    store = keystore(config_file)
    try:
        before = {r.key_id: r for r in store.list()}.get(key_id)
        if before is not None and before.revoked:
            click.echo(f"key {key_id} ({before.name}) was already revoked")
            return
        record = store.revoke(key_id)
    finally:
        store.close()
    click.echo(f"revoked key {record.key_id} ({record.name})")


@cli.command("export")
@click.argument("target", type=click.Choice(["systemd", "compose", "kubernetes"]))
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help="Folder to write into.  [default: deploy/TARGET beside microkit.toml]")
@click.option("--check", is_flag=True,
              help="Write nothing; exit 1 naming the files that differ from what would be written.")
@config_option
def export_(target: str, output: str | None, check: bool, config_file: str | None) -> None:
    """Deployment files from microkit.toml: systemd units, a compose file, or Kubernetes manifests."""
    from . import export
    project = config.discover(config_file)
    files = export.render(target, project)
    folder = Path(output) if output else project.path.parent / "deploy" / target
    shown = config.display_path(folder)
    if check:
        differ = export.differences(files, folder, target)
        if differ:
            raise export.ExportError(f"{shown}: {len(differ)} file(s) differ from {project.path.name}: "
                                     f"{', '.join(differ)}; run `microkit export {target}` to update them")
        click.echo(f"{shown}: {len(files)} files match {project.path.name}")
        return
    written, removed = export.write(files, folder, target)
    click.echo(f"{shown}: {len(written)} written, {len(files) - len(written)} unchanged"
               + (f", {len(removed)} removed ({', '.join(removed)})" if removed else ""))


from .events.commands import events_group  # noqa: E402  (the `microkit events` commands)

cli.add_command(events_group)


def migration_store(project: config.Config):
    from .gateway.migration_store import connect_migration_store
    return connect_migration_store(project.registry.url, project_root=project.root, namespace=project.project.name)


def routed_service(project: config.Config, name: str) -> config.ServiceConfig:
    """The service a route is named by: its service's name, or its prefix ("/users")."""
    by_prefix = {s.route: s for s in project.services.values() if s.route is not None}
    service = by_prefix.get(name) if name.startswith("/") else project.services.get(name)
    if service is None or service.route is None:
        routed = [s.name for s in project.services.values() if s.route is not None]
        raise UsageError(f"{name!r} is not a routed service in {config.display_path(project.path)} "
                         f"(routed: {', '.join(routed) or 'none'})")
    return service


@cli.command("route")
@click.argument("name")
@click.option("--split", type=click.FloatRange(0, 100), default=None, metavar="PERCENT",
              help="Percent of the route's requests the service gets (the rest go to gateway.legacy), live.")
@click.option("--reset", is_flag=True, help="Drop the live split: back to microkit.toml's.")
@config_option
def route_command(name: str, split: float | None, reset: bool, config_file: str | None) -> None:
    """Show or change the split of service NAME's route (NAME or its prefix) on every gateway sharing the registry."""
    project = running_project(config_file)
    service = routed_service(project, name)
    name = service.name
    if (split is not None or reset) and project.gateway.legacy is None:
        raise UsageError("a split needs gateway.legacy in microkit.toml (where the rest of the traffic goes)")
    if split is not None and reset:
        raise UsageError("--split and --reset exclude each other")
    store = migration_store(project)
    try:
        before = store.splits().get(name)
        if split is not None or reset:
            store.set_split(name, None if reset else split)
    finally:
        store.close()
    configured = "none" if service.split is None else f"{service.split:g}%"
    was = (f"{before['split']:g}% (live, set {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(before['changed_at']))})"
           if before else f"{configured} (microkit.toml)")
    if split is not None:
        click.echo(f"{name}: split {split:g}% to {name}, {100 - split:g}% to legacy on every gateway (was {was})")
    elif reset:
        click.echo(f"{name}: split back to microkit.toml's {configured} (was {was})")
    else:
        click.echo(f"{name}: route {service.route}, split {was}" + ("" if project.gateway.legacy else ", no legacy"))


@cli.command("diff")
@click.argument("route", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--last", type=click.IntRange(min=0), default=5, show_default=True, help="Mismatches shown per route.")
@click.option("--clear", is_flag=True, help="Forget the counters, mismatches and learned noise shown.")
@config_option
def diff_command(route: str | None, as_json: bool, last: int, clear: bool, config_file: str | None) -> None:
    """Shadow comparisons: per route (a service name or a prefix) compared, mismatched, dropped and failed copies,
    the fields learned as noise, and the last mismatches with both answers."""
    project = running_project(config_file)
    names = [routed_service(project, route).name] if route else [
        s.name for s in project.services.values() if s.shadow is not None]
    store = migration_store(project)
    try:
        reports = {name: store.report(name) for name in names}
        if clear:
            for name in names:
                store.clear(name)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(reports, indent=2))
        return
    if not names:
        click.echo("no route has a shadow (set services.NAME.shadow in microkit.toml)")
    for name, report in reports.items():
        c = report["counts"]
        click.echo(f"{name}: {c['compared']} compared, {c['mismatched']} mismatched, {c['dropped']} dropped, "
                   f"{c['failed']} failed" + (f"; noise: {', '.join(report['noise'])}" if report["noise"] else ""))
        for record in report["mismatches"][:last]:
            when = time.strftime("%H:%M:%S", time.localtime(record["at"]))
            click.echo(f"  {when} {record['method']} {record['target']} id={record['request_id']}")
            for field, left, right in record["differences"]:
                click.echo(f"    {field}: {record['primary']['side']}={json.dumps(left)} "
                           f"{record['shadow']['side']}={json.dumps(right)}")
    if clear:
        click.echo("cleared")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: run the CLI and turn every error into one line and an exit code."""
    try:
        result = cli.main(args=hoist_debug(sys.argv[1:] if argv is None else argv), prog_name="microkit",
                          standalone_mode=False)
    except click.exceptions.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "microkit"
        fail(f"{exc.format_message()} (see `{command} --help`)", 2)
    except click.exceptions.Abort:
        fail("aborted", 1)
    except click.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except MicrokitError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as exc:
        fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", 1)
    sys.exit(result if isinstance(result, int) else 0)


def hoist_debug(args: list[str]) -> list[str]:
    """`--debug` anywhere before `--` (after the subcommand too) is the group's option."""
    end = args.index("--") if "--" in args else len(args)
    if "--debug" not in args[:end]:
        return args
    return ["--debug"] + [a for a in args[:end] if a != "--debug"] + args[end:]


def fail(message: str, code: int) -> None:
    if debug_enabled() and sys.exc_info()[0] is not None:
        traceback.print_exc()
    click.echo(f"microkit: error: {message}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
