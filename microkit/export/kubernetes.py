"""`microkit export kubernetes`: a Deployment per service, the gateway's Deployment and Service, and the
registry's Redis (Deployment, Service, PersistentVolumeClaim), one file per process.

Discovery stays with the registry, not Kubernetes Service DNS: each pod registers its pod IP (through
the downward API) so the gateway balances, retries and ejects per instance; a Service's one virtual IP
would hide the instances behind it. Only the registry and the gateway are reached by Service DNS.
An init container carries the dependency on the registry (compose's depends_on): it waits until the
registry's Redis answers PING. Secrets come from Secrets (PROJECT-NAME, optional), never from a manifest.
"""

from __future__ import annotations

from . import yaml
from .compose import REDIS_IMAGE
from .files import File, marker
from .plan import Plan, Process, dns_names

TARGET = "kubernetes"
REDIS = "registry-redis"


def labels(plan: Plan, name: str, component: str) -> dict:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": plan.project.lower(),
            "app.kubernetes.io/component": component, "app.kubernetes.io/managed-by": "microkit"}


def render(plan: Plan) -> list[File]:
    names = dns_names(plan, (REDIS,))
    bundled = plan.registry.kind != "external"
    files = []
    for process in plan.processes:
        documents = [_deployment(plan, process, names, bundled)]
        if process.is_gateway:
            documents.append(_service(plan, names["gateway"], "gateway", process.port, plan.gateway_port))
        what = ("the gateway" if process.is_gateway else f"service {process.name}")
        header = (f"# {what}: one pod running `{' '.join(process.container_args())}` "
                  f"with {process.workers} worker process{'es' * (process.workers > 1)} (from {plan.config_name})")
        files.append(File(f"{process.name}.yaml", _text(plan, header, documents)))
    if bundled:
        files.append(File(f"{REDIS}.yaml", _text(plan, "# the registry: one Redis, its data on a volume",
                                                 _redis(plan, names[REDIS]))))
    return sorted(files, key=lambda f: f.path)


def _text(plan: Plan, header: str, documents: list[dict]) -> str:
    return marker(TARGET, plan.config_name) + "\n" + header + "\n" + yaml.dump_all(documents)


def _env(plan: Plan, names: dict, bundled: bool) -> list[dict]:
    if bundled:
        registry = {"name": "MICROKIT_REGISTRY_URL",
                    "value": f"redis://{names[REDIS]}:6379/{plan.registry.database}"}
    else:
        registry = {"name": "MICROKIT_REGISTRY_URL", "valueFrom": {"secretKeyRef": {
            "name": f"{plan.project.lower()}-registry", "key": "MICROKIT_REGISTRY_URL"}}}
    return [
        registry,
        {"name": "MICROKIT_ADVERTISE_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MICROKIT_GATEWAY_URL", "value": f"http://{names['gateway']}:{plan.gateway_port}"},
    ]


def _deployment(plan: Plan, process: Process, names: dict, bundled: bool) -> dict:
    name = names[process.name]
    component = "gateway" if process.is_gateway else "service"
    probe = {"httpGet": {"path": process.health, "port": "http"}}
    container = {
        "name": process.name.lower().replace("_", "-"),
        "image": f"{plan.project.lower()}:latest",
        "imagePullPolicy": "IfNotPresent",
        "workingDir": "/app",
        "command": list(process.container_args()),
        "ports": [{"name": "http", "containerPort": process.port}],
        "env": _env(plan, names, bundled),
        "envFrom": [{"secretRef": {"name": name, "optional": True}}],
        "startupProbe": {**probe, "periodSeconds": 1, "failureThreshold": 60},
        "readinessProbe": {**probe, "periodSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
    }
    pod: dict = {"terminationGracePeriodSeconds": process.stop_timeout}
    if bundled:
        pod["initContainers"] = [{
            "name": "wait-for-registry",
            "image": REDIS_IMAGE,
            "command": ["sh", "-c", f"until redis-cli -h {names[REDIS]} ping | grep -q PONG; do sleep 1; done"],
        }]
    pod["containers"] = [container]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels(plan, name, component)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {"metadata": {"labels": labels(plan, name, component)}, "spec": pod},
        },
    }


def _service(plan: Plan, name: str, component: str, target_port: int, port: int) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels(plan, name, component)},
        "spec": {"selector": {"app.kubernetes.io/name": name},
                 "ports": [{"name": "http" if component == "gateway" else "redis", "port": port,
                            "targetPort": target_port}]},
    }


def _redis(plan: Plan, name: str) -> list[dict]:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "labels": labels(plan, name, "registry")},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    ping = {"exec": {"command": ["redis-cli", "ping"]}}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels(plan, name, "registry")},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": labels(plan, name, "registry")},
                "spec": {
                    "containers": [{
                        "name": "redis",
                        "image": REDIS_IMAGE,
                        "command": ["redis-server", "--appendonly", "yes"],
                        "ports": [{"name": "redis", "containerPort": 6379}],
                        "readinessProbe": {**ping, "periodSeconds": 2},
                        "livenessProbe": {**ping, "periodSeconds": 10},
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    }],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": name}}],
                },
            },
        },
    }
    service = _service(plan, name, "registry", 6379, 6379)
    return [claim, deployment, service]
