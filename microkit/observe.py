"""What the gateway serves to see what runs (issue 14): metrics, the dashboard and the merged OpenAPI
document, installed on a Gateway in one call so the gateway's own modules keep one hook."""

from __future__ import annotations


def install_observability(gateway) -> None:
    from microkit.metrics.scrape import guarded, install as install_metrics
    install_metrics(gateway)
    endpoint = gateway.config.gateway.otlp_endpoint
    if endpoint and gateway.meter is not None:
        from microkit.otlp import SpanExport
        gateway.meter.spans = SpanExport(endpoint, f"{gateway.config.project.name}-gateway", str(gateway.config.path))
    install_openapi(gateway, guarded)
    install_dashboard(gateway)


def install_dashboard(gateway) -> None:
    import os

    from microkit.dashboard.views import install
    from microkit.metrics.scrape import SLOT_ENV
    slot = os.environ.get(SLOT_ENV)
    install(gateway, int(slot or 1), os.getppid() if slot else os.getpid())


def install_openapi(gateway, guarded) -> None:
    """GET /__microkit/openapi.json (admin scope): the services' documents merged (microkit.openapi)."""
    import json

    import bottle

    from microkit.gateway.app import ADMIN_PREFIX
    from microkit.openapi import GatewayDocument

    document = GatewayDocument(gateway.routes)

    def render() -> bytes:
        parts = bottle.request.urlparts
        body = document.render(f"{parts.scheme}://{parts.netloc}", gateway.config.project.name)
        bottle.response.content_type = "application/json"
        return json.dumps(body).encode()
    gateway.app.route(f"{ADMIN_PREFIX}/openapi.json", "GET", guarded(gateway, render, allow_networks=False))
