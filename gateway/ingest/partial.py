"""How many items an upstream's 2xx answer says it rejected (OTLP partial success).

``Export*ServiceResponse.partial_success`` holds ``rejected_spans``, ``rejected_log_records``
or ``rejected_data_points``: in protobuf (field 1, then field 1, int64) or in JSON
(``partialSuccess.rejectedSpans``, an int64 that may be a string; snake_case accepted too).
An answer that cannot be read rejects nothing: the batch was accepted.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import zlib
from typing import Any

import zstandard
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

MAX_ANSWER = 64 * 1024
_RESPONSES: dict[str, Any] = {
    "traces": ExportTraceServiceResponse,
    "logs": ExportLogsServiceResponse,
    "metrics": ExportMetricsServiceResponse,
}
_REJECTED = {
    "traces": "rejected_spans",
    "logs": "rejected_log_records",
    "metrics": "rejected_data_points",
}
_REJECTED_JSON = {
    "traces": "rejectedSpans",
    "logs": "rejectedLogRecords",
    "metrics": "rejectedDataPoints",
}


def rejected_items(
    signal: str, content_type: bytes | None, content_encoding: bytes | None, body: bytes
) -> int:
    """Items the upstream rejected out of an accepted batch; 0 when it says none or nothing."""
    if signal not in _RESPONSES or not body:
        return 0
    try:
        body = _decoded(body, content_encoding)
    except (OSError, EOFError, zlib.error, zstandard.ZstdError):
        return 0
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    if media == b"application/x-protobuf":
        if len(body) <= 2:  # nothing, or an empty partial_success: every answer that accepts all
            return 0
        try:
            answer = _RESPONSES[signal].FromString(body)
        except DecodeError:
            return 0
        return max(0, int(getattr(answer.partial_success, _REJECTED[signal])))
    if media == b"application/json":
        # Most answers reject nothing: skip parsing those (every 2xx of the hot path passes here).
        return _rejected_json(signal, body) if b"ejected" in body else 0
    return 0


def _decoded(body: bytes, content_encoding: bytes | None) -> bytes:
    coding = (content_encoding or b"").strip().lower()
    if coding == b"gzip":
        return _bounded(zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), body)
    if coding in (b"deflate", b"zlib"):
        return _bounded(zlib.decompressobj(), body)
    if coding == b"zstd":
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)) as reader:
            data: bytes = reader.read(MAX_ANSWER + 1)
        if len(data) > MAX_ANSWER:
            raise gzip.BadGzipFile("answer too large")
        return data
    return body


def _bounded(inflater: Any, body: bytes) -> bytes:
    data: bytes = inflater.decompress(body, MAX_ANSWER)
    if inflater.unconsumed_tail:
        raise gzip.BadGzipFile("answer too large")
    return data


def _rejected_json(signal: str, body: bytes) -> int:
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return 0
    if not isinstance(answer, dict):
        return 0
    partial = answer.get("partialSuccess", answer.get("partial_success"))
    if not isinstance(partial, dict):
        return 0
    value = partial.get(_REJECTED_JSON[signal], partial.get(_REJECTED[signal], 0))
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(0, value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        return int(value)
    return 0


def partial_answer(
    signal: str,
    fmt: str,
    rejected: int,
    message: str,
    upstream: tuple[bytes | None, bytes | None, bytes],
    forwarded: int,
) -> tuple[bytes, bytes]:
    """(content type, body) of an OTLP partial success: ``rejected`` items and ``message``
    from the gateway, added to what the upstream's answer ``(type, coding, body)`` said of the
    ``forwarded`` items (never more than those)."""
    content_type, encoding, body = upstream
    try:
        body = _decoded(body, encoding)
    except (OSError, EOFError, zlib.error, zstandard.ZstdError):
        body = b""
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    theirs = min(forwarded, rejected_items(signal, content_type, None, body))
    if fmt == "protobuf":
        answer = _RESPONSES[signal]()
        if media == b"application/x-protobuf":
            with contextlib.suppress(DecodeError):
                answer.ParseFromString(body)
        partial = answer.partial_success
        setattr(partial, _REJECTED[signal], rejected + theirs)
        partial.error_message = _joined(message, partial.error_message)
        return b"application/x-protobuf", answer.SerializeToString()
    document: dict[str, Any] = {}
    if media == b"application/json":
        with contextlib.suppress(ValueError, RecursionError):
            loaded = json.loads(body)
            document = loaded if isinstance(loaded, dict) else {}
    partial_json = document.pop("partialSuccess", document.pop("partial_success", None))
    said = (
        partial_json.get("errorMessage", partial_json.get("error_message"))
        if isinstance(partial_json, dict)
        else None
    )
    document["partialSuccess"] = {
        _REJECTED_JSON[signal]: str(rejected + theirs),
        "errorMessage": _joined(message, said if isinstance(said, str) else ""),
    }
    return b"application/json", json.dumps(document, separators=(",", ":")).encode()


def _joined(ours: str, theirs: str) -> str:
    return f"{ours}; upstream: {theirs}" if theirs else ours
