"""The gateway as a WSGI app a worker can load by name: `microkit.gateway.wsgi:application`.

Built when a gateway worker imports it (after gevent patching): it reads the project's config
(MICROKIT_CONFIG, else discovery), connects to the registry and keeps the routes current with a
watcher. Access lines go to a buffered stdout (see accesslog); MICROKIT_ACCESS_LOG=0 turns them off.
Every log handler redacts tokens, API keys and credentials (see security.redact). Nothing here runs in
the supervisor.
"""

from __future__ import annotations

import logging
import os
import sys

from microkit import config as cfg
from microkit import registry
from microkit.gateway.accesslog import buffered_stdout, line_writer, start_flushing
from microkit.gateway.app import Gateway
from microkit.gateway.security.redact import install_redaction


def create(conf: cfg.Config | None = None) -> Gateway:
    """A Gateway for the project, routing to what the registry says is live."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    install_redaction()
    conf = conf or cfg.discover()
    access_log = None
    if os.environ.get("MICROKIT_ACCESS_LOG", "1") != "0":
        stream = buffered_stdout()
        start_flushing(stream)
        access_log = line_writer(stream)
    gateway = Gateway(conf, access_log=access_log)
    store = registry.connect(conf.registry.url, project_root=conf.root, namespace=conf.project.name)
    watcher = store.watch(gateway.update)
    gateway.update(watcher.snapshot())
    gateway.snapshot_age = lambda: watcher.age
    if gateway.migration is not None:
        import gevent

        from microkit.gateway.migration_store import connect_migration_store
        gevent.spawn(gateway.migration.run, connect_migration_store(conf.registry.url, project_root=conf.root,
                                                                    namespace=conf.project.name))
    return gateway


application = create()
