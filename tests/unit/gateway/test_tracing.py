"""W3C traceparent propagation, and OpenTelemetry request spans recorded with the right parent."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from computenet.gateway.tracing import SpanHandle, Tracer, TracingSetupError, child_traceparent

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
INCOMING = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def parts(traceparent: str) -> tuple[str, str, str]:
    match = TRACEPARENT.fullmatch(traceparent)
    assert match, traceparent
    trace_id, span_id, flags = match.groups()
    assert trace_id != "0" * 32 and span_id != "0" * 16
    return trace_id, span_id, flags


def sampled(flags: str) -> bool:
    return bool(int(flags, 16) & 1)


@pytest.fixture
def exported() -> Iterator[tuple[Tracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracer = Tracer.with_exporter(exporter, service_name="gw-test")
    yield tracer, exporter
    tracer.shutdown()


def test_a_valid_traceparent_keeps_its_trace_id_and_flags_under_a_new_span_id() -> None:
    for flags in ("01", "00"):
        upstream, trace_id = child_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-{flags}")
        assert trace_id == TRACE_ID
        assert parts(upstream)[0] == TRACE_ID
        assert parts(upstream)[1] != PARENT_ID
        assert parts(upstream)[2] == flags
    span_ids = {parts(child_traceparent(INCOMING)[0])[1] for _ in range(100)}
    assert len(span_ids) == 100


def test_a_later_version_is_read_by_its_first_four_fields() -> None:
    upstream, trace_id = child_traceparent(f"01-{TRACE_ID}-{PARENT_ID}-01-what-comes-next")
    assert trace_id == TRACE_ID and upstream.startswith(f"00-{TRACE_ID}-")


@pytest.mark.parametrize(
    "incoming",
    [
        None,
        "",
        "garbage",
        INCOMING.upper(),
        f"00-{'0' * 32}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"ff-{TRACE_ID}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",
        f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{PARENT_ID}-1",
        f" {INCOMING}",
    ],
)
def test_a_malformed_or_absent_traceparent_starts_a_new_trace(incoming: str | None) -> None:
    upstream, trace_id = child_traceparent(incoming)
    assert trace_id != TRACE_ID
    assert parts(upstream) == (trace_id, parts(upstream)[1], "00")
    assert parts(child_traceparent(incoming, sampled=True)[0])[2] == "01"
    assert child_traceparent(incoming)[1] != trace_id


def test_a_request_span_is_a_child_of_the_incoming_trace_and_the_parent_of_upstream(
    exported: tuple[Tracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = exported
    assert tracer.enabled
    handle = tracer.request_span("POST /v1/chat/completions", INCOMING, {"model": "m", "stream": 1})
    handle.set_attribute("computenet.backend", "deployment/d")
    handle.add_event("first_token", {"ttft_s": 0.05})
    handle.end(200)
    handle.end(500)  # a second end changes nothing
    assert tracer.force_flush()

    (span,) = exporter.get_finished_spans()
    assert span.name == "POST /v1/chat/completions" and span.kind is SpanKind.SERVER
    assert span.parent is not None and span.parent.is_remote
    assert f"{span.parent.trace_id:032x}" == TRACE_ID and f"{span.parent.span_id:016x}" == PARENT_ID
    assert f"{span.context.trace_id:032x}" == TRACE_ID == handle.trace_id
    trace_id, upstream_parent, flags = parts(handle.traceparent)
    assert trace_id == TRACE_ID and flags == "01"
    assert upstream_parent == f"{span.context.span_id:016x}"  # the backend's spans nest under ours
    assert dict(span.attributes or {}) == {
        "model": "m",
        "stream": 1,
        "computenet.backend": "deployment/d",
        "http.response.status_code": 200,
    }
    assert [(e.name, dict(e.attributes or {})) for e in span.events] == [("first_token", {"ttft_s": 0.05})]
    assert span.status.status_code is StatusCode.UNSET
    assert span.resource.attributes["service.name"] == "gw-test"


def test_a_server_error_marks_the_span_as_an_error(exported: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = exported
    tracer.request_span("req", None, {}).end(503)
    tracer.request_span("req", None, {}).end(429)
    tracer.force_flush()
    statuses = [s.status.status_code for s in exporter.get_finished_spans()]
    assert statuses == [StatusCode.ERROR, StatusCode.UNSET]


def test_without_a_valid_traceparent_the_span_is_a_new_root(
    exported: tuple[Tracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = exported
    handle = tracer.request_span("req", "not-a-traceparent", {})
    handle.end(200)
    tracer.force_flush()
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    trace_id, upstream_parent, flags = parts(handle.traceparent)
    assert (trace_id, upstream_parent) == (handle.trace_id, f"{span.context.span_id:016x}")
    assert sampled(flags)  # the SDK may add W3C level 2's "random trace id" bit (0x02)
    assert handle.trace_id != TRACE_ID


def test_sampling_keeps_the_callers_decision_and_samples_new_traces_by_ratio() -> None:
    exporter = InMemorySpanExporter()
    tracer = Tracer.with_exporter(exporter, sample_ratio=0.0)
    try:
        dropped = tracer.request_span("req", None, {})
        assert type(dropped) is SpanHandle  # not sampled: a no-op handle
        assert not sampled(parts(dropped.traceparent)[2])
        dropped.end(200)
        kept = tracer.request_span("req", INCOMING, {})  # the caller sampled it: so do we
        kept.end(200)
        unsampled = tracer.request_span("req", f"00-{TRACE_ID}-{PARENT_ID}-00", {})
        assert parts(unsampled.traceparent)[:3:2] == (TRACE_ID, "00")
        unsampled.end(200)
        tracer.force_flush()
        assert [f"{s.context.trace_id:032x}" for s in exporter.get_finished_spans()] == [TRACE_ID]
    finally:
        tracer.shutdown()


def test_disabled_tracing_does_no_sdk_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import opentelemetry.sdk.trace as sdk_trace

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the SDK was used while tracing is off")

    monkeypatch.setattr(sdk_trace, "TracerProvider", forbidden)
    monkeypatch.setattr(sdk_trace.Tracer, "start_span", forbidden)
    tracer = Tracer.disabled()
    assert not tracer.enabled
    handle = tracer.request_span("req", INCOMING, {"model": "m"})
    assert type(handle) is SpanHandle
    handle.set_attribute("k", "v")
    handle.add_event("e", {"a": 1})
    handle.end(200)
    assert handle.trace_id == TRACE_ID and parts(handle.traceparent)[1] != PARENT_ID
    fresh = tracer.request_span("req", None, {})
    assert parts(fresh.traceparent) == (fresh.trace_id, parts(fresh.traceparent)[1], "00")
    assert tracer.force_flush()
    tracer.shutdown()


def test_from_env_is_off_unless_an_endpoint_is_set() -> None:
    assert not Tracer.from_env({}).enabled
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert not Tracer.from_env({**endpoint, "OTEL_SDK_DISABLED": "true"}).enabled
    assert not Tracer.from_env({**endpoint, "OTEL_TRACES_EXPORTER": "none"}).enabled
    with pytest.raises(TracingSetupError, match="OTEL_TRACES_SAMPLER_ARG"):
        Tracer.from_env({**endpoint, "OTEL_TRACES_SAMPLER_ARG": "half"})


def test_from_env_exports_over_otlp_http_when_an_endpoint_is_set() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    tracer = Tracer.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SERVICE_NAME": "gw"}
    )
    try:
        assert tracer.enabled
    finally:
        tracer.shutdown()  # no span was made: nothing is sent


def test_otlp_without_the_optional_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(TracingSetupError, match=re.escape("pip install 'computenet[otlp]'")):
        Tracer.otlp("http://collector:4318")


@pytest.mark.parametrize("endpoint", ["collector:4318", "ftp://collector", "http://"])
def test_otlp_rejects_an_endpoint_that_is_not_an_http_url(endpoint: str) -> None:
    with pytest.raises(TracingSetupError, match="http"):
        Tracer.otlp(endpoint)


def test_sample_ratio_must_be_a_fraction() -> None:
    with pytest.raises(TracingSetupError, match="sample_ratio"):
        Tracer.with_exporter(InMemorySpanExporter(), sample_ratio=1.5)
