"""Answers GET /NAME with the value of environment variable NAME in the worker ("-" when unset)."""

import os


def app(environ, start_response):
    body = os.environ.get(environ["PATH_INFO"].strip("/"), "-").encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
