"""Answers "WHO PATH_INFO": WHO read from the environment as the module is imported."""

import os
SEEN = os.environ.get("WHO", "nobody")

def app(environ, start_response):
    body = f"{SEEN} {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
