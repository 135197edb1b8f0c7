"""A project's copy for one test: its own folder, registry namespace and microkit.toml.

The copy's folder links every entry of the real project root (so `services.users.app:app` imports the
real code) but has its own `.microkit/` (embedded registry, API keys, control sockets), `data/`, and
`.microkit-testing/` (logs, test keys): nothing a test writes lands in the real project.
Its microkit.toml is the project's, with a unique `project.name` (the registry namespace, which is also
the key prefix on Redis), the test's registry URL, and every listen address on port 0, so that tests
running at the same time (pytest-xdist) never share a port, a key or a file. The gateway's policies
(auth, scopes, rate limits, CORS) are kept as they are.
"""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path
from typing import Any, Mapping

import tomlkit

from microkit import config

OWN = ".microkit-testing"  # the plugin's own files in the copy: logs/, keys/, the config being written
SKIPPED = {".microkit", "data", OWN, config.CONFIG_NAME, "__pycache__", ".pytest_cache"}
KEY_FILES = ("public_key", "jwks_file")
TEST_KID = "microkit-testing"
NOT_INHERITED = ("MICROKIT_CONFIG", "MICROKIT_REGISTRY_URL", "MICROKIT_ADVERTISE_HOST", "MICROKIT_GATEWAY_URL",
                 "MICROKIT_EVENTS_URL", "MICROKIT_EVENTS_NAMESPACE", "MICROKIT_EVENTS_ONCE_URL", "MICROKIT_SERVICE")


class TestProject:
    """The per-test copy of one project. `write()` renders its microkit.toml; `close()` removes what it
    created outside its folder (Redis keys)."""

    __test__ = False  # not a test class, whatever pytest's collection thinks of the name

    def __init__(self, source: Path, folder: Path, registry_url: str | None) -> None:
        self.source_path = Path(source).resolve()
        self.source = config.load(self.source_path, environ={})
        self.registry_url = registry_url
        if registry_url is not None:
            try:
                config.registry_url(registry_url)
            except config.Invalid as exc:
                raise config.ConfigError(f"microkit test registry: {exc}") from None
        self.namespace = f"{self.source.project.name}_t{uuid.uuid4().hex[:10]}"
        self.root = Path(folder)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / config.CONFIG_NAME
        self.own = self.root / OWN
        self._link_sources()
        self.own.mkdir()
        self.document = self._document()
        self.jwt_secret: str | None = None
        self.jwt_private_keys: dict[str, Any] = {}
        self._prepare_jwt()
        self.conf = self.write()
        self._registry = None
        self._heartbeat = None

    # The folder and its microkit.toml.

    def _link_sources(self) -> None:
        for entry in sorted(self.source.root.iterdir()):
            if entry.name not in SKIPPED:
                (self.root / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())

    def _document(self) -> tomlkit.TOMLDocument:
        doc = tomlkit.parse(self.source_path.read_text(encoding="utf-8"))
        project = doc.setdefault("project", tomlkit.table())
        project["name"] = self.namespace
        project.pop("root", None)
        doc.pop("registry", None)
        if self.registry_url is not None:
            doc["registry"] = {"url": self.registry_url}
        doc.get("events", {}).pop("url", None)  # the test's bus decides (`set_events_url`)
        gateway = doc.setdefault("gateway", tomlkit.table())
        gateway["listen"] = "127.0.0.1:0"
        jwt = gateway.get("auth", {}).get("jwt", {})
        here = self.source_path.parent
        for key in KEY_FILES:
            if key in jwt:
                jwt[key] = str(here / jwt[key])
        if "public_keys" in jwt:
            jwt["public_keys"] = {kid: str(here / file) for kid, file in jwt["public_keys"].items()}
        token = gateway.get("auth", {}).get("token", {})
        if "signing_key" in token:
            token["signing_key"] = str(here / token["signing_key"])
        for table in doc.get("services", {}).values():
            table["listen"] = "127.0.0.1:0"
            table.pop("advertise", None)
        return doc

    def _prepare_jwt(self) -> None:
        """Keys that `jwt_token` signs with and the gateway accepts: the HS256 secret (from its environment
        variable when set, else a new one), and for RS256/ES256 a key pair made for this test, whose
        public half is added to `public_keys` under the kid "microkit-testing"."""
        jwt = self.source.gateway.auth.jwt
        if "HS256" in jwt.algorithms:
            self.jwt_secret = os.environ.get(jwt.secret_env) or secrets.token_urlsafe(48)
        asymmetric = [alg for alg in jwt.algorithms if alg != "HS256"]
        if not asymmetric:
            return
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        keys = self.own / "keys"
        keys.mkdir()
        table = self.document["gateway"]["auth"]["jwt"]
        public_keys = dict(table.get("public_keys", {}))
        for alg in asymmetric:
            private = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256"
                       else ec.generate_private_key(ec.SECP256R1()))
            kid = f"{TEST_KID}-{alg.lower()}"
            pem = keys / f"{kid}.pem"
            pem.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
            public_keys[kid] = str(pem)
            self.jwt_private_keys[alg] = (kid, private)
        table["public_keys"] = public_keys

    def write(self, services: Mapping[str, Mapping[str, Any]] | None = None) -> config.Config:
        """Render microkit.toml with per-service overrides (`{"users": {"workers": 2, "env": {...}}}`) and
        check it the way microkit will."""
        for name, values in (services or {}).items():
            table = self.document["services"][name]
            for key, value in values.items():
                if key == "env":
                    table["env"] = {**dict(table.get("env", {})), **value}
                else:
                    table[key] = value
        tmp = self.own / f"{config.CONFIG_NAME}.tmp"
        tmp.write_text(tomlkit.dumps(self.document), encoding="utf-8")
        tmp.replace(self.path)
        self.conf = config.load(self.path, environ={})
        return self.conf

    def set_events_url(self, url: str | None) -> None:
        """Where this test's events go (None: the registry's Redis, else the embedded store in the folder)."""
        if url is None:
            self.document.get("events", {}).pop("url", None)
        else:
            self.document.setdefault("events", tomlkit.table())["url"] = url
        self.write()

    def consumers_config(self, name: str, env: Mapping[str, str]) -> Path:
        """A copy of microkit.toml in which service `name` is its consumers alone (no app, command or route),
        with `env`: `microkit run NAME -c` on it runs the handlers of a service whose HTTP side the test
        serves in-process."""
        doc = tomlkit.parse(tomlkit.dumps(self.document))
        doc["project"]["root"] = str(self.root)  # the file is in .microkit-testing/: the project is its folder
        table = doc["services"][name]
        for key in ("app", "command", "route", "workers"):
            table.pop(key, None)
        table["env"] = {**dict(table.get("env", {})), **env}
        path = self.own / f"consumers-{name}.toml"
        path.write_text(tomlkit.dumps(doc), encoding="utf-8")
        config.load(path, environ={})
        return path

    def set_gateway_address(self, address: str) -> None:
        """Where the test's gateway listens, so that services started afterwards call it."""
        self.document["gateway"]["listen"] = address
        self.write()

    def environ(self) -> dict[str, str]:
        """The environment for microkit processes of this test: its config and registry, nothing inherited."""
        env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
        env.update({"MICROKIT_CONFIG": str(self.path), "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
        if self.registry_url is not None:
            env["MICROKIT_REGISTRY_URL"] = self.registry_url
        if self.jwt_secret is not None:
            env[self.conf.gateway.auth.jwt.secret_env] = self.jwt_secret
        return env

    # The registry and the key store of this test.

    @property
    def registry(self):
        """This test's registry (embedded in the folder, or the namespace on Redis)."""
        if self._registry is None:
            from microkit import registry

            self._registry = registry.connect(self.registry_url, project_root=self.root, namespace=self.namespace)
        return self._registry

    def register(self, instances: list) -> None:
        """Register instances served by this process (in-process services, fakes), kept alive by one
        heartbeat thread for the whole test."""
        from microkit import registry

        for instance in instances:
            self.registry.register(instance)
        if self._heartbeat is None:
            self._heartbeat = registry.Heartbeat(self.registry).start()

    def deregister(self, instances: list) -> None:
        for instance in instances:
            self.registry.deregister(instance)

    def keystore(self):
        from microkit.gateway.security import connect_keystore

        return connect_keystore(self.registry_url, project_root=self.root, namespace=self.namespace)

    def close(self) -> None:
        """Stop heartbeats, close the registry connection, and delete this test's keys on Redis (registry,
        API keys, rate limits)."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._registry is not None:
            self._registry.close()
            self._registry = None
        if self.registry_url is not None:
            delete_keys(self.registry_url, self.namespace)


def delete_keys(url: str, namespace: str) -> None:
    """Delete every key under `namespace:` on the Redis at `url`."""
    import redis

    from microkit.registry import RegistryUnavailable
    from microkit.testing.databases import redacted

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=500))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
    except redis.RedisError as exc:
        raise RegistryUnavailable(f"cannot delete this test's keys ({namespace}:*) on {redacted(url)}: "
                                  f"{exc}") from None
    finally:
        client.close()
