"""Decode an ingest request body and count its items, refusing malformed or oversized bodies.

The media type picks the format, gzip is inflated under a hard output limit, and the
items (spans, log records, metric data points, or NDJSON lines) are counted so that
usage can be charged per item. Every refusal is a ``ClientError`` with a short message
that never echoes the payload.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

SIGNALS = ("traces", "logs", "metrics", "logpush")

_OTLP_MEDIA = {"application/x-protobuf": "protobuf", "application/json": "json"}
# "" is a missing or empty Content-Type: log shippers often send none.
_LOGPUSH_MEDIA = frozenset(
    {
        "",
        "application/x-ndjson",
        "application/jsonl",
        "application/json",
        "application/x-jsonlines",
        "text/plain",
    }
)
_IDENTITY = frozenset({"", "identity"})
_GZIP = frozenset({"gzip", "x-gzip"})
_GZIP_WBITS = 16 + zlib.MAX_WBITS
# Each extra member costs a copy of the rest of the body (zlib's unused_data).
_MAX_GZIP_MEMBERS = 16

# (camelCase, snake_case) keys from the request down to the counted objects.
_JsonPath = tuple[tuple[str, str], ...]
_JSON_PATHS: dict[str, _JsonPath] = {
    "traces": (
        ("resourceSpans", "resource_spans"),
        ("scopeSpans", "scope_spans"),
        ("spans", "spans"),
    ),
    "logs": (
        ("resourceLogs", "resource_logs"),
        ("scopeLogs", "scope_logs"),
        ("logRecords", "log_records"),
    ),
    "metrics": (
        ("resourceMetrics", "resource_metrics"),
        ("scopeMetrics", "scope_metrics"),
        ("metrics", "metrics"),
    ),
}
_METRIC_DATA = (
    ("gauge", "gauge"),
    ("sum", "sum"),
    ("histogram", "histogram"),
    ("exponentialHistogram", "exponential_histogram"),
    ("summary", "summary"),
)
_DATA_POINTS = ("dataPoints", "data_points")

# What bytes.strip() removes, less the newline that separates NDJSON lines.
_BLANK = " \t\r\x0b\x0c"
_NDJSON_SLICE = 1024 * 1024
_scan_json = json.JSONDecoder().raw_decode


@dataclass(frozen=True, slots=True)
class BodyLimits:
    max_received: int = 16 * 1024 * 1024
    max_decompressed: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Payload:
    format: str
    size: int
    items: int


def media_format(signal: str, content_type: bytes | None) -> str:
    """The body format for ``signal`` named by a Content-Type header, parameters ignored."""
    media = "" if content_type is None else _token(content_type.split(b";", 1)[0])
    if signal == "logpush":
        if media in _LOGPUSH_MEDIA:
            return "ndjson"
        raise UnsupportedMediaType("logpush expects newline-delimited JSON")
    _check_signal(signal)
    try:
        return _OTLP_MEDIA[media]
    except KeyError:
        raise UnsupportedMediaType(
            f"{signal} expects application/x-protobuf or application/json"
        ) from None


def decompress(body: bytes, content_encoding: bytes | None, limits: BodyLimits) -> bytes:
    """The body with its Content-Encoding undone; only gzip is supported.

    Concatenated gzip members (RFC 1952) are inflated in turn, up to a few of them.
    """
    encoding = "" if content_encoding is None else _token(content_encoding)
    if encoding in _IDENTITY:
        return body
    if encoding not in _GZIP:
        raise UnsupportedMediaType("only gzip content encoding is supported")
    return _gunzip(body, limits.max_decompressed)


def count_items(signal: str, fmt: str, data: bytes) -> int:
    """Spans, log records or metric data points in an OTLP body; non-empty lines in NDJSON."""
    if fmt == "ndjson":
        return _count_lines(data)
    _check_signal(signal)
    if fmt == "protobuf":
        return _count_protobuf(signal, data)
    if fmt == "json":
        return _count_json(signal, data)
    raise ValueError(f"unknown format {fmt!r}")


def inspect(
    signal: str,
    content_type: bytes | None,
    content_encoding: bytes | None,
    body: bytes,
    limits: BodyLimits,
) -> Payload:
    fmt = media_format(signal, content_type)
    if len(body) > limits.max_received:
        raise PayloadTooLarge(f"body exceeds {limits.max_received} bytes")
    data = decompress(body, content_encoding, limits)
    return Payload(fmt, len(data), count_items(signal, fmt, data))


def _token(header: bytes) -> str:
    return header.decode("latin-1").strip().lower()


def _check_signal(signal: str) -> None:
    if signal not in _JSON_PATHS:
        raise ValueError(f"unknown signal {signal!r}")


def _gunzip(body: bytes, limit: int) -> bytes:
    view = memoryview(body)
    parts: list[bytes] = []
    size = 0
    start = 0
    for _ in range(_MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
        try:
            # One byte over the budget is enough to know the output is too large.
            part = inflater.decompress(view[start:], limit - size + 1)
        except zlib.error as exc:
            raise BadRequest("malformed gzip body") from exc
        size += len(part)
        if size > limit:
            raise PayloadTooLarge(f"decompressed body exceeds {limit} bytes")
        if not inflater.eof:
            raise BadRequest("truncated gzip body")
        parts.append(part)
        rest = len(inflater.unused_data)
        if not rest:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        start = len(body) - rest
    raise BadRequest(f"gzip body has more than {_MAX_GZIP_MEMBERS} members")


def _count_protobuf(signal: str, data: bytes) -> int:
    try:
        if signal == "traces":
            traces = ExportTraceServiceRequest.FromString(data)
            return sum(len(ss.spans) for rs in traces.resource_spans for ss in rs.scope_spans)
        if signal == "logs":
            logs = ExportLogsServiceRequest.FromString(data)
            return sum(len(sl.log_records) for rl in logs.resource_logs for sl in rl.scope_logs)
        metrics = ExportMetricsServiceRequest.FromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise BadRequest(f"invalid OTLP {signal} protobuf body") from exc
    points = 0
    for rm in metrics.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    points += len(getattr(metric, kind).data_points)
    return points


def _count_json(signal: str, data: bytes) -> int:
    try:
        request = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadRequest("JSON body is not valid UTF-8") from exc
    except (ValueError, RecursionError) as exc:
        raise BadRequest("invalid JSON body") from exc
    if not isinstance(request, dict):
        raise BadRequest("JSON body must be an object")
    leaves = _json_leaves(request, _JSON_PATHS[signal])
    if signal != "metrics":
        return sum(1 for _ in leaves)
    return sum(_json_data_points(metric) for metric in leaves)


def _json_leaves(obj: dict[str, Any], path: _JsonPath) -> Iterator[dict[str, Any]]:
    (camel, snake), rest = path[0], path[1:]
    for child in _json_objects(obj, camel, snake):
        if rest:
            yield from _json_leaves(child, rest)
        else:
            yield child


def _json_objects(obj: dict[str, Any], camel: str, snake: str) -> list[dict[str, Any]]:
    """The repeated message field under either spelling; null means empty, as in proto3 JSON."""
    value = _json_field(obj, camel, snake)
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"{camel} must be a list")
    if not all(isinstance(item, dict) for item in value):
        raise BadRequest(f"{camel} must hold objects")
    return value


def _json_field(obj: dict[str, Any], camel: str, snake: str) -> Any:
    if snake != camel and snake in obj:
        if camel in obj:
            raise BadRequest(f"both {camel} and {snake} are set")
        return obj[snake]
    return obj.get(camel)


def _json_data_points(metric: dict[str, Any]) -> int:
    points = 0
    seen = None
    for camel, snake in _METRIC_DATA:
        data = _json_field(metric, camel, snake)
        if data is None:
            continue
        if seen is not None:
            raise BadRequest(f"a metric cannot hold both {seen} and {camel}")
        if not isinstance(data, dict):
            raise BadRequest(f"{camel} must be an object")
        seen = camel
        points = len(_json_objects(data, *_DATA_POINTS))
    return points


def _count_lines(data: bytes) -> int:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = data.count(b"\n", 0, exc.start) + 1
        raise BadRequest(f"line {number} is not valid UTF-8") from exc
    items = 0
    number = 0
    start = 0
    while start < len(text):
        # Split a slice at a time so tiny lines never become millions of live objects.
        stop = text.find("\n", start + _NDJSON_SLICE)
        stop = len(text) if stop < 0 else stop
        for raw in text[start:stop].split("\n"):
            number += 1
            line = raw.strip(_BLANK)
            if not line:
                continue
            try:
                _, end = _scan_json(line)
            except (ValueError, RecursionError) as exc:
                raise BadRequest(f"line {number} is not valid JSON") from exc
            if end != len(line):
                raise BadRequest(f"line {number} is not valid JSON")
            items += 1
        start = stop + 1
    return items
