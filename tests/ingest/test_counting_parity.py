"""Counting parity: what the gateway counts equals what the Collector will ingest, or it refuses.

Every body goes through the real MeteringMiddleware in front of a recording service; the count the
gateway charged is compared with ``tests.collector_rules`` over the body that was forwarded.
Covers the tricks of a security review (deprecated fields, duplicate keys, repeated oneofs,
two Content-Types) and ordinary OpenTelemetry SDK batches of each signal.
"""

from __future__ import annotations

import gzip
import json
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.memory import MemoryStore
from policies.model import Limits
from tests import collector_rules
from tests.refusals import code_of

SECRET = "p" * 32
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
PATHS = {"traces": "/v1/traces", "logs": "/v1/logs", "metrics": "/v1/metrics"}


# --- wire building ------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def ld(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def vi(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


SPAN = ld(1, b"\x01" * 16) + ld(2, b"\x02" * 8) + ld(5, b"work")
LOG = vi(2, 9) + ld(5, ld(1, b"hello"))
POINT = b"\x31" + b"\x00" * 8  # NumberDataPoint.as_double = 0


def item(signal: str) -> bytes:
    return SPAN if signal == "traces" else LOG


def points(n: int, kind_extra: bytes = b"") -> bytes:
    return b"".join(ld(1, POINT) for _ in range(n)) + kind_extra


def metric(*kinds: tuple[int, int]) -> bytes:
    """A Metric with a data field per (field number, data points), in this wire order."""
    return ld(1, b"m") + b"".join(ld(number, points(n)) for number, n in kinds)


def request(resources: list[bytes]) -> bytes:
    return b"".join(ld(1, r) for r in resources)


def resource(scopes: list[bytes], deprecated: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    attribute = ld(1, b"host") + ld(2, ld(1, b"a"))  # KeyValue{key, AnyValue{string_value}}
    return (
        ld(1, ld(1, attribute))
        + b"".join(ld(2, s) for s in scopes)
        + b"".join(ld(1000, s) for s in deprecated)
    )


def scope(leaves: list[bytes]) -> bytes:
    return ld(1, ld(1, b"lib")) + b"".join(ld(2, leaf) for leaf in leaves)


# --- the gateway in process -----------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def app(self) -> Starlette:
        async def ingest(request: Request) -> Response:
            self.bodies.append(await request.body())
            return JSONResponse({})

        return Starlette(
            routes=[Route(p, ingest, methods=["POST"]) for p in PATHS.values()]
            + [Route("/v1/logpush/{source}", ingest, methods=["POST"])]
        )


class Env:
    def __init__(self, runtime: Runtime, client: httpx.AsyncClient, recorder: Recorder) -> None:
        self.runtime, self.client, self.recorder = runtime, client, recorder
        self.serial = 0

    async def send(
        self, path: str, body: bytes, headers: list[tuple[str, str]]
    ) -> tuple[httpx.Response, int, bytes | None]:
        """(response, items the gateway counted, forwarded body or None)."""
        self.serial += 1
        org = await self.runtime.store.create_org(f"o{self.serial}", Limits(), None)
        key = f"igk_{org.id}"
        await self.runtime.store.create_key(org.id, self.runtime.hasher(key))
        before = len(self.recorder.bodies)
        response = await self.client.post(
            path, content=body, headers=[("authorization", f"Bearer {key}"), *headers]
        )
        await self.runtime.usage.flush()
        period = self.runtime.usage.current_period(time.time())
        usage = await self.runtime.store.usage(org.id, period.key)
        forwarded = self.recorder.bodies[before] if len(self.recorder.bodies) > before else None
        return response, usage.get("items", 0), forwarded


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    runtime = Runtime(
        Settings(data_dir=tmp_path, key_secret=SECRET, flush_interval=3600),
        store=MemoryStore(),
        spool_dir=None,
    )
    recorder = Recorder()
    await runtime.start()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=runtime.middleware(recorder.app())), base_url="http://gw"
    )
    yield Env(runtime, client, recorder)
    await client.aclose()
    await runtime.close()


def decoded(body: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    return body


async def assert_parity(
    env: Env,
    signal: str,
    fmt: str,
    body: bytes,
    encoding: str | None = None,
    extra: list[tuple[str, str]] | None = None,
) -> str:
    """'counted' when the gateway charged exactly what the Collector ingests, else 'refused'."""
    path = PATHS.get(signal, "/v1/logpush/app")
    content_type = {"protobuf": PROTOBUF, "json": JSON, "ndjson": "application/x-ndjson"}[fmt]
    headers = [("content-type", content_type), *(extra or [])]
    if encoding:
        headers.append(("content-encoding", encoding))
    response, counted, forwarded = await env.send(path, body, headers)
    if response.status_code != 200:
        assert 400 <= response.status_code < 500, response.text
        assert forwarded is None and counted == 0
        return "refused"
    assert forwarded == body  # untouched
    if fmt == "protobuf":
        # What the gateway lets through is well-formed OTLP for the official decoder too.
        OFFICIAL[signal].FromString(decoded(forwarded, encoding))
    try:
        expected = collector_rules.items(signal, fmt, decoded(forwarded, encoding))
    except (collector_rules.Unreadable, ValueError):
        pytest.fail("forwarded a body the Collector cannot read the same way")
    assert counted == expected
    return "counted"


def _official() -> dict[str, Any]:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    return {
        "traces": ExportTraceServiceRequest,
        "logs": ExportLogsServiceRequest,
        "metrics": ExportMetricsServiceRequest,
    }


OFFICIAL = _official()


# --- the tricks ---------------------------------------------------------------------------

PROTOBUF_TRICKS: dict[str, tuple[str, bytes, str]] = {
    "deprecated-scope-spans-only": (
        "traces",
        request([resource([], [scope([SPAN] * 3)])]),
        "counted",
    ),
    "deprecated-scope-logs-only": ("logs", request([resource([], [scope([LOG] * 4)])]), "counted"),
    "deprecated-scope-metrics-only": (
        "metrics",
        request([resource([], [scope([metric((5, 3))])])]),
        "counted",
    ),
    "scope-and-deprecated": (
        "traces",
        request([resource([scope([SPAN])], [scope([SPAN] * 5)])]),
        "counted",
    ),
    "empty-scope-and-deprecated": (
        "traces",
        request([resource([scope([])], [scope([SPAN] * 5)])]),
        "counted",
    ),
    "gauge-twice": ("metrics", request([resource([scope([metric((5, 3), (5, 2))])])]), "counted"),
    "gauge-then-sum": (
        "metrics",
        request([resource([scope([metric((5, 2), (7, 1)), metric((9, 4))])])]),
        "counted",
    ),
    "sum-then-gauge": (
        "metrics",
        request([resource([scope([metric((7, 1), (5, 2))])])]),
        "counted",
    ),
    "unknown-fields-everywhere": (
        "traces",
        ld(77, b"x") + ld(1, vi(99, 1) + ld(2, ld(55, b"y") + ld(2, SPAN) + vi(4, 3))),
        "counted",
    ),
    "spans-split-across-occurrences": (
        "traces",
        request([resource([scope([SPAN]), scope([SPAN, SPAN])]), resource([scope([SPAN])])]),
        "counted",
    ),
    "overlong-length-varint": (
        "traces",
        ld(1, ld(2, b"\x12" + bytes([len(SPAN) | 0x80, 0x00]) + SPAN)),
        "refused",
    ),
    "group-hiding-a-span": ("traces", ld(1, ld(2, b"\x0b" + ld(2, SPAN) + b"\x0c")), "refused"),
    "aliased-field-number": (
        "traces",
        ld(1, ld(2, varint(((2 + 2**32) << 3) | 2) + varint(len(SPAN)) + SPAN)),
        "refused",
    ),
    "spans-as-varint": ("traces", ld(1, ld(2, vi(2, 5))), "refused"),
}


@pytest.mark.parametrize("name", list(PROTOBUF_TRICKS))
async def test_protobuf_tricks_are_counted_like_the_collector_or_refused(
    env: Env, name: str
) -> None:
    signal, body, outcome = PROTOBUF_TRICKS[name]
    assert await assert_parity(env, signal, "protobuf", body) == outcome


def _j(value: str) -> bytes:
    return value.encode()


JSON_TRICKS: dict[str, tuple[str, bytes, str]] = {
    "deprecated-scope-spans": (
        "traces",
        _j('{"resourceSpans":[{"deprecatedScopeSpans":[{"spans":[{},{},{}]}]}]}'),
        "counted",
    ),
    "deprecated-scope-logs-snake": (
        "logs",
        _j('{"resource_logs":[{"deprecated_scope_logs":[{"log_records":[{},{}]}]}]}'),
        "counted",
    ),
    "deprecated-scope-metrics": (
        "metrics",
        _j(
            '{"resourceMetrics":[{"deprecatedScopeMetrics":[{"metrics":'
            '[{"gauge":{"dataPoints":[{},{}]}}]}]}]}'
        ),
        "counted",
    ),
    "duplicate-spans-key": (
        "traces",
        _j('{"resourceSpans":[{"scopeSpans":[{"spans":[{}],"spans":[{},{}]}]}]}'),
        "refused",
    ),
    "duplicate-resource-key": (
        "traces",
        _j('{"resourceSpans":[],"resourceSpans":[{"scopeSpans":[{"spans":[{}]}]}]}'),
        "refused",
    ),
    "duplicate-data-points": (
        "metrics",
        _j(
            '{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"sum":'
            '{"dataPoints":[{}],"data_points":[{},{}]}}]}]}]}'
        ),
        "refused",
    ),
    "both-spellings": (
        "logs",
        _j('{"resourceLogs":[{"scopeLogs":[{"logRecords":[{}],"log_records":[{}]}]}]}'),
        "refused",
    ),
    "escaped-duplicate-key": (
        "traces",
        _j('{"resourceSpans":[{"scopeSpans":[{"sp\\u0061ns":[{},{}],"spans":[{}]}]}]}'),
        "refused",
    ),
    "escaped-single-key": (
        "traces",
        _j('{"resourceSpans":[{"scopeSpans":[{"sp\\u0061ns":[{},{}]}]}]}'),
        "counted",
    ),
    "gauge-twice": (
        "metrics",
        _j(
            '{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"gauge":{"dataPoints":[{}]},'
            '"gauge":{"dataPoints":[{},{}]}}]}]}]}'
        ),
        "refused",
    ),
    "empty-key-hiding-spans": (
        "traces",
        _j('{"resourceSpans":[{"":[{"scopeSpans":[{"spans":[{}]}]}]}]}'),
        "refused",
    ),
    "null-element": (
        "traces",
        _j('{"resourceSpans":[{"scopeSpans":[{"spans":[null]}]}]}'),
        "refused",
    ),
    "trailing-object": (
        "traces",
        _j('{"resourceSpans":[]} {"resourceSpans":[{"scopeSpans":[{"spans":[{}]}]}]}'),
        "refused",
    ),
    "counted-key-names-as-values": (
        "traces",
        _j(
            '{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"spans","attributes":'
            '[{"key":"scopeSpans","value":{"stringValue":"resourceSpans"}}]}]}]}]}'
        ),
        "counted",
    ),
    "counted-key-off-path": (
        "traces",
        _j('{"resourceSpans":[{"scopeSpans":[{"spans":[{"x":{"spans":[1],"spans":[2]}}]}]}]}'),
        "refused",
    ),
    "nulls": (
        "traces",
        _j('{"resourceSpans":[{"scopeSpans":null},{"scopeSpans":[{"spans":null}]}]}'),
        "counted",
    ),
}


@pytest.mark.parametrize("name", list(JSON_TRICKS))
async def test_json_tricks_are_counted_like_the_collector_or_refused(env: Env, name: str) -> None:
    signal, body, outcome = JSON_TRICKS[name]
    assert await assert_parity(env, signal, "json", body) == outcome


async def test_an_ndjson_array_line_counts_its_elements(env: Env) -> None:
    body = b'{"a":1}\n[{"b":1},{"b":2},{"b":3}]\n[]\n'
    assert await assert_parity(env, "logpush", "ndjson", body) == "counted"
    _, counted, _ = await env.send("/v1/logpush/app", body, [("content-type", "text/plain")])
    assert counted == 4


DUAL = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{}]}]}]}'


@pytest.mark.parametrize(
    "headers",
    [
        [("content-type", JSON), ("content-type", PROTOBUF)],
        [("content-type", PROTOBUF), ("content-type", JSON)],
        [("content-type", JSON), ("content-encoding", "identity"), ("content-encoding", "gzip")],
    ],
    ids=["json-then-protobuf", "protobuf-then-json", "two-encodings"],
)
async def test_two_content_types_or_encodings_are_refused(
    env: Env, headers: list[tuple[str, str]]
) -> None:
    response, counted, forwarded = await env.send("/v1/traces", DUAL, headers)
    assert (response.status_code, code_of(response)) == (400, "bad_request")
    assert (counted, forwarded) == (0, None)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd"])
async def test_every_encoding_is_counted_after_decoding(env: Env, encoding: str) -> None:
    raw = request([resource([scope([SPAN] * 7)])])
    packers: dict[str, Callable[[bytes], bytes]] = {
        "gzip": gzip.compress,
        "deflate": zlib.compress,
        "zstd": zstandard.ZstdCompressor().compress,
    }
    body = packers[encoding](raw)
    assert await assert_parity(env, "traces", "protobuf", body, encoding) == "counted"


# --- ordinary SDK batches -----------------------------------------------------------------


def sdk_batches() -> dict[str, bytes]:
    """What the OpenTelemetry Python SDK's exporters send, one batch per signal."""
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    res = Resource.create({"service.name": "parity"})
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=res)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = tracer_provider.get_tracer("parity")
    for i in range(5):
        with tracer.start_as_current_span(f"op-{i}", attributes={"i": i}):
            with tracer.start_as_current_span("child"):
                pass
    logs = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    logger_provider = LoggerProvider(resource=res)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    otel_logger = logger_provider.get_logger("parity")
    from opentelemetry._logs import LogRecord

    for i in range(4):
        otel_logger.emit(LogRecord(body=f"line {i}", attributes={"n": i}))
    reader = InMemoryMetricReader()
    meter = MeterProvider(resource=res, metric_readers=[reader]).get_meter("parity")
    counter = meter.create_counter("requests")
    histogram = meter.create_histogram("latency")
    for i in range(3):
        counter.add(1, {"route": f"/r{i}"})
        histogram.record(i * 1.5, {"route": "/r"})
    data = reader.get_metrics_data()
    assert data is not None
    return {
        "traces": encode_spans(spans.get_finished_spans()).SerializeToString(),
        "logs": encode_logs(logs.get_finished_logs()).SerializeToString(),
        "metrics": encode_metrics(data).SerializeToString(),
    }


SDK = sdk_batches()


@pytest.mark.parametrize("fmt", ["protobuf", "json"])
@pytest.mark.parametrize("signal", list(PATHS))
async def test_ordinary_sdk_batches_are_counted_exactly(env: Env, signal: str, fmt: str) -> None:
    body = SDK[signal]
    if fmt == "json":
        body = json_format.MessageToJson(OFFICIAL[signal].FromString(body)).encode()
    assert collector_rules.items(signal, fmt, body) > 0
    for encoding in (None, "gzip"):
        sent = gzip.compress(body) if encoding else body
        assert await assert_parity(env, signal, fmt, sent, encoding) == "counted"


# --- property: generated bodies with every feature ------------------------------------------

leaf_counts = st.lists(st.integers(0, 3), max_size=3)
json_key_spellings = st.sampled_from(["camel", "snake", "both", "dup"])


@st.composite
def protobuf_bodies(draw: Any) -> tuple[str, bytes]:
    signal = draw(st.sampled_from(list(PATHS)))
    resources = []
    for _ in range(draw(st.integers(0, 3))):

        def scopes() -> list[bytes]:
            out = []
            for n in draw(leaf_counts):
                if signal == "metrics":
                    kinds = draw(
                        st.lists(
                            st.tuples(st.sampled_from([5, 7, 9, 10, 11]), st.integers(0, 3)),
                            max_size=3,
                        )
                    )
                    out.append(scope([metric(*kinds) for _ in range(n)]))
                else:
                    out.append(scope([item(signal)] * n))
            return out

        resources.append(resource(scopes(), scopes() if draw(st.booleans()) else []))
    body = request(resources)
    if draw(st.booleans()):
        body = ld(99, b"future") + body  # an unknown field before everything
    return signal, body


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=protobuf_bodies(), encoding=st.sampled_from([None, "gzip", "zstd"]))
async def test_generated_protobuf_bodies_keep_parity(
    env: Env, case: tuple[str, bytes], encoding: str | None
) -> None:
    signal, raw = case
    body = (
        gzip.compress(raw)
        if encoding == "gzip"
        else (zstandard.ZstdCompressor().compress(raw) if encoding == "zstd" else raw)
    )
    assert await assert_parity(env, signal, "protobuf", body, encoding) == "counted"


def _obj(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f'"{k}":{v}' for k, v in pairs) + "}"


def _field(draw: Any, snake: str, values: list[str]) -> list[tuple[str, str]]:
    head, *rest = snake.split("_")
    camel = head + "".join(p.title() for p in rest)
    style = draw(json_key_spellings)
    array = "[" + ",".join(values) + "]"
    if style == "camel" or (camel == snake and style != "dup"):
        return [(camel, array)]
    if style == "snake":
        return [(snake, array)]
    if style == "both":
        half = len(values) // 2
        return [
            (camel, "[" + ",".join(values[:half]) + "]"),
            (snake, "[" + ",".join(values[half:]) + "]"),
        ]
    return [(camel, array), (camel, "[{}]")]


@st.composite
def json_bodies(draw: Any) -> tuple[str, bytes]:
    signal = draw(st.sampled_from(list(PATHS)))
    leaf = collector_rules.LEAF[signal]
    scope_key = collector_rules.SCOPE[signal]

    def scopes() -> list[str]:
        out = []
        for n in draw(leaf_counts):
            if signal == "metrics":
                kind = draw(st.sampled_from(["gauge", "sum", "histogram", "summary"]))
                leaves = [
                    _obj(
                        [
                            (
                                kind,
                                _obj(_field(draw, "data_points", ["{}"] * draw(st.integers(0, 3)))),
                            )
                        ]
                    )
                ] * n
            else:
                leaves = ["{}"] * n
            out.append(_obj(_field(draw, leaf, leaves)))
        return out

    resources = []
    for _ in range(draw(st.integers(0, 3))):
        pairs = _field(draw, scope_key, scopes())
        if draw(st.booleans()):
            pairs += _field(draw, "deprecated_" + scope_key, scopes())
        resources.append(_obj(pairs))
    return signal, _obj(_field(draw, collector_rules.RESOURCE[signal], resources)).encode()


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=json_bodies())
async def test_generated_json_bodies_keep_parity(env: Env, case: tuple[str, bytes]) -> None:
    signal, body = case
    json.loads(body)  # the generator writes valid JSON
    await assert_parity(env, signal, "json", body)


def zlib_protobuf_polyglot(spans: int) -> bytes:
    """A valid zlib stream whose inflated bytes hold 0 spans and whose raw bytes, read as
    OTLP protobuf, hold ``spans`` spans (found by an adversarial review)."""
    import struct

    payload = ld(1, ld(2, ld(2, b"") * spans))
    inner = 1 + len(payload) + 2
    data = b"\x7a" + varint(inner) + b"\x00" + payload + b"\x7a\x04"
    assert len(varint(inner)) == 2
    # 78 01 is field 15 varint 1; the stored block header 79 is field 15 fixed64 (it swallows
    # LEN, NLEN and 4 bytes of data); the Adler-32 trailer is the content of the last field.
    return (
        b"\x78\x01\x79"
        + struct.pack("<HH", len(data), len(data) ^ 0xFFFF)
        + data
        + struct.pack(">I", zlib.adler32(data))
    )


def test_the_polyglot_really_is_both() -> None:
    body = zlib_protobuf_polyglot(500)
    assert collector_rules.protobuf_items("traces", zlib.decompress(body)) == 0
    assert collector_rules.protobuf_items("traces", body) == 500


@pytest.mark.parametrize(
    "headers",
    [
        [("content-encoding", "deflate"), ("connection", "content-encoding")],
        [("content-encoding", "zlib"), ("connection", "keep-alive, Content-Encoding")],
        [("content-encoding", "deflate"), ("connection", "content-type")],
        [("content-encoding", "Deflate")],
        [("content-encoding", "ZLIB")],
        [("content-encoding", "x-gzip")],
    ],
    ids=[
        "connection-drops-encoding",
        "connection-list",
        "connection-drops-type",
        "Deflate",
        "ZLIB",
        "x-gzip",
    ],
)
async def test_a_body_decoded_here_is_never_read_raw_there(
    env: Env, headers: list[tuple[str, str]]
) -> None:
    # Regression: Connection: content-encoding made the backend read the raw bytes (5000 spans)
    # of a body charged as inflated (0); a coding the backend spells otherwise would too.
    body = zlib_protobuf_polyglot(500)
    response, counted, forwarded = await env.send(
        "/v1/traces", body, [("content-type", PROTOBUF), *headers]
    )
    assert 400 <= response.status_code < 500
    assert (counted, forwarded) == (0, None)


async def test_the_same_polyglot_with_its_coding_kept_is_counted_as_inflated(env: Env) -> None:
    body = zlib_protobuf_polyglot(500)
    assert await assert_parity(env, "traces", "protobuf", body, "deflate") == "counted"
