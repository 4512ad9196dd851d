"""W3C trace context for every request, and OpenTelemetry spans when tracing is on.

Why this shape: every request forwards a `traceparent` to its backend, so an engine that traces nests its
spans under the caller's trace. With tracing off (the default) that costs two `random.getrandbits` (as
OpenTelemetry's own id generator does: ids need to be unique, not secret, and `os.urandom` is a system
call) and a string format, and the OpenTelemetry SDK is not even imported. With tracing on, the gateway's
span is a child of the incoming `traceparent` and the upstream `traceparent` carries that span's id;
spans leave through a `BatchSpanProcessor` (its own thread), over OTLP/HTTP from the optional extra
`computenet[otlp]`.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT_HEADER = "traceparent"
DEFAULT_SERVICE_NAME = "computenet-gateway"
AttributeValue = str | int | float | bool

# version-traceid-spanid-flags; a version after 00 may append fields, and "ff" is never valid.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16


class TracingSetupError(RuntimeError):
    """Tracing was asked for but cannot be set up; the message says what to change."""


def child_traceparent(incoming: str | None, *, sampled: bool = False) -> tuple[str, str]:
    """(traceparent to send upstream, trace id). A valid `incoming` keeps its trace id and flags under a
    new span id; otherwise a new trace starts, flagged sampled only when `sampled`. (A random id is zero
    with probability 2**-64, which we accept rather than pay a check on every request.)"""
    if incoming:
        match = _TRACEPARENT.fullmatch(incoming)
        if match is not None:
            version, trace_id, parent_id, flags, rest = match.groups()
            valid_version = (version == "00" and rest is None) or version not in ("00", "ff")
            if valid_version and trace_id != _ZERO_TRACE_ID and parent_id != _ZERO_SPAN_ID:
                return f"00-{trace_id}-{random.getrandbits(64):016x}-{flags}", trace_id
    trace_id = f"{random.getrandbits(128):032x}"
    return f"00-{trace_id}-{random.getrandbits(64):016x}-{'01' if sampled else '00'}", trace_id


class SpanHandle:
    """One request's span. This base class is the no-op kind handed out when tracing is off (or the span
    was not sampled): it still carries a valid upstream `traceparent`."""

    __slots__ = ("trace_id", "traceparent")

    def __init__(self, traceparent: str, trace_id: str) -> None:
        self.traceparent = traceparent  # send upstream as the `traceparent` header
        self.trace_id = trace_id  # 32 hex digits, for logs

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        pass

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        pass

    def end(self, status_code: int) -> None:
        """Close the span with the HTTP status the client saw; a second call does nothing."""


class _RecordingSpan(SpanHandle):
    __slots__ = ("_ended", "_span")

    def __init__(self, span: Span, traceparent: str, trace_id: str) -> None:
        super().__init__(traceparent, trace_id)
        self._span = span
        self._ended = False

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        self._span.add_event(name, attributes)

    def end(self, status_code: int) -> None:
        if self._ended:
            return
        self._ended = True
        self._span.set_attribute("http.response.status_code", status_code)
        if status_code >= 500:  # OpenTelemetry's HTTP conventions: 4xx is the client's error, not ours
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, f"HTTP {status_code}"))
        self._span.end()


class Tracer:
    """Makes one `SpanHandle` per request. Build it with `disabled()`, `from_env()`, `otlp()` or
    `with_exporter()`; call `shutdown()` when the gateway stops, so buffered spans are sent."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self.enabled = provider is not None
        if provider is not None:
            from opentelemetry.context import Context
            from opentelemetry.trace import SpanKind
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

            self._tracer = provider.get_tracer("computenet.gateway")
            self._propagator: TraceContextTextMapPropagator = TraceContextTextMapPropagator()
            self._root: Context = Context()  # never the ambient context: no incoming header, new trace
            self._server_kind = SpanKind.SERVER

    @classmethod
    def disabled(cls) -> Tracer:
        return cls(None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Tracer:
        """Tracing per OpenTelemetry's variables: on when OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is) or
        OTEL_EXPORTER_OTLP_ENDPOINT (`/v1/traces` appended) is set, unless OTEL_SDK_DISABLED=true or
        OTEL_TRACES_EXPORTER=none; OTEL_SERVICE_NAME and OTEL_TRACES_SAMPLER_ARG (a ratio) are honoured."""
        env = os.environ if environ is None else environ
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls.disabled()
        if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
            return cls.disabled()
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        if not endpoint:
            base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
            if not base:
                return cls.disabled()
            endpoint = base.rstrip("/") + "/v1/traces"
        ratio = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        try:
            sample_ratio = float(ratio) if ratio else 1.0
        except ValueError:
            raise TracingSetupError(
                f"OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1; got {ratio!r}"
            ) from None
        service_name = env.get("OTEL_SERVICE_NAME", "").strip() or DEFAULT_SERVICE_NAME
        return cls.otlp(endpoint, service_name=service_name, sample_ratio=sample_ratio)

    @classmethod
    def otlp(
        cls, endpoint: str, service_name: str = DEFAULT_SERVICE_NAME, sample_ratio: float = 1.0
    ) -> Tracer:
        """Export over OTLP/HTTP. An endpoint with no path (`http://collector:4318`) gets `/v1/traces`."""
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise TracingSetupError(f"the OTLP endpoint must be an http(s) URL; got {endpoint!r}")
        if url.path in ("", "/"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise TracingSetupError(
                f"exporting traces to {endpoint} needs the OTLP exporter: pip install 'computenet[otlp]'"
            ) from exc
        return cls.with_exporter(OTLPSpanExporter(endpoint=endpoint), service_name, sample_ratio)

    @classmethod
    def with_exporter(
        cls,
        exporter: SpanExporter,
        service_name: str = DEFAULT_SERVICE_NAME,
        sample_ratio: float = 1.0,
    ) -> Tracer:
        """Spans go to `exporter` through a BatchSpanProcessor. Sampling follows the caller's flag when a
        valid `traceparent` comes in, else keeps `sample_ratio` of the new traces."""
        if not 0.0 <= sample_ratio <= 1.0:
            raise TracingSetupError(f"sample_ratio must be from 0 to 1; got {sample_ratio}")
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

        provider = TracerProvider(
            sampler=ParentBasedTraceIdRatio(sample_ratio),
            resource=Resource.create({"service.name": service_name}),
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    def request_span(
        self, name: str, traceparent_in: str | None, attributes: dict[str, str | int | float]
    ) -> SpanHandle:
        """Start the span of one request, a child of `traceparent_in` when that is valid."""
        if self._provider is None:
            return SpanHandle(*child_traceparent(traceparent_in))
        context = (
            self._propagator.extract({TRACEPARENT_HEADER: traceparent_in}) if traceparent_in else self._root
        )
        span = self._tracer.start_span(name, context=context, kind=self._server_kind, attributes=attributes)
        ctx = span.get_span_context()
        trace_id = f"{ctx.trace_id:032x}"
        traceparent = f"00-{trace_id}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
        if not span.is_recording():  # not sampled: nothing to record, nothing to end
            return SpanHandle(traceparent, trace_id)
        return _RecordingSpan(span, traceparent, trace_id)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True if self._provider is None else self._provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Send buffered spans and stop the exporter thread. It blocks (up to the exporter's timeout when
        the collector is down): from async code, run it with `asyncio.to_thread`."""
        if self._provider is not None:
            self._provider.shutdown()
