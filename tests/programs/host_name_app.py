"""Answers "HOST_NAME PID"."""

import os


def app(environ, start_response):
    body = f"{os.environ['HOST_NAME']} {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
