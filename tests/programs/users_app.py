"""The new `users` service of the migration tests (a WSGI app under microkit workers): the same
answers as legacy_server.py's /users/ID, with X-Side: service; /users/unavailable answers 503.
(It never hangs: the legacy app's /users/hang does.)"""

import json
import os
import time

BUGGY = os.environ.get("BUGGY_SIDE") == "service"


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/healthz":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    if path == "/users/unavailable":
        start_response("503 Service Unavailable", [("Content-Type", "application/json"), ("Content-Length", "2")])
        return [b"{}"]
    ident = path.rsplit("/", 1)[1]
    name = "User 7" if ident == "7" and BUGGY else f"user{ident}"
    if environ["REQUEST_METHOD"] == "POST":
        data = {"side": "service", "body": environ["wsgi.input"].read().decode()}
    else:
        data = {"id": ident, "name": name, "created_at": time.time()}
    body = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                              ("X-Side", "service")])
    return [body]
