"""What the gateway serves to see what runs (issue 14): metrics, the dashboard and the merged OpenAPI
document, installed on a Gateway in one call so the gateway's own modules keep one hook."""

from __future__ import annotations


def install_observability(gateway) -> None:
    from microkit.metrics.scrape import install as install_metrics
    install_metrics(gateway)
