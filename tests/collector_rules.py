"""An independent count of what the OpenTelemetry Collector ingests from an OTLP body.

Written for the tests from the Collector's pdata rules (not from the gateway's code):
- protobuf: repeated fields append; ``deprecated_scope_*`` (field 1000) is used only when
  ``scope_*`` is empty; the ``Metric.data`` oneof keeps its last occurrence (no merge);
  unknown fields are skipped.
- JSON: both spellings of a key and repeated keys append; ``null`` arrays are empty and a
  ``null`` element is an empty, counted element; the metric oneof keeps its last key.
Raises ``Unreadable`` where the Collector would refuse the body or where its reading is
undefined enough that the gateway must refuse it.
"""

from __future__ import annotations

import json
from typing import Any

LEAF = {"traces": "spans", "logs": "log_records", "metrics": "metrics"}
SCOPE = {"traces": "scope_spans", "logs": "scope_logs", "metrics": "scope_metrics"}
RESOURCE = {"traces": "resource_spans", "logs": "resource_logs", "metrics": "resource_metrics"}
POINT_KINDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")
POINT_FIELDS = (5, 7, 9, 10, 11)


class Unreadable(Exception):
    pass


# --- protobuf -----------------------------------------------------------------------------


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if i >= len(data):
            raise Unreadable("truncated varint")
        b = data[i]
        result |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return result, i
        shift += 7
        if shift >= 64:
            raise Unreadable("long varint")


def wire_fields(data: bytes) -> list[tuple[int, int, bytes | int]]:
    """(field, wire type, value) in order; groups are Unreadable (the Collector misreads them)."""
    out: list[tuple[int, int, bytes | int]] = []
    i = 0
    while i < len(data):
        tag, i = _read_varint(data, i)
        field, wire = tag >> 3, tag & 7
        if field == 0 or field >= 1 << 29:
            raise Unreadable("field number")
        if wire == 0:
            value, i = _read_varint(data, i)
            out.append((field, wire, value))
        elif wire == 1:
            out.append((field, wire, data[i : i + 8]))
            i += 8
        elif wire == 5:
            out.append((field, wire, data[i : i + 4]))
            i += 4
        elif wire == 2:
            size, i = _read_varint(data, i)
            if i + size > len(data):
                raise Unreadable("truncated")
            out.append((field, wire, data[i : i + size]))
            i += size
        else:
            raise Unreadable("group")
    if i != len(data):
        raise Unreadable("truncated")
    return out


def _messages(data: bytes, number: int) -> list[bytes]:
    found = []
    for field, wire, value in wire_fields(data):
        if field == number:
            if wire != 2:
                raise Unreadable("wrong wire type")
            assert isinstance(value, bytes)
            found.append(value)
    return found


def protobuf_items(signal: str, data: bytes) -> int:
    items = 0
    for resource in _messages(data, 1):
        scopes = _messages(resource, 2) or _messages(resource, 1000)
        for scope in scopes:
            for item in _messages(scope, 2):
                if signal != "metrics":
                    items += 1
                    continue
                last = None
                for field, wire, value in wire_fields(item):
                    if field in POINT_FIELDS:
                        if wire != 2:
                            raise Unreadable("wrong wire type")
                        last = value
                if last is not None:
                    assert isinstance(last, bytes)
                    items += len(_messages(last, 1))
    return items


# --- JSON ---------------------------------------------------------------------------------


def _spellings(snake: str) -> tuple[str, ...]:
    head, *rest = snake.split("_")
    camel = head + "".join(p.title() for p in rest)
    return (camel,) if camel == snake else (camel, snake)


def _pairs(obj: Any) -> list[tuple[str, Any]]:
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise Unreadable("not an object")
    return obj


def _array(pairs: list[tuple[str, Any]], snake: str) -> list[Any]:
    out: list[Any] = []
    for key, value in pairs:
        if key in _spellings(snake):
            if value is None:
                continue
            if not isinstance(value, list) or (value and isinstance(value[0], tuple)):
                raise Unreadable("not an array")
            out.extend(value)
    return out


def json_items(signal: str, data: bytes) -> int:
    # Objects become lists of pairs, so repeated keys are all kept, in order.
    doc = json.loads(data, object_pairs_hook=lambda pairs: pairs)
    items = 0
    scope_key = SCOPE[signal]
    for resource in _array(_pairs(doc), RESOURCE[signal]):
        resource_pairs = _pairs(resource)
        scopes = _array(resource_pairs, scope_key) or _array(
            resource_pairs, "deprecated_" + scope_key
        )
        for scope in scopes:
            for item in _array(_pairs(scope), LEAF[signal]):
                if signal != "metrics":
                    items += 1
                    continue
                data_value: Any = None
                for key, value in _pairs(item):
                    if any(key in _spellings(kind) for kind in POINT_KINDS):
                        data_value = value if value is not None else []
                items += len(_array(_pairs(data_value), "data_points"))
    return items


def ndjson_items(data: bytes) -> int:
    items = 0
    for line in data.split(b"\n"):
        line = line.strip()
        if not line:
            continue
        value = json.loads(line)
        items += len(value) if isinstance(value, list) else 1
    return items


def items(signal: str, fmt: str, data: bytes) -> int:
    if fmt == "protobuf":
        return protobuf_items(signal, data)
    if fmt == "json":
        return json_items(signal, data)
    return ndjson_items(data)
