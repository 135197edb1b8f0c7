"""An app that imports in the preflight check but not in a worker (where gevent is loaded first): a boot
failure that only the worker sees, so the supervisor's FATAL handling can be tested."""

import sys

if "gevent" in sys.modules:
    import no_such_module_for_microkit_tests  # noqa: F401



def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "0")])
    return [b""]
