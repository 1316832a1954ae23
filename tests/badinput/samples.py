"""Valid OTLP and NDJSON bodies for every signal, the seeds that bad-input tests mutate."""

from __future__ import annotations

import json
from collections.abc import Callable

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

PROTOBUF = b"application/x-protobuf"
JSON = b"application/json"
NDJSON = b"application/x-ndjson"
OTLP_SIGNALS = ("traces", "logs", "metrics")
# A tiny valid body of every signal and the items it holds: the "normal request" of the tests.
EMPTY_TRACES = b'{"resourceSpans":[]}'
ONE_SPAN = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"ok"}]}]}]}'

_ATTRS = [
    KeyValue(key="service.name", value=AnyValue(string_value="fuzz")),
    KeyValue(
        key="nested",
        value=AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=i) for i in range(3)])),
    ),
]


def traces() -> ExportTraceServiceRequest:
    """2 resources x 2 scopes x 2 spans = 8 spans."""
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                scope_spans=[
                    ScopeSpans(
                        spans=[
                            Span(
                                trace_id=bytes(range(16)),
                                span_id=i.to_bytes(8, "big"),
                                name=f"span-{r}-{s}-{i}",
                                attributes=_ATTRS,
                            )
                            for i in range(2)
                        ]
                    )
                    for s in range(2)
                ]
            )
            for r in range(2)
        ]
    )


def logs() -> ExportLogsServiceRequest:
    """2 resources x 2 log records = 4 log records."""
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                scope_logs=[
                    ScopeLogs(
                        log_records=[
                            LogRecord(
                                severity_text="INFO",
                                body=AnyValue(string_value="héllo"),
                                attributes=_ATTRS,
                            )
                            for _ in range(2)
                        ]
                    )
                ]
            )
            for _ in range(2)
        ]
    )


def metrics() -> ExportMetricsServiceRequest:
    """A gauge with 2 points, a sum with 1, a histogram with 2: 5 data points."""
    return ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                scope_metrics=[
                    ScopeMetrics(
                        metrics=[
                            Metric(
                                name="g",
                                gauge=Gauge(
                                    data_points=[NumberDataPoint(as_double=1.5) for _ in range(2)]
                                ),
                            ),
                            Metric(name="s", sum=Sum(data_points=[NumberDataPoint(as_int=3)])),
                            Metric(
                                name="h",
                                histogram=Histogram(
                                    data_points=[
                                        HistogramDataPoint(
                                            count=2, bucket_counts=[1, 1], explicit_bounds=[1.0]
                                        )
                                        for _ in range(2)
                                    ]
                                ),
                            ),
                        ]
                    )
                ]
            )
        ]
    )


_BUILDERS: dict[str, Callable[[], Message]] = {"traces": traces, "logs": logs, "metrics": metrics}
ITEMS = {"traces": 8, "logs": 4, "metrics": 5}


def protobuf_body(signal: str) -> bytes:
    body: bytes = _BUILDERS[signal]().SerializeToString()
    return body


def json_body(signal: str) -> bytes:
    from google.protobuf.json_format import MessageToDict

    return json.dumps(MessageToDict(_BUILDERS[signal]())).encode()


def ndjson_body(lines: int = 5) -> bytes:
    rows = [json.dumps({"msg": f"line {i}", "n": i, "tags": ["a", "ü"]}) for i in range(lines)]
    return ("\n".join(rows) + "\n").encode()


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: tag, varint length, payload."""
    size, prefix = len(payload), bytearray()
    while True:
        low, size = size & 0x7F, size >> 7
        prefix.append(low | (0x80 if size else 0))
        if not size:
            break
    return bytes([number << 3 | 2]) + bytes(prefix) + payload


def deep_protobuf_logs(depth: int) -> bytes:
    """One log record whose body is an AnyValue array nested ``depth`` times, hand-encoded."""
    value = _field(1, b"a")  # AnyValue.string_value
    for _ in range(depth):
        value = _field(5, _field(1, value))  # AnyValue.array_value -> ArrayValue.values
    record = _field(5, value)  # LogRecord.body
    return _field(1, _field(2, _field(2, record)))  # resource_logs.scope_logs.log_records


def deep_json(depth: int) -> bytes:
    """OTLP/JSON traces whose resourceSpans list is nested ``depth`` lists deep."""
    return b'{"resourceSpans":' + b"[" * depth + b"]" * depth + b"}"
