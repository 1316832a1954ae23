"""Count the items of a decoded body exactly as the OpenTelemetry Collector will ingest them.

The rule: whatever the backend would ingest from a body is counted, or the request is refused.

Protobuf is parsed with skeleton messages that hold only the counted path (request ->
resource -> scope -> item), the items kept as unparsed bytes, so nothing else is decoded.
Like the Collector's pdata: ``deprecated_scope_*`` (field 1000) counts when ``scope_*`` is
empty (it migrates them), and a metric's ``data`` oneof seen more than once on the wire
counts its last occurrence only (pdata replaces, never merges).

OTLP/JSON is decoded with typed msgspec structs for the counted path (everything else is
skipped unallocated). The Collector appends repeated keys where Python keeps the last, so an
object with a duplicate key on the counted path is refused, and so is one holding both
spellings of a field. NDJSON counts non-blank lines, and a line that is an array counts its
elements.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import msgspec
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from gateway.errors import BadRequest, PayloadTooLarge

SIGNALS = ("traces", "logs", "metrics")
_LEAF = {"traces": "spans", "logs": "log_records", "metrics": "metrics"}
_SCOPE = {"traces": "scope_spans", "logs": "scope_logs", "metrics": "scope_metrics"}
_RESOURCE = {"traces": "resource_spans", "logs": "resource_logs", "metrics": "resource_metrics"}
# Metric.data oneof: gauge, sum, histogram, exponential_histogram, summary; data_points = 1.
_METRIC_DATA = (5, 7, 9, 10, 11)


def _skeletons() -> dict[str, Any]:
    """Message classes for the counted path: every OTLP field of each level is declared (the
    uncounted ones as repeated bytes or varints), so a canonical body re-encodes to its own
    size, and the items (spans, log records, data points) stay unparsed bytes."""
    file = descriptor_pb2.FileDescriptorProto(
        name="gateway/counting.proto", package="gateway.ingest.counting", syntax="proto3"
    )
    field = descriptor_pb2.FieldDescriptorProto
    kinds = {"bytes": field.TYPE_BYTES, "varint": field.TYPE_UINT64}

    def message(name: str, fields: list[tuple[int, str]]) -> None:
        proto = file.message_type.add(name=name)
        for number, kind in fields:
            f = proto.field.add(name=f"f{number}", number=number, label=field.LABEL_REPEATED)
            if kind in kinds:
                f.type = kinds[kind]
            else:
                f.type = field.TYPE_MESSAGE
                f.type_name = f".gateway.ingest.counting.{kind}"

    # ScopeSpans/ScopeLogs/ScopeMetrics: scope = 1, items = 2, schema_url = 3.
    message("Scope", [(1, "bytes"), (2, "bytes"), (3, "bytes")])
    # Resource*: resource = 1, scope_* = 2, schema_url = 3, deprecated_scope_* = 1000.
    message("Resource", [(1, "bytes"), (2, "Scope"), (3, "bytes"), (1000, "Scope")])
    message("Request", [(1, "Resource")])
    # Gauge, Sum, Histogram, ExponentialHistogram, Summary: data_points = 1, then scalars.
    message("Points", [(1, "bytes"), (2, "varint"), (3, "varint")])
    # Metric: name, description, unit, the data oneof, metadata.
    metric = [(1, "bytes"), (2, "bytes"), (3, "bytes"), (12, "bytes")]
    message("Metric", metric + [(n, "Points") for n in _METRIC_DATA])
    message("MetricScope", [(1, "bytes"), (2, "Metric"), (3, "bytes")])
    message(
        "MetricResource", [(1, "bytes"), (2, "MetricScope"), (3, "bytes"), (1000, "MetricScope")]
    )
    message("MetricRequest", [(1, "MetricResource")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"gateway.ingest.counting.{name}")
        )
        for name in ("Request", "MetricRequest")
    }


_PROTO = _skeletons()
_DATA_FIELDS = tuple(f"f{n}" for n in _METRIC_DATA)


def count(signal: str, fmt: str, data: bytes, max_items: int) -> int:
    """Items in a decoded body; 413 above ``max_items``, 400 for what cannot be counted."""
    if fmt == "ndjson":
        items = _count_lines(data, max_items)
    elif fmt == "protobuf":
        items = _count_protobuf(signal, data)
    elif fmt == "json":
        items = _count_json(signal, data, max_items)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    if items > max_items:
        raise PayloadTooLarge(f"more than {max_items} items in one request")
    return items


# --- protobuf -------------------------------------------------------------------------------


def _count_protobuf(signal: str, data: bytes) -> int:
    try:
        request = _PROTO["MetricRequest" if signal == "metrics" else "Request"].FromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise BadRequest(f"invalid OTLP {signal} protobuf body") from exc
    request.DiscardUnknownFields()
    if request.ByteSize() != len(data):
        # Unknown fields, groups or a non-canonical encoding on the counted path: read the wire.
        return _count_wire(signal, data)
    if signal != "metrics":
        return sum(
            len(scope.f2) for resource in request.f1 for scope in (resource.f2 or resource.f1000)
        )
    points = 0
    for resource in request.f1:
        for scope in resource.f2 or resource.f1000:
            for metric in scope.f2:
                seen = [f for f in _DATA_FIELDS if len(getattr(metric, f))]
                if not seen:
                    continue
                if len(seen) > 1:
                    # Two kinds of data in one metric: only the wire order says which is last.
                    return _count_wire(signal, data)
                points += len(getattr(metric, seen[0])[-1].f1)
    return points


_MAX_FIELD = (1 << 29) - 1
_LENGTH, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5


def wire_fields(data: memoryview, counted: frozenset[int]) -> Iterator[tuple[int, int, int, int]]:
    """Every field as (number, start, value start, end) in wire order, checking the whole
    message strictly: groups, field numbers out of range, overlong varints and a counted field
    of another wire type are refused (a backend that reads them differently could find items)."""
    i, end = 0, len(data)
    while i < end:
        start = i
        tag, i = _varint(data, i)
        number, wire = tag >> 3, tag & 7
        if not 1 <= number <= _MAX_FIELD:
            raise BadRequest("invalid OTLP protobuf body: field number out of range")
        if number in counted and wire != _LENGTH:
            raise BadRequest(f"invalid OTLP protobuf body: field {number} has the wrong type")
        value = i
        if wire == _LENGTH:
            size, value = _varint(data, i)
            if size > end - value:
                raise BadRequest("invalid OTLP protobuf body: truncated field")
            i = value + size
        elif wire == _VARINT:
            _, i = _varint(data, i)
        elif wire in (_FIXED64, _FIXED32):
            i += 8 if wire == _FIXED64 else 4
        else:
            raise BadRequest("invalid OTLP protobuf body: groups are not accepted")
        yield number, start, value, i
    if i != end:
        raise BadRequest("invalid OTLP protobuf body: truncated field")


def _fields(data: memoryview, counted: frozenset[int]) -> Iterator[tuple[int, memoryview]]:
    """The length-delimited fields among ``counted`` in wire order, the message checked."""
    for number, _, value, end in wire_fields(data, counted):
        if number in counted:
            yield number, data[value:end]


def _varint(data: memoryview, i: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if i >= len(data):
            break
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value >= 1 << 64 or (byte == 0 and shift):
                break  # overlong or overflowing: another reader could take other bits
            return value, i
    raise BadRequest("invalid OTLP protobuf body: bad varint")


_ONE, _TWO, _SCOPES = frozenset({1}), frozenset({2}), frozenset({2, 1000})
_METRIC_KINDS = frozenset(_METRIC_DATA)


def _count_wire(signal: str, data: bytes) -> int:
    """The exact count from the wire, with the Collector's rules, for bodies the fast path
    cannot vouch for."""
    items = 0
    for _, resource in _fields(memoryview(data), _ONE):
        scopes: list[memoryview] = []
        deprecated: list[memoryview] = []
        for number, scope in _fields(resource, _SCOPES):
            (scopes if number == 2 else deprecated).append(scope)
        for scope in scopes or deprecated:
            for _, item in _fields(scope, _TWO):
                if signal != "metrics":
                    items += 1
                    continue
                last = None
                for _, kind in _fields(item, _METRIC_KINDS):
                    last = kind
                if last is not None:
                    items += sum(1 for _ in _fields(last, _ONE))
    return items


# --- OTLP/JSON ------------------------------------------------------------------------------


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


class _Object(msgspec.Struct):
    """Any JSON object; its fields are skipped, not decoded."""


_UNSET: Any = msgspec.UNSET
_POINT_KINDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


def _spellings(snake: str) -> tuple[str, ...]:
    camel = _camel(snake)
    return (camel,) if camel == snake else (camel, snake)


_PATH_FIELDS = (*_LEAF.values(), *_RESOURCE.values(), "data_points")
_PATH_FIELDS += (*_SCOPE.values(), *("deprecated_" + name for name in _SCOPE.values()))
_SPELLINGS = {name: _spellings(name) for name in _PATH_FIELDS}


def _struct(name: str, fields: dict[str, Any]) -> type[msgspec.Struct]:
    """A struct with every spelling of each field as its own attribute, UNSET when absent."""
    spec = []
    for snake, kind in fields.items():
        for spelling in _spellings(snake):
            spec.append((spelling, list[kind] | None | msgspec.UnsetType, _UNSET))  # type: ignore[valid-type]
    return msgspec.defstruct(name, spec)


def _json_types() -> dict[str, tuple[type[msgspec.Struct], tuple[str, ...]]]:
    types: dict[str, tuple[type[msgspec.Struct], tuple[str, ...]]] = {}
    points = _struct("Points", {"data_points": _Object})
    metric_spec = []
    for kind in _POINT_KINDS:
        for spelling in _spellings(kind):
            metric_spec.append((spelling, points | None | msgspec.UnsetType, _UNSET))
    metric = msgspec.defstruct("Metric", metric_spec)
    for signal in SIGNALS:
        leaf = metric if signal == "metrics" else _Object
        scope = _struct("Scope", {_LEAF[signal]: leaf})
        resource = _struct(
            "Resource", {_SCOPE[signal]: scope, "deprecated_" + _SCOPE[signal]: scope}
        )
        request = _struct("Request", {_RESOURCE[signal]: resource})
        names = {
            spelling
            for snake in (_RESOURCE[signal], _SCOPE[signal], "deprecated_" + _SCOPE[signal])
            + (
                (_LEAF[signal],)
                if signal != "metrics"
                else ("metrics", "data_points", *_POINT_KINDS)
            )
            for spelling in _spellings(snake)
        }
        types[signal] = (request, tuple(sorted(names)))
    return types


def _endings(keys: tuple[str, ...]) -> tuple[bytes, ...]:
    """Byte strings that end every ``"key"`` of ``keys`` (their last 4 characters and the
    quote): counted in one scan each, they are an upper bound of the keys' count."""
    ends = {(f'"{key}"' if len(key) <= 4 else key[-4:] + '"').encode() for key in keys}
    return tuple(sorted(ends))


_JSON = {
    signal: (msgspec.json.Decoder(kind), keys, _endings(keys))
    for signal, (kind, keys) in _json_types().items()
}
# The Collector's JSON reader stops reading an object at an empty key and then misreads what
# follows, which can surface items that a standard parser skips: such objects are refused.
_EMPTY_KEY = re.compile(rb'(?<!\\)""\s*:')
# Its prefilter: a compiled search for two quotes runs twice as fast as ``in`` on JSON.
_TWO_QUOTES = re.compile(rb'""')
# A key spelled with \u escapes could decode to a counted key the byte counts cannot see.
_ESCAPED_KEY = re.compile(rb'"(?:[A-Za-z_]|\\u[0-9A-Fa-f]{4})*\\u[0-9A-Fa-f]{4}[^"]*"\s*:')


class _Walk:
    """Counts items and the counted keys present on the path (to check against the raw body).

    Every container on the path counts against ``budget`` before it is looked into, so no
    body makes this loop run more than ``max_items`` times.
    """

    __slots__ = ("budget", "items", "keys")

    def __init__(self, budget: int) -> None:
        self.items = 0
        self.keys = 0
        self.budget = budget

    def field(self, obj: Any, snake: str) -> list[Any]:
        spellings = _SPELLINGS[snake]
        present = [v for s in spellings if (v := getattr(obj, s)) is not _UNSET]
        self.keys += len(present)
        if len(present) > 1:
            raise BadRequest(f"both {spellings[0]} and {snake} are set")
        if not present or present[0] is None:
            return []
        found: list[Any] = present[0]
        self.budget -= len(found)
        if self.budget < 0:
            raise PayloadTooLarge("more objects on the counted path than items allowed")
        return found


def _count_json(signal: str, data: bytes, max_items: int) -> int:
    decoder, keys, endings = _JSON[signal]
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest("JSON body is not valid UTF-8") from exc
    if _TWO_QUOTES.search(data) and _EMPTY_KEY.search(data):
        raise BadRequest("an empty object key is not accepted in OTLP JSON")
    try:
        request = decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"unexpected value in OTLP JSON at {_where(exc)}") from exc
    except (msgspec.DecodeError, RecursionError) as exc:
        raise BadRequest("invalid JSON body") from exc
    walk = _Walk(max_items)
    leaf, scope_field = _LEAF[signal], _SCOPE[signal]
    for resource in walk.field(request, _RESOURCE[signal]):
        scopes = walk.field(resource, scope_field)
        deprecated = walk.field(resource, "deprecated_" + scope_field)
        for scope in scopes or deprecated:
            leaves = walk.field(scope, leaf)
            if signal != "metrics":
                walk.items += len(leaves)
                continue
            for metric in leaves:
                walk.items += _json_points(walk, metric)
    # Every counted key the walk saw is in the body at least once: an upper bound that equals
    # the walk's count proves none is there twice (a few scans; each key's own, if not).
    raw = sum(data.count(ending) for ending in endings)
    if raw != walk.keys:
        raw = sum(data.count(b'"' + key.encode() + b'"') for key in keys)
    # A backslash is rare and found at memchr speed; "\\u" alone scans at a tenth of it.
    if raw != walk.keys or (b"\\" in data and b"\\u" in data and _ESCAPED_KEY.search(data)):
        _refuse_duplicates(data, frozenset(keys))
    return walk.items


def _json_points(walk: _Walk, metric: Any) -> int:
    kinds = [
        (kind, v)
        for kind in _POINT_KINDS
        for s in _spellings(kind)
        if (v := getattr(metric, s)) is not _UNSET
    ]
    walk.keys += len(kinds)
    if len(kinds) > 1:
        raise BadRequest(f"a metric cannot hold both {kinds[0][0]} and {kinds[1][0]}")
    if not kinds or kinds[0][1] is None:
        return 0
    points = walk.field(kinds[0][1], "data_points")
    walk.budget += len(points)  # points are the items; they count once, below
    return len(points)


def _where(exc: msgspec.ValidationError) -> str:
    """Where the body went wrong, as the JSON path msgspec names; never a value from it."""
    text = str(exc)
    return text[text.index("at `") + 4 : -1][:60] if text.endswith("`") and "at `" in text else "$"


def _refuse_duplicates(data: bytes, counted: frozenset[str]) -> None:
    """The slow check, for bodies where a counted key is spelled oddly or appears off-path."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) != len(items):
            seen: set[str] = set()
            for key, _ in items:
                if key in seen and key in counted:
                    raise BadRequest(f"duplicate key {key} in one object")
                seen.add(key)
        return obj

    try:
        json.loads(data, object_pairs_hook=pairs)
    except (ValueError, RecursionError) as exc:
        raise BadRequest("invalid JSON body") from exc


# --- NDJSON ---------------------------------------------------------------------------------

_raw_decoder = msgspec.json.Decoder(msgspec.Raw)
_array_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_BLANK = b" \t\r\x0b\x0c"


def _count_lines(data: bytes, max_items: int) -> int:
    lines = data.count(b"\n") + 1
    if lines > max_items + 1:
        raise PayloadTooLarge(f"more than {max_items} lines in one request")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = data.count(b"\n", 0, exc.start) + 1
        raise BadRequest(f"line {number} is not valid UTF-8") from exc
    items = 0
    for number, raw in enumerate(data.split(b"\n"), 1):
        line = raw.strip(_BLANK)
        if not line:
            continue
        try:
            if line[:1] == b"[":
                items += len(_array_decoder.decode(line))
            else:
                _raw_decoder.decode(line)
                items += 1
        except (msgspec.DecodeError, RecursionError) as exc:
            raise BadRequest(f"line {number} is not valid JSON") from exc
    return items
