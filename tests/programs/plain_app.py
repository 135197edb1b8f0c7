"""A WSGI callable with no framework, for the supervisor tests.

/pid      the worker's pid        /sleep?S  sleeps S seconds (gevent, the loop stays responsive)
/version  VERSION below           /block    a busy loop: blocks the worker's event loop for good
/hold?S   blocks the event loop S seconds (the unpatched sleep), printing when it started
/nap?S    as /sleep, printing "napping" first: a test can wait until its requests are in the app
"""

import os
import time

from gevent.monkey import get_original

blocking_sleep = get_original("time", "sleep")

VERSION = "v1"


def app(environ, start_response):
    path = environ["PATH_INFO"]
    query = environ.get("QUERY_STRING", "")
    if path in ("/sleep", "/nap"):
        if path == "/nap":
            print("napping", flush=True)
        time.sleep(float(query or 1))
        body = b"slept"
    elif path == "/hold":
        print(f"holding since {time.monotonic():.6f}", flush=True)
        blocking_sleep(float(query))
        body = b"held"
    elif path == "/block":
        while True:
            pass
    elif path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/version":
        body = VERSION.encode()
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
