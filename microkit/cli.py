"""The `microkit` command. Errors become one line on stderr and an exit code:
0 success, 1 runtime failure, 2 bad usage or bad config. `--debug` (or MICROKIT_DEBUG=1) shows tracebacks.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import click

from . import __version__, config
from .errors import MicrokitError, NotRunningError, SupervisorError, UsageError
from .supervisor import control

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def debug_enabled() -> bool:
    return os.environ.get("MICROKIT_DEBUG", "") not in ("", "0", "false", "no")


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="microkit", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors (also MICROKIT_DEBUG=1).")
def cli(debug: bool) -> None:
    """microkit: from one Python web process to many services."""
    if debug:
        os.environ["MICROKIT_DEBUG"] = "1"


config_option = click.option(
    "-c", "--config", "config_file", type=click.Path(dir_okay=False), default=None,
    help="microkit.toml to use (default: $MICROKIT_CONFIG, else the nearest in this folder or a parent).")


@cli.group()
def new() -> None:
    """Scaffold a project or a service from templates."""


@new.command("project")
@click.argument("name")
def new_project(name: str) -> None:
    """Create the project folder NAME with microkit.toml, services/, README.md and .gitignore."""
    from . import scaffold
    scaffold.apply(scaffold.plan_project(name), Path.cwd())
    click.echo(f"created {name}/")
    click.echo(f"next: cd {name} && microkit new service users")


@new.command("service")
@click.argument("name")
@click.option("--template", "-t", default="rest", show_default=True,
              help="A built-in template name, or the path of your own template folder.")
@click.option("--route", default=None, help='Path prefix at the gateway.  [default: "/NAME"]')
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes for the service.")
@config_option
def new_service(name: str, template: str, route: str | None, workers: int, config_file: str | None) -> None:
    """Add services/NAME and its [services.NAME] table in microkit.toml."""
    from . import scaffold
    project = config.discover(config_file)
    plan = scaffold.plan_service(project, name, template=template, route=route, workers=workers)
    scaffold.apply(plan, project.root)
    folder = config.display_path(project.root / "services" / name)
    click.echo(f"created {folder}/ and [services.{name}] in {config.display_path(project.path)}")
    click.echo(f"next: pytest {folder}")


@cli.command()
@click.argument("services", nargs=-1)
@config_option
@click.option("--reload", "reload_", is_flag=True,
              help="Development: reload a service's workers when its Python files change.")
@click.option("--no-access-log", is_flag=True, help="No log line per request (overrides access_log).")
@click.option("--no-gateway", is_flag=True, help="Run the services only, without the gateway.")
@click.option("--monolith", is_flag=True,
              help="Every service's app mounted in one process at the gateway's address (same URLs).")
def up(services: tuple[str, ...], config_file: str | None, reload_: bool, no_access_log: bool,
       no_gateway: bool, monolith: bool) -> None:
    """Run the project's services (or the SERVICES named) and the gateway, in the foreground.

    Each service runs as `workers` gevent worker processes sharing one socket (or as its command),
    registered in the registry once healthy. Prints `ready: gateway http://HOST:PORT` once every
    service is healthy and routed. SIGINT/SIGTERM stop gracefully, SIGHUP reloads with no downtime,
    SIGTTIN/SIGTTOU add or remove a worker of every service.
    """
    if monolith and no_gateway:
        raise UsageError("--monolith serves at the gateway's address; it cannot be combined with --no-gateway")
    project = config.discover(config_file)
    if monolith:
        from .monolith import check
        check(project)
    supervise(project, services, reload=reload_,
              access_log=False if no_access_log else None, gateway=not no_gateway, monolith=monolith)


@cli.command()
@click.argument("service")
@config_option
@click.option("--reload", "reload_", is_flag=True, help="Reload the workers when Python files change.")
@click.option("--no-access-log", is_flag=True, help="No log line per request (overrides access_log).")
def run(service: str, config_file: str | None, reload_: bool, no_access_log: bool) -> None:
    """Run one SERVICE alone (no gateway), registering into the configured registry: for other hosts."""
    supervise(config.discover(config_file), (service,), reload=reload_,
              access_log=False if no_access_log else None, gateway=False, control_name=f"run-{service}-{os.getpid()}")


@cli.command()
@config_option
@click.option("--no-access-log", is_flag=True, help="No log line per request (overrides gateway.access_log).")
def gateway(config_file: str | None, no_access_log: bool) -> None:
    """Run the gateway alone: it routes to the instances the registry lists, wherever they run."""
    supervise(config.discover(config_file), (), access_log=False if no_access_log else None, run_services=False,
              control_name="gateway")


def supervise(project: config.Config, services: tuple[str, ...], **options) -> None:
    from .supervisor.arbiter import Arbiter
    if Arbiter(project, services, **options).run():
        raise SupervisorError("every service failed to start (see the errors above)")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@config_option
def status(as_json: bool, config_file: str | None) -> None:
    """Every service's instances from the registry (host, port, pid, health, age), and the local `up`."""
    from . import overview
    project = config.discover(config_file)
    live = overview.instances(project)
    try:
        local = control.request(project.root, {"command": "status"})
        local.pop("ok", None)
    except NotRunningError:
        local = None
    if as_json:
        click.echo(json.dumps({"registry": project.registry.url or "embedded", "services": live,
                               "supervisor": local}, indent=2))
        return
    click.echo(f"registry: {project.registry.url or 'embedded (' + str(project.root / '.microkit') + ')'}")
    rows = [("SERVICE", "HOST", "PORT", "PID", "HEALTH", "AGE")]
    for service in project.services:
        found = live.get(service, [])
        if not found:
            rows.append((service, "-", "-", "-", "no instance", "-"))
        for i in found:
            rows.append((service, i["host"], i["port"], i["pid"], i["health"], duration(i["age"])))
    click.echo(overview.table(rows))
    if local is None:
        click.echo("no `microkit up` running for this project on this host")
        return
    click.echo(f"\nmicrokit up: pid {local['pid']}, up {duration(local['uptime'])}")
    rows = [("GROUP", "WORKER", "PID", "PORT", "STATE", "RESTARTS", "UPTIME")]
    for group in local["services"]:
        rows.append((group["name"], f"{group['kind']}, {group['workers']} wanted", "", "",
                     group["state"], group["restarts"], ""))
        for worker in group["instances"]:
            rows.append(("", worker["name"], worker["pid"], worker["port"], worker["state"],
                         worker["restarts"], duration(worker["uptime"])))
    click.echo(overview.table(rows))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@config_option
def routes(as_json: bool, config_file: str | None) -> None:
    """The gateway's routing table: prefix, service, timeout, balancing, live instances."""
    from . import overview
    project = config.discover(config_file)
    try:
        live = overview.instances(project)
    except overview.RegistryError:
        live = None
    rows = overview.routes(project, live)
    split = project.gateway.legacy is not None
    if split:
        store = migration_store(project)
        try:
            overrides = store.splits()
        except MicrokitError:
            overrides = {}  # the store is the registry's: INSTANCES "?" already says it cannot be read
        finally:
            store.close()
        for row in rows:
            if row["service"] in overrides:
                row["split"], row["split_live"] = overrides[row["service"]]["split"], True
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(overview.table([("PREFIX", "SERVICE", "TIMEOUT", "BALANCE", "INSTANCES") + (("SPLIT",) if split else ())] + [
        (r["prefix"], r["service"], f"{r['timeout']:g}s", r["balance"],
         "?" if r["instances"] is None else r["instances"])
        + ((("-" if r["split"] is None else f"{r['split']:g}%") + (" (live)" if r.get("split_live") else "")
             + (" +shadow" if r["shadow"] else ""),) if split else ())
        for r in rows]))
    legacy = project.gateway.legacy
    click.echo(f"anything else: {'legacy ' + legacy if legacy else '404'} (gateway {project.gateway.listen})")


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


@cli.command()
@click.argument("services", nargs=-1)
@config_option
def reload(services: tuple[str, ...], config_file: str | None) -> None:
    """Rolling restart of the running services (or the SERVICES named): new code, no refused request."""
    project = config.discover(config_file)
    reply = control.request(project.root, {"command": "reload", "services": list(services)})
    click.echo(f"reloading {', '.join(reply['services'])}")


@cli.command()
@click.argument("counts", nargs=-1, required=True, metavar="SERVICE=N...")
@config_option
def scale(counts: tuple[str, ...], config_file: str | None) -> None:
    """Change how many workers the running services have, e.g. `microkit scale users=3 orders=1`."""
    workers = {}
    for item in counts:
        name, _, number = item.partition("=")
        if not name or not number.isdigit() or int(number) < 1:
            raise UsageError(f"expected SERVICE=N with N >= 1 (e.g. users=3), got {item!r}")
        workers[name] = int(number)
    project = config.discover(config_file)
    reply = control.request(project.root, {"command": "scale", "workers": workers})
    click.echo(", ".join(f"{name}={reply['workers'][name]}" for name in workers))


@cli.group()
def keys() -> None:
    """API keys for routes with `auth = "apikey"`, `POST /auth/token` and the admin endpoints.

    Keys are stored hashed in the registry's store (Redis, or the embedded SQLite file); a revoked key
    stops working within gateway.auth.apikeys.cache_ttl seconds (default 1).
    """


def keystore(config_file: str | None):
    from .gateway.security import connect_keystore
    project = config.discover(config_file)
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
@click.argument("key_id")
@config_option
def keys_revoke(key_id: str, config_file: str | None) -> None:
    """Revoke the key KEY_ID (as `keys list` shows it); gateways refuse it within apikeys.cache_ttl."""
    store = keystore(config_file)
    try:
        record = store.revoke(key_id)
    finally:
        store.close()
    click.echo(f"revoked key {record.key_id} ({record.name})")


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
    project = config.discover(config_file)
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
    project = config.discover(config_file)
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
        result = cli.main(args=argv, prog_name="microkit", standalone_mode=False)
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


def fail(message: str, code: int) -> None:
    if debug_enabled() and sys.exc_info()[0] is not None:
        traceback.print_exc()
    click.echo(f"microkit: error: {message}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
