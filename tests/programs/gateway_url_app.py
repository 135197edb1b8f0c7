"""Answers with MICROKIT_GATEWAY_URL as the worker sees it ("-" when unset)."""

import os


def app(environ, start_response):
    body = os.environ.get("MICROKIT_GATEWAY_URL", "-").encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
