"""`microkit export systemd`: one unit per service and one for the gateway, and a target for all of them.

The project is expected at /srv/PROJECT (the folder of microkit.toml, with its virtualenv in .venv),
run as the system user PROJECT; secrets come from /etc/microkit/PROJECT/NAME.env, never from a unit.
A Redis registry on this host (a loopback URL) is a hard dependency (Debian's redis-server.service);
one on another host is reached once the network is online.
"""

from __future__ import annotations

from .files import File, marker
from .plan import Plan, Process

TARGET = "systemd"
LOCAL_REDIS_UNIT = "redis-server.service"


def unit_name(plan: Plan, process: Process) -> str:
    return f"{plan.project}-{process.name}.service"


def render(plan: Plan) -> list[File]:
    root = f"/srv/{plan.project}"
    files = [File(unit_name(plan, p), _unit(plan, p, root)) for p in plan.processes]
    files.append(File(f"{plan.project}.target", _target(plan)))
    return sorted(files, key=lambda f: f.path)


def _unit(plan: Plan, process: Process, root: str) -> str:
    after = ["network-online.target"]
    requires = []
    if plan.registry.kind == "local":
        after.append(LOCAL_REDIS_UNIT)
        requires.append(LOCAL_REDIS_UNIT)
    if process.is_gateway:
        after += [unit_name(plan, p) for p in plan.services]
        what = f"{plan.project} gateway (microkit, {process.workers} worker{'s' * (process.workers > 1)})"
    else:
        what = f"{plan.project} service {process.name} (microkit, {process.workers} worker{'s' * (process.workers > 1)})"
    lines = [
        marker(TARGET, plan.config_name),
        "[Unit]",
        f"Description={what}",
        f"After={' '.join(after)}",
        "Wants=network-online.target",
    ]
    lines += [f"Requires={unit}" for unit in requires]
    lines += [
        f"PartOf={plan.project}.target",
        "",
        "[Service]",
        "Type=exec",
        f"User={plan.project}",
        f"Group={plan.project}",
        f"WorkingDirectory={root}",
        f"EnvironmentFile=-/etc/microkit/{plan.project}/{process.name}.env",
        f"ExecStart={root}/.venv/bin/microkit {' '.join(process.args)} -c {root}/{plan.config_name}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillMode=mixed",
        f"TimeoutStopSec={process.stop_timeout}",
        "Restart=on-failure",
        "RestartSec=1",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _target(plan: Plan) -> str:
    units = " ".join(unit_name(plan, p) for p in plan.processes)
    return "\n".join([
        marker(TARGET, plan.config_name),
        "[Unit]",
        f"Description={plan.project} (microkit): every service and the gateway on one host",
        f"Wants={units}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])
