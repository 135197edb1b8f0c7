"""The proxies' backend in bench_gateway.py: a plain WSGI callable on bjoern (C, libev), one process.

It answers every path with the same small JSON object as benchmarks/app.py, without a framework, so
that it serves several times what any proxy in front of it can pass on (the benchmark prints its
direct req/s) and is never the limit. Run as `python -m benchmarks.backend` with PORT (and HOST) in
the environment, as a microkit command service is.
"""

import os

BODY = b'{"hello": "world", "n": 1}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def app(environ: dict, start_response) -> list[bytes]:
    """The same answer for every request (health checks included)."""
    start_response("200 OK", HEADERS)
    return [BODY]


if __name__ == "__main__":
    import bjoern

    bjoern.run(app, os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"]))
