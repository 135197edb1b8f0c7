"""`microkit export compose`: compose.yaml with a service per microkit service, the gateway, and the
registry's Redis, which every other service waits for (`depends_on` with `condition: service_healthy`).

Each container runs the project's image (PROJECT:latest, the project at /app with microkit installed),
listens on 0.0.0.0 and registers under its own address, so the gateway balances over every worker.
Secrets come from env files (`env/NAME.env`, optional) beside compose.yaml, never from the file itself.
"""

from __future__ import annotations

from . import yaml
from .files import File, marker
from .plan import Plan, Process

TARGET = "compose"
REDIS = "registry-redis"
REDIS_IMAGE = "redis:7-alpine"


def probe(process: Process) -> list[str]:
    """A health check that needs nothing but the image's Python."""
    url = f"http://127.0.0.1:{process.port}{process.health}"
    return ["CMD", "python", "-c", f"import urllib.request; urllib.request.urlopen({url!r}, timeout=2)"]


def render(plan: Plan) -> list[File]:
    services: dict = {}
    bundled = plan.registry.kind != "external"
    for process in plan.processes:
        services[process.name] = _service(plan, process, bundled)
    document: dict = {"name": plan.project.lower(), "services": services}
    if bundled:
        services[REDIS] = {
            "image": REDIS_IMAGE,
            "command": ["redis-server", "--appendonly", "yes"],
            "volumes": ["registry-data:/data"],
            "healthcheck": {"test": ["CMD", "redis-cli", "ping"], "interval": "2s", "timeout": "2s",
                            "retries": 15},
            "restart": "unless-stopped",
        }
        document["volumes"] = {"registry-data": {}}
    text = marker(TARGET, plan.config_name) + "\n" + yaml.dump(document)
    return [File("compose.yaml", text)]


def _service(plan: Plan, process: Process, bundled: bool) -> dict:
    environment = {"MICROKIT_GATEWAY_URL": f"http://gateway:{plan.gateway_port}"}
    env_files = [{"path": f"env/{process.name}.env", "required": False}]
    if bundled:
        environment["MICROKIT_REGISTRY_URL"] = f"redis://{REDIS}:6379/{plan.registry.database}"
    else:
        env_files.insert(0, {"path": "env/registry.env", "required": True})
    service: dict = {
        "image": f"{plan.project.lower()}:latest",
        "working_dir": "/app",
        "command": list(process.container_args()),
        "environment": environment,
        "env_file": env_files,
    }
    if process.is_gateway:
        published = f"{plan.gateway_port}:{process.port}"
        if plan.gateway_host not in ("0.0.0.0", "::", ""):
            published = f"{plan.gateway_host}:{published}"
        service["ports"] = [published]
    if bundled:
        service["depends_on"] = {REDIS: {"condition": "service_healthy"}}
    service["healthcheck"] = {"test": probe(process), "interval": "5s", "timeout": "3s", "retries": 3,
                              "start_period": "30s"}
    service["restart"] = "unless-stopped"
    service["stop_grace_period"] = f"{process.stop_timeout}s"
    service["labels"] = {"microkit.workers": str(process.workers)}
    return service
