"""W3C trace context (issue 14): the gateway keeps or starts a trace and forwards it with a new parent
id, passes tracestate on, logs the trace id; workers and microkit.client carry it on."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from microkit import tracing
from microkit.client import ServiceClient
from support.gateway import get

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"


@pytest.mark.parametrize("value, ok", [
    (VALID, True),
    (f"01-{TRACE}-{PARENT}-00-more", True),  # a later version may add fields
    (f"00-{TRACE}-{PARENT}-01-more", False),
    (f"ff-{TRACE}-{PARENT}-01", False),
    (f"00-{TRACE.upper()}-{PARENT}-01", False),
    (f"00-{'0' * 32}-{PARENT}-01", False),
    (f"00-{TRACE}-{'0' * 16}-01", False),
    (f"00-{TRACE}-{PARENT}", False),
    ("garbage", False),
])
def test_traceparent_validation(value, ok):
    assert (tracing.parse(value.encode()) is not None) is ok


def forwarded(body: bytes) -> dict:
    return json.loads(body)["headers"]


def test_the_gateway_keeps_a_valid_trace_and_forwards_a_new_parent_id(procs):  # noqa: F811
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    _, _, body = get(gw, "/users/1", headers=f"traceparent: {VALID}\r\ntracestate: a=1\r\ntracestate: b=2\r\n")
    sent = forwarded(body)
    version, trace, parent, flags = sent["TRACEPARENT"].split("-")
    assert (version, trace, flags) == ("00", TRACE, "01")
    assert re.fullmatch("[0-9a-f]{16}", parent) and parent != PARENT
    assert sent["TRACESTATE"] == "a=1,b=2"
    [line] = procs.lines(procs.last_gateway, "GET /users/1 ")
    assert line.rstrip().endswith(f"trace={TRACE}")


def test_an_invalid_or_missing_traceparent_starts_a_trace_and_drops_tracestate(procs):  # noqa: F811
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    seen = set()
    for headers in (f"traceparent: ff-{TRACE}-{PARENT}-01\r\ntracestate: a=1\r\n", "",
                    f"traceparent: {VALID}\r\ntraceparent: {VALID}\r\n"):
        sent = forwarded(get(gw, "/users/2", headers=headers)[2])
        assert tracing.parse(sent["TRACEPARENT"].encode()) is not None
        trace = sent["TRACEPARENT"].split("-")[1]
        assert trace != TRACE and "TRACESTATE" not in sent
        seen.add(trace)
    assert len(seen) == 3
    lines = procs.lines(procs.last_gateway, "GET /users/2 ")
    assert all(re.search(r"trace=[0-9a-f]{32}$", line.rstrip()) for line in lines) and lines


def test_refusals_carry_the_trace_id_in_their_access_line(procs):  # noqa: F811
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    assert get(gw, "/nowhere", headers=f"traceparent: {VALID}\r\n")[0] == 404
    [line] = procs.lines(procs.last_gateway, "GET /nowhere 404")
    assert line.rstrip().endswith(f"trace={TRACE}")


class _Capture(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_GET(self) -> None:  # noqa: N802
        _Capture.seen.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_the_client_carries_the_current_request_trace_on():
    server = HTTPServer(("127.0.0.1", 0), _Capture)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = ServiceClient(f"http://127.0.0.1:{server.server_port}")

        def app(environ, start_response):
            client.get("/orders/1")
            start_response("200 OK", [])
            return [b""]
        tracing.traced(app)({"HTTP_TRACEPARENT": VALID}, lambda *a: None)
        client.get("/orders/2")  # outside a request: a trace of its own
    finally:
        server.shutdown()
        server.server_close()
    inside, outside = (tracing.parse(seen["traceparent"].encode()) for seen in _Capture.seen)
    assert inside[0].decode() == TRACE and inside[1].decode() != PARENT
    assert outside is not None and outside[0].decode() != TRACE


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP traces endpoint that keeps what it receives."""

    bodies: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802
        _Collector.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_spans_are_exported_over_otlp_when_an_endpoint_is_set(procs):  # noqa: F811
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from microkit.testing import eventually
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_port}/v1/traces"
        gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"], settings=f'otlp_endpoint = "{endpoint}"')
        sent = forwarded(get(gw, "/users/7", headers=f"traceparent: {VALID}\r\n")[2])
        unsampled = f"00-{'1' * 32}-{PARENT}-00"
        get(gw, "/users/8", headers=f"traceparent: {unsampled}\r\n")

        def spans():
            found = []
            for body in _Collector.bodies:
                request = ExportTraceServiceRequest.FromString(body)
                found += [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]
            return found
        [span] = eventually(spans, 10, "a span at the collector")
        assert span.trace_id.hex() == TRACE and span.parent_span_id.hex() == PARENT
        assert span.span_id.hex() == sent["TRACEPARENT"].split("-")[2], "the span is the parent id sent upstream"
        assert span.name == "GET /users"
    finally:
        server.shutdown()
        server.server_close()


def test_an_otlp_endpoint_must_be_a_url(tmp_path):
    from microkit import config
    from microkit.errors import ConfigError
    path = tmp_path / "microkit.toml"
    path.write_text('[project]\nname = "p"\n[gateway]\notlp_endpoint = "collector:4318"\n')
    with pytest.raises(ConfigError, match='gateway.otlp_endpoint: expected a URL like "http://127.0.0.1:4318/v1/traces"'):
        config.load(path)


def test_an_otlp_endpoint_without_the_opentelemetry_packages_is_one_clear_error(tmp_path, monkeypatch):
    import importlib.util

    from microkit import config
    from microkit.errors import ConfigError
    path = tmp_path / "microkit.toml"
    path.write_text('[project]\nname = "p"\n[gateway]\notlp_endpoint = "http://127.0.0.1:4318/v1/traces"\n')
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # as where they are not installed
    with pytest.raises(ConfigError, match="gateway.otlp_endpoint: exporting spans needs the opentelemetry packages"):
        config.load(path)
