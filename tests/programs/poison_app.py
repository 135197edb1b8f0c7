"""A WSGI app with requests that kill their worker, for the gateway's resend tests.

{prefix}/pid      the worker's pid
{prefix}/crash    writes the pid to $POISON_LOG, then exits the process at once (os._exit)
{prefix}/block    writes the pid to $POISON_LOG, then blocks the event loop until the worker is killed
"""

import os
import time


def _record() -> None:
    with open(os.environ["POISON_LOG"], "a") as log:
        log.write(f"{os.getpid()}\n")


def app(environ, start_response):
    action = environ["PATH_INFO"].rstrip("/").rsplit("/", 1)[-1]
    if action == "crash":
        _record()
        os._exit(3)
    if action == "block":
        _record()
        end = time.monotonic() + 60
        while time.monotonic() < end:  # busy: no greenlet switch, so the heartbeat stops too
            pass
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
