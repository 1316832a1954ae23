"""Cut an OTLP batch to its first ``keep`` items, in its own encoding (partial admission).

The items are the ones ``gateway.ingest.counting`` counts (spans, log records, metric data
points), taken in the body's order. Everything around a kept item stays as it came: its
resource, its scope and their other fields, byte for byte in protobuf and value for value in
JSON. A scope, resource or metric left without a kept item is dropped, and so is what the
backend would not read anyway (the deprecated scope list when the current one is set, every
data field of a metric but its last). The result is counted again by the caller, so what is
forwarded is exactly what is charged. A JSON body with a repeated key anywhere is not cut
(``Uncuttable``): a cut rebuilds objects, which would keep only one of the two values.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import zstandard

from gateway.errors import BadRequest, Uncuttable
from gateway.ingest.counting import wire_fields
from gateway.ingest.decoding import IDENTITY

_LEAF = {"traces": "spans", "logs": "logRecords", "metrics": "metrics"}
_SCOPE = {"traces": "scopeSpans", "logs": "scopeLogs", "metrics": "scopeMetrics"}
_RESOURCE = {"traces": "resourceSpans", "logs": "resourceLogs", "metrics": "resourceMetrics"}
_POINT_KINDS = ("gauge", "sum", "histogram", "exponentialHistogram", "summary")
_METRIC_DATA = frozenset({5, 7, 9, 10, 11})  # Metric.data: gauge, sum, histogram, ...
_ONE, _TWO, _DEPRECATED = frozenset({1}), frozenset({2}), frozenset({1000})
_SCOPES = _TWO | _DEPRECATED


class _Left:
    """How many items may still be kept."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


def cut(signal: str, fmt: str, data: bytes, keep: int) -> bytes:
    """The decoded body ``data`` with only its first ``keep`` items (``keep`` >= 1)."""
    if keep < 1:
        raise ValueError("a cut keeps at least one item")
    left = _Left(keep)
    if fmt == "protobuf":
        return _cut_request(memoryview(data), signal, left)
    if fmt == "json":
        return _cut_json(signal, data, left)
    raise ValueError(f"only OTLP bodies are cut, not {fmt!r}")


def encoded(data: bytes, name: str) -> bytes:
    """``data`` in the content coding ``name`` again (as ``decoding.coding`` names it)."""
    if name in IDENTITY:
        return data
    if name == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if name in ("deflate", "zlib"):
        return zlib.compress(data)
    if name == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    raise ValueError(f"unknown content coding {name!r}")


# --- protobuf -------------------------------------------------------------------------------


def _field(number: int, value: bytes | memoryview) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(value)) + bytes(value)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _rebuild(
    data: memoryview,
    fields: Iterable[tuple[int, int, int, int]],
    counted: frozenset[int],
    cut_value: Callable[[memoryview], bytes | None],
    left: _Left,
    dropped: frozenset[int] = frozenset(),
) -> bytes | None:
    """``data`` with each field in ``counted`` replaced by its cut value (left out when that
    keeps nothing, or when no items are left) and the fields in ``dropped`` left out; every
    other field as it came. None when no counted field is kept."""
    out = bytearray()
    kept = False
    for number, start, value, end in fields:
        if number in counted:
            if left.n > 0 and (part := cut_value(data[value:end])) is not None:
                out += _field(number, part)
                kept = True
        elif number not in dropped:
            out += data[start:end]
    return bytes(out) if kept else None


def _cut_request(data: memoryview, signal: str, left: _Left) -> bytes:
    def resource(value: memoryview) -> bytes | None:
        return _cut_resource(value, signal, left)

    return _rebuild(data, wire_fields(data, _ONE), _ONE, resource, left) or b""


def _cut_resource(data: memoryview, signal: str, left: _Left) -> bytes | None:
    fields = list(wire_fields(data, _SCOPES))
    # The backend reads the current scope list, or the deprecated one (1000) when it is empty.
    counted = _TWO if any(f[0] == 2 for f in fields) else _DEPRECATED

    def scope(value: memoryview) -> bytes | None:
        items = _taken(left) if signal != "metrics" else lambda v: _cut_metric(v, left)
        return _rebuild(value, wire_fields(value, _TWO), _TWO, items, left)

    return _rebuild(data, fields, counted, scope, left, dropped=_SCOPES)


def _cut_metric(data: memoryview, left: _Left) -> bytes | None:
    fields = list(wire_fields(data, _METRIC_DATA))
    last = max((i for i, f in enumerate(fields) if f[0] in _METRIC_DATA), default=None)
    if last is None:
        return None  # no data points: nothing of it is counted, so nothing of it is kept
    # Only the last data field is read by the backend: the earlier ones are left out.
    fields = [f for i, f in enumerate(fields) if i == last or f[0] not in _METRIC_DATA]

    def points(value: memoryview) -> bytes | None:
        return _rebuild(value, wire_fields(value, _ONE), _ONE, _taken(left), left)

    return _rebuild(data, fields, _METRIC_DATA, points, left)


def _taken(left: _Left) -> Callable[[memoryview], bytes | None]:
    """An item kept as it came, while items are left (``_rebuild`` checks before each)."""

    def take(value: memoryview) -> bytes:
        left.n -= 1
        return bytes(value)

    return take


# --- OTLP/JSON ------------------------------------------------------------------------------

# Raw values: what is not on the counted path is written back byte for byte.
_object: msgspec.json.Decoder[dict[str, Any]] = msgspec.json.Decoder(dict[str, msgspec.Raw])
_list = msgspec.json.Decoder(list[msgspec.Raw] | None)
_NULL = msgspec.Raw(b"null")


def _snake(camel: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in camel)


def _key(obj: dict[str, Any], camel: str) -> str | None:
    """The spelling of a field present in ``obj`` (counting refused bodies with both)."""
    if camel in obj:
        return camel
    snake = _snake(camel)
    return snake if snake in obj else None


def _items(obj: dict[str, Any], key: str | None) -> list[msgspec.Raw]:
    if key is None:
        return []
    return _list.decode(obj[key]) or []


def _no_repeats(pairs: list[tuple[str, Any]]) -> None:
    if len({key for key, _ in pairs}) != len(pairs):
        raise Uncuttable("a JSON object repeats a key")


def _cut_json(signal: str, data: bytes, left: _Left) -> bytes:
    json.loads(data, object_pairs_hook=_no_repeats)
    try:
        request = _object.decode(data)
        key = _key(request, _RESOURCE[signal])
        resources = []
        for raw in _items(request, key):
            if left.n <= 0:
                break
            resource = _cut_json_resource(_object.decode(raw), signal, left)
            if resource is not None:
                resources.append(resource)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise BadRequest("invalid JSON body") from exc
    if key is not None:
        request[key] = resources
    return msgspec.json.encode(request)


def _cut_json_resource(resource: dict[str, Any], signal: str, left: _Left) -> dict[str, Any] | None:
    current = _key(resource, _SCOPE[signal])
    deprecated = _key(resource, "deprecated" + _SCOPE[signal][0].upper() + _SCOPE[signal][1:])
    scopes = _items(resource, current)
    counted = current if scopes else deprecated
    kept = []
    for raw in scopes or _items(resource, deprecated):
        if left.n <= 0:
            break
        scope = _cut_json_scope(_object.decode(raw), signal, left)
        if scope is not None:
            kept.append(scope)
    if not kept or counted is None:
        return None
    for name in (current, deprecated):
        if name is not None and name != counted:
            del resource[name]  # the list the backend does not read
    resource[counted] = kept
    return resource


def _cut_json_scope(scope: dict[str, Any], signal: str, left: _Left) -> dict[str, Any] | None:
    key = _key(scope, _LEAF[signal])
    kept: list[Any] = []
    for raw in _items(scope, key):
        if left.n <= 0:
            break
        if signal != "metrics":
            kept.append(raw)
            left.n -= 1
        elif (metric := _cut_json_metric(_object.decode(raw), left)) is not None:
            kept.append(metric)
    if not kept or key is None:
        return None
    scope[key] = kept
    return scope


def _cut_json_metric(metric: dict[str, Any], left: _Left) -> dict[str, Any] | None:
    kind = next((k for camel in _POINT_KINDS if (k := _key(metric, camel)) is not None), None)
    if kind is None or metric[kind] == _NULL:
        return None
    data = _object.decode(metric[kind])
    key = _key(data, "dataPoints")
    points = _items(data, key)[: left.n]
    if not points or key is None:
        return None
    left.n -= len(points)
    data[key] = points
    metric[kind] = data
    return metric
