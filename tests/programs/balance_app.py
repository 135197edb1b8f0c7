"""A WSGI app for the balancing tests, mounted under any route prefix.

{prefix}/work?MS   sleeps MS milliseconds (gevent), then answers the worker's pid
                   503 instead when the file SICK_FILE names this worker's pid
"""

import os
import time


def app(environ, start_response):
    sick = os.environ.get("SICK_FILE")
    if sick and os.path.exists(sick) and open(sick).read().strip() == str(os.getpid()):
        start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"sick"]
    if not environ["PATH_INFO"].endswith("/work"):
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
        return [b"not found"]
    time.sleep(float(environ.get("QUERY_STRING") or 0) / 1000)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
