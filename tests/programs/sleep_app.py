"""A WSGI app that tells which `time.sleep` its worker gave it, and sleeps as asked.

/which      {"module": the module of time.sleep}
/sleep?S    sleeps S seconds with time.sleep, answers {"slept": the seconds it took}
"""

import json
import time


def app(environ, start_response):
    if environ["PATH_INFO"] == "/which":
        body = {"module": time.sleep.__module__}
    else:
        began = time.monotonic()
        time.sleep(float(environ.get("QUERY_STRING") or 0.01))
        body = {"slept": time.monotonic() - began}
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
