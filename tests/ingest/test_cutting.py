"""Cutting an OTLP batch to its first items: exactly ``keep`` counted, the rest kept as sent."""

from __future__ import annotations

import json

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m

from gateway.errors import Uncuttable
from gateway.ingest.counting import count
from gateway.ingest.cutting import cut, encoded
from gateway.ingest.decoding import inflate


def _field(number: int, payload: bytes) -> bytes:
    assert number < 16 and len(payload) < 128
    return bytes([(number << 3) | 2, len(payload)]) + payload


def _record(i: int) -> LogRecord:
    return LogRecord(body=AnyValue(string_value=f"r{i}"))


def _logs(*scopes: int) -> ExportLogsServiceRequest:
    n = iter(range(1000))
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(scope_logs=[ScopeLogs(log_records=[_record(next(n)) for _ in range(k)])])
            for k in scopes
        ]
    )


def _bodies(request: ExportLogsServiceRequest) -> list[str]:
    return [
        r.body.string_value
        for res in request.resource_logs
        for scope in res.scope_logs
        for r in scope.log_records
    ]


@pytest.mark.parametrize("keep", range(1, 12))
def test_every_cut_keeps_exactly_the_first_items(keep: int) -> None:
    sent = _logs(3, 0, 5, 4)
    data = sent.SerializeToString()

    part = cut("logs", "protobuf", data, keep)

    assert count("logs", "protobuf", part, 10**6) == keep
    got = ExportLogsServiceRequest.FromString(part)
    assert _bodies(got) == _bodies(sent)[:keep]
    assert all(len(s.log_records) for r in got.resource_logs for s in r.scope_logs)
    assert all(r.scope_logs for r in got.resource_logs)  # the empty resource is gone


def test_fields_the_gateway_does_not_know_stay_byte_for_byte() -> None:
    unknown = b"\xa0\x06\x07"  # field 100, varint 7
    scope = ScopeLogs(log_records=[_record(0), _record(1)]).SerializeToString() + unknown
    resource = _field(2, scope) + unknown
    data = _field(1, resource) + unknown

    part = cut("logs", "protobuf", data, 1)

    kept_scope = _field(2, _record(0).SerializeToString()) + unknown
    assert part == _field(1, _field(2, kept_scope) + unknown) + unknown


def test_the_deprecated_scope_list_is_cut_when_it_is_the_one_read() -> None:
    scope = ScopeLogs(log_records=[_record(0), _record(1), _record(2)]).SerializeToString()
    deprecated = b"\xc2\x3e" + bytes([len(scope)]) + scope  # field 1000, length-delimited
    data = _field(1, deprecated)
    assert count("logs", "protobuf", data, 100) == 3

    part = cut("logs", "protobuf", data, 2)

    assert count("logs", "protobuf", part, 100) == 2
    assert part.startswith(_field(1, b"")[:1])
    assert b"\xc2\x3e" in part


def test_a_deprecated_list_beside_the_current_one_is_dropped() -> None:
    current = ScopeLogs(log_records=[_record(0), _record(1)]).SerializeToString()
    old = ScopeLogs(log_records=[_record(9)]).SerializeToString()
    data = _field(1, _field(2, current) + b"\xc2\x3e" + bytes([len(old)]) + old)

    part = cut("logs", "protobuf", data, 1)

    assert b"r9" not in part
    assert count("logs", "protobuf", part, 100) == 1


def test_a_metric_keeps_only_its_last_data_and_points_are_cut_inside_it() -> None:
    metric = m.Metric(name="m", sum=m.Sum(data_points=[m.NumberDataPoint(as_int=1)]))
    gauge = m.Metric(gauge=m.Gauge(data_points=[m.NumberDataPoint(as_int=i) for i in range(4)]))
    # The sum, then a gauge on the wire: the backend reads the gauge (the last data field).
    wire = metric.SerializeToString() + gauge.SerializeToString()
    data = _field(1, _field(2, _field(2, wire)))
    assert count("metrics", "protobuf", data, 100) == 4

    part = cut("metrics", "protobuf", data, 3)

    got = ExportMetricsServiceRequest.FromString(part)
    (kept,) = got.resource_metrics[0].scope_metrics[0].metrics
    assert kept.name == "m"
    assert kept.WhichOneof("data") == "gauge"
    assert [p.as_int for p in kept.gauge.data_points] == [0, 1, 2]


def test_json_keeps_other_fields_and_either_spelling() -> None:
    body = {
        "resource_logs": [
            {
                "resource": {"attributes": [{"key": "k", "value": {"stringValue": "é"}}]},
                "schemaUrl": "https://example.test/s",
                "scope_logs": [
                    {"scope": {"name": "lib"}, "logRecords": [{"body": {}}, {}, {}]},
                    {"logRecords": [{}]},
                ],
            },
            {"scopeLogs": None},
        ]
    }
    data = json.dumps(body, ensure_ascii=False).encode()

    part = cut("logs", "json", data, 2)

    got = json.loads(part)
    assert count("logs", "json", part, 100) == 2
    (resource,) = got["resource_logs"]
    assert resource["resource"] == body["resource_logs"][0]["resource"]  # type: ignore[index]
    assert resource["schemaUrl"] == "https://example.test/s"
    (scope,) = resource["scope_logs"]
    assert scope == {"scope": {"name": "lib"}, "logRecords": [{"body": {}}, {}]}


def test_json_metrics_cut_their_data_points() -> None:
    metric = {
        "name": "a",
        "sum": {"dataPoints": [{"asInt": "1"}, {"asInt": "2"}], "isMonotonic": True},
    }
    body = {
        "resourceMetrics": [
            {"scopeMetrics": [{"metrics": [metric, {"name": "b", "gauge": {"dataPoints": [{}]}}]}]}
        ]
    }

    part = cut("metrics", "json", json.dumps(body).encode(), 1)

    assert json.loads(part) == {
        "resourceMetrics": [
            {
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "name": "a",
                                "sum": {"dataPoints": [{"asInt": "1"}], "isMonotonic": True},
                            }
                        ]
                    }
                ]
            }
        ]
    }


@pytest.mark.parametrize("name", ["", "identity", "gzip", "deflate", "zlib", "zstd"])
def test_a_cut_body_is_coded_as_the_request_was(name: str) -> None:
    data = _logs(4).SerializeToString()
    assert inflate(encoded(data, name), name, 1 << 20) == data


def test_a_cut_keeps_at_least_one_item() -> None:
    with pytest.raises(ValueError):
        cut("logs", "protobuf", _logs(2).SerializeToString(), 0)


def test_a_json_body_repeating_a_key_is_not_cut() -> None:
    # Off the counted path, so counting accepts it; a cut would keep one of the two resources.
    body = (
        b'{"resourceLogs":[{"resource":{"attributes":[]},"resource":{"droppedAttributesCount":1},'
        b'"scopeLogs":[{"logRecords":[{},{},{}]}]}]}'
    )
    assert count("logs", "json", body, 100) == 3

    with pytest.raises(Uncuttable):
        cut("logs", "json", body, 2)
