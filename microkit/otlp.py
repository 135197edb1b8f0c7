"""Optional OpenTelemetry export: one span per proxied request, sent to `[gateway] otlp_endpoint`
(OTLP over HTTP) in batches, when the opentelemetry packages are installed; off by default.

The span is the gateway's: its id is the parent id the gateway forwarded upstream (microkit/tracing.py),
its parent the caller's span when a trace came in, so a collector joins it to what the services
report. Spans are made when the request ends, with the start time it had; a trace that came in
unsampled (flags 00) is not exported, as OpenTelemetry's default parent-based sampler decides.
"""

from __future__ import annotations

import time

from microkit.errors import ConfigError

PACKAGES = "opentelemetry-sdk opentelemetry-exporter-otlp-proto-http"


class _PresetIds:
    """An OpenTelemetry IdGenerator handing out the ids the gateway already chose for the span."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id


class SpanExport:
    """Makes and exports the spans (see the module docstring)."""

    def __init__(self, endpoint: str, service_name: str, config_path: str = "microkit.toml") -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise ConfigError(f"{config_path}: gateway.otlp_endpoint: exporting spans needs the opentelemetry "
                              f"packages: pip install {PACKAGES}") from None
        self.trace = trace
        self.ids = _PresetIds()
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}),
                                       id_generator=self.ids, shutdown_on_exit=False)
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint),
                                                            schedule_delay_millis=500))
        self.tracer = self.provider.get_tracer("microkit.gateway")

    def record(self, route, method: str, status: int, started: float, rid: bytes, trace) -> None:
        """The span of one request that ended now (`started` from time.monotonic())."""
        if trace is None:
            return
        api = self.trace
        end = time.time_ns()
        start = end - int((time.monotonic() - started) * 1e9)
        context = None
        if trace.parent is not None:
            parent = api.SpanContext(int(trace.trace_id, 16), int(trace.parent, 16), is_remote=True,
                                     trace_flags=api.TraceFlags(int(trace.flags, 16)))
            context = api.set_span_in_context(api.NonRecordingSpan(parent))
        self.ids.trace_id, self.ids.span_id = int(trace.trace_id, 16), int(trace.span_id, 16)
        span = self.tracer.start_span(f"{method} {route.prefix}", context=context, kind=api.SpanKind.SERVER,
                                      start_time=start, attributes={
                                          "http.request.method": method, "http.response.status_code": status,
                                          "http.route": route.prefix, "microkit.service": route.service,
                                          "microkit.request_id": rid.decode("latin-1")})
        if status >= 500:
            span.set_status(api.Status(api.StatusCode.ERROR))
        span.end(end_time=end)

    def close(self) -> None:
        self.provider.shutdown()
