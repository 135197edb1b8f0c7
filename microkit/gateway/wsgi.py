"""The gateway as a WSGI app a worker can load by name: `microkit.gateway.wsgi:application`.

Built when a gateway worker imports it (after gevent patching): it reads the project's config
(MICROKIT_CONFIG, else discovery), connects to the registry and keeps the routes current with a
watcher. MICROKIT_ACCESS_LOG=0 turns the gateway's access lines off. Nothing here runs in the supervisor.
"""

from __future__ import annotations

import logging
import os
import sys

from microkit import config as cfg
from microkit import registry
from microkit.gateway.app import Gateway


def _access_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def create(conf: cfg.Config | None = None) -> Gateway:
    """A Gateway for the project, routing to what the registry says is live."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    conf = conf or cfg.discover()
    logging_on = os.environ.get("MICROKIT_ACCESS_LOG", "1") != "0"
    gateway = Gateway(conf, access_log=_access_line if logging_on else None)
    store = registry.connect(conf.registry.url, project_root=conf.root, namespace=conf.project.name)
    watcher = store.watch(gateway.update)
    gateway.update(watcher.snapshot())
    gateway.snapshot_age = lambda: watcher.age
    return gateway


application = create()
