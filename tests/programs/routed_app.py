"""A WSGI app mounted under any route prefix, for the discovery and gateway tests.

{prefix}/pid       the worker's pid            {prefix}/sleep?S   sleeps S seconds (gevent)
{prefix}/echo      POST: the body's length     anything else      404
"""

import os
import time


def app(environ, start_response):
    action = environ["PATH_INFO"].rstrip("/").rsplit("/", 1)[-1]
    if action == "sleep":
        time.sleep(float(environ.get("QUERY_STRING") or 1))
        body = b"slept"
    elif action == "pid":
        body = str(os.getpid()).encode()
    elif action == "echo":
        body = str(len(environ["wsgi.input"].read())).encode()
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
