"""Ingest bodies for the load generator, built once at import so sending costs no CPU.

Every signal the gateway meters comes in three sizes (about 2, 16 and 64 KiB serialized) and
twice, as is and gzip-compressed:

* ``traces``  - ``ExportTraceServiceRequest``: a few services' resources (``service.name``,
  ``k8s.pod.name``, ...), HTTP server, database and client spans with attributes, events
  and the odd error;
* ``logs``    - ``ExportLogsServiceRequest``: records with severities, bodies, attributes
  and trace context;
* ``metrics`` - ``ExportMetricsServiceRequest``: sums, gauges and histograms with
  per-route and per-host data points;
* ``logpush`` - NDJSON lines shaped like an edge log shipper's HTTP request logs.

Content is generated from a fixed seed, so every run sends the same bytes (timestamps aside).
"""

from __future__ import annotations

import functools
import gzip
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

SIZES: dict[str, int] = {"2k": 2 * 1024, "16k": 16 * 1024, "64k": 64 * 1024}
PATHS: dict[str, str] = {
    "traces": "/v1/traces",
    "logs": "/v1/logs",
    "metrics": "/v1/metrics",
    "logpush": "/v1/logpush/http_requests",
}
PROTOBUF = "application/x-protobuf"
NDJSON = "application/x-ndjson"
SEED = 20240601

_SERVICES = ("checkout", "cart", "payments", "search", "frontend", "inventory")
_ROUTES = (
    "/api/orders/{id}",
    "/api/cart",
    "/api/products",
    "/api/search",
    "/api/payments/{id}/capture",
    "/healthz",
)
_METHODS = ("GET", "GET", "GET", "POST", "PUT", "DELETE")
_STATUSES = (200, 200, 200, 200, 201, 204, 304, 404, 500)
_MESSAGES = (
    "order placed",
    "cache miss for product listing",
    "payment authorised",
    "retrying upstream call after timeout",
    "user session refreshed",
    "inventory reservation released",
    "slow query detected",
)


@dataclass(frozen=True, slots=True)
class Body:
    """One ready-to-send request body and the headers that describe it (no auth)."""

    signal: str
    size: str
    gzip: bool
    path: str
    data: bytes
    items: int
    headers: dict[str, str] = field(repr=False)

    @property
    def name(self) -> str:
        """The request name in locust's statistics, e.g. ``/v1/traces [16k gzip]``."""
        return f"{self.path} [{self.size}{' gzip' if self.gzip else ''}]"


def _kv(key: str, value: str | int | float | bool) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _attrs(**values: str | int | float | bool) -> list[KeyValue]:
    """Attributes from keyword arguments, ``__`` standing for the dots of semantic conventions."""
    return [_kv(key.replace("__", "."), value) for key, value in values.items()]


def _resource(rng: random.Random, service: str) -> Resource:
    pod = f"{service}-{rng.randrange(16**6):06x}-{rng.randrange(16**5):05x}"
    return Resource(
        attributes=[
            _kv("service.name", service),
            _kv("service.version", f"1.{rng.randrange(40)}.{rng.randrange(10)}"),
            _kv("service.namespace", "shop"),
            _kv("deployment.environment", "production"),
            _kv("host.name", f"ip-10-0-{rng.randrange(256)}-{rng.randrange(256)}"),
            _kv("k8s.namespace.name", "shop"),
            _kv("k8s.pod.name", pod),
            _kv("telemetry.sdk.name", "opentelemetry"),
            _kv("telemetry.sdk.language", "python"),
            _kv("telemetry.sdk.version", "1.27.0"),
        ]
    )


def _services(size: int, most: int) -> int:
    """Small batches come from one service, as a single SDK's exporter sends them."""
    return min(most, 1 + size // (16 * 1024))


def _fill(
    size: int, byte_size: Callable[[], int], add: Callable[[], None], drop: Callable[[], object]
) -> None:
    """Add items until the message reaches ``size``, then keep whichever count lands closer."""
    before = byte_size()
    while byte_size() < size:
        before = byte_size()
        add()
    if byte_size() - size > size - before:
        drop()


def _span(rng: random.Random, trace_id: bytes, parent: bytes, now_ns: int) -> Span:
    route = rng.choice(_ROUTES)
    method = rng.choice(_METHODS)
    status = rng.choice(_STATUSES)
    start = now_ns - rng.randrange(5_000_000_000)
    duration = rng.randrange(200_000, 250_000_000)
    kind = rng.choice((Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_INTERNAL))
    span = Span(
        trace_id=trace_id,
        span_id=rng.randbytes(8),
        parent_span_id=parent,
        name=f"{method} {route}" if kind != Span.SPAN_KIND_INTERNAL else "SELECT shop.orders",
        kind=kind,
        start_time_unix_nano=start,
        end_time_unix_nano=start + duration,
        attributes=_attrs(
            http__request__method=method,
            http__route=route,
            url__path=route.replace("{id}", str(rng.randrange(10**6))),
            http__response__status_code=status,
            server__address="api.shop.example",
            network__protocol__version="1.1",
            user_agent__original="Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
            db__system="postgresql",
        ),
    )
    span.events.add(
        time_unix_nano=start + duration // 2,
        name="cache.lookup",
        attributes=_attrs(
            cache__hit=rng.random() < 0.7, cache__key=f"product:{rng.randrange(9999)}"
        ),
    )
    if status >= 500:
        span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="upstream error"))
        span.events.add(
            time_unix_nano=start + duration - 1000,
            name="exception",
            attributes=_attrs(
                exception__type="TimeoutError",
                exception__message="upstream did not answer within 250 ms",
            ),
        )
    return span


def build_traces(size: int, rng: random.Random) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    now_ns = time.time_ns()
    for service in rng.sample(_SERVICES, _services(size, 3)):
        resource_spans = request.resource_spans.add(resource=_resource(rng, service))
        resource_spans.schema_url = "https://opentelemetry.io/schemas/1.26.0"
        scope = resource_spans.scope_spans.add()
        scope.scope.name = "opentelemetry.instrumentation.asgi"
        scope.scope.version = "0.48b0"
    scopes = [rs.scope_spans[0] for rs in request.resource_spans]
    trace = {"id": rng.randbytes(16), "root": rng.randbytes(8)}

    def add() -> None:
        if rng.random() < 0.2:
            trace.update(id=rng.randbytes(16), root=rng.randbytes(8))
        rng.choice(scopes).spans.append(_span(rng, trace["id"], trace["root"], now_ns))

    def drop() -> None:
        max(scopes, key=lambda s: len(s.spans)).spans.pop()

    _fill(size, request.ByteSize, add, drop)
    return request


def build_logs(size: int, rng: random.Random) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    now_ns = time.time_ns()
    for service in rng.sample(_SERVICES, _services(size, 2)):
        scope = request.resource_logs.add(resource=_resource(rng, service)).scope_logs.add()
        scope.scope.name = f"{service}.app"
    scopes = [rl.scope_logs[0] for rl in request.resource_logs]
    severities = (
        (SeverityNumber.SEVERITY_NUMBER_INFO, "INFO"),
        (SeverityNumber.SEVERITY_NUMBER_INFO, "INFO"),
        (SeverityNumber.SEVERITY_NUMBER_DEBUG, "DEBUG"),
        (SeverityNumber.SEVERITY_NUMBER_WARN, "WARN"),
        (SeverityNumber.SEVERITY_NUMBER_ERROR, "ERROR"),
    )

    def add() -> None:
        number, text = rng.choice(severities)
        stamp = now_ns - rng.randrange(10_000_000_000)
        route = rng.choice(_ROUTES)
        rng.choice(scopes).log_records.add(
            time_unix_nano=stamp,
            observed_time_unix_nano=stamp + rng.randrange(1_000_000),
            severity_number=number,
            severity_text=text,
            body=AnyValue(string_value=f"{rng.choice(_MESSAGES)} route={route}"),
            attributes=_attrs(
                code__function="handle_request",
                code__filepath="app/handlers.py",
                code__lineno=rng.randrange(20, 900),
                http__route=route,
                enduser__id=f"user-{rng.randrange(10**5)}",
            ),
            trace_id=rng.randbytes(16),
            span_id=rng.randbytes(8),
            flags=1,
        )

    def drop() -> None:
        max(scopes, key=lambda s: len(s.log_records)).log_records.pop()

    _fill(size, request.ByteSize, add, drop)
    return request


CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
_BOUNDS = (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)


def _metric(rng: random.Random, serial: int, now_ns: int) -> Metric:
    start = now_ns - 60_000_000_000
    shape = serial % 3
    metric = Metric()
    points = []
    if shape == 0:
        metric.name, metric.unit = f"http.server.request.count.{serial}", "{request}"
        metric.sum.aggregation_temporality = CUMULATIVE
        metric.sum.is_monotonic = True
        for route in rng.sample(_ROUTES, 3):
            point = metric.sum.data_points.add(as_int=rng.randrange(10**7))
            point.attributes.extend(_attrs(http__route=route, http__request__method="GET"))
            points.append(point)
    elif shape == 1:
        metric.name, metric.unit = f"process.memory.usage.{serial}", "By"
        for pod in range(3):
            point = metric.gauge.data_points.add(as_double=rng.uniform(1e8, 2e9))
            point.attributes.extend(_attrs(k8s__pod__name=f"pod-{pod}", process__pid=4000 + pod))
            points.append(point)
    else:
        metric.name, metric.unit = f"http.server.request.duration.{serial}", "ms"
        histogram = metric.histogram
        histogram.aggregation_temporality = DELTA
        for route in rng.sample(_ROUTES, 2):
            counts = [rng.randrange(500) for _ in range(len(_BOUNDS) + 1)]
            point = histogram.data_points.add(
                count=sum(counts),
                sum=rng.uniform(1e3, 1e6),
                min=rng.uniform(0.5, 5.0),
                max=rng.uniform(2500.0, 9000.0),
                bucket_counts=counts,
                explicit_bounds=_BOUNDS,
            )
            point.attributes.extend(_attrs(http__route=route, http__response__status_code=200))
            points.append(point)
    metric.description = f"{metric.name} as measured by the service"
    for point in points:
        point.start_time_unix_nano = start
        point.time_unix_nano = now_ns
    return metric


def build_metrics(size: int, rng: random.Random) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    now_ns = time.time_ns()
    scope = request.resource_metrics.add(resource=_resource(rng, rng.choice(_SERVICES)))
    metrics = scope.scope_metrics.add()
    metrics.scope.name = "opentelemetry.instrumentation.asgi"

    def add() -> None:
        metrics.metrics.append(_metric(rng, len(metrics.metrics), now_ns))

    _fill(size, request.ByteSize, add, metrics.metrics.pop)
    return request


def _logpush_line(rng: random.Random, now_s: float) -> bytes:
    record = {
        "EdgeStartTimestamp": int((now_s - rng.uniform(0, 60)) * 1e9),
        "RayID": f"{rng.randrange(16**16):016x}",
        "ClientIP": f"203.0.113.{rng.randrange(1, 255)}",
        "ClientCountry": rng.choice(("us", "de", "fr", "jp", "br", "in")),
        "ClientRequestHost": "shop.example",
        "ClientRequestMethod": rng.choice(_METHODS),
        "ClientRequestURI": rng.choice(_ROUTES).replace("{id}", str(rng.randrange(10**6))),
        "ClientRequestUserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/605.1.15",
        "EdgeResponseStatus": rng.choice(_STATUSES),
        "EdgeResponseBytes": rng.randrange(200, 90_000),
        "OriginResponseTime": rng.randrange(1_000_000, 400_000_000),
        "CacheCacheStatus": rng.choice(("hit", "miss", "dynamic", "expired")),
        "WAFAction": "unknown",
    }
    return json.dumps(record, separators=(",", ":")).encode()


def build_logpush(size: int, rng: random.Random) -> list[bytes]:
    now_s = time.time()
    lines: list[bytes] = []
    _fill(
        size,
        lambda: sum(len(line) + 1 for line in lines),
        lambda: lines.append(_logpush_line(rng, now_s)),
        lines.pop,
    )
    return lines


def _count_items(signal: str, message: object) -> int:
    if isinstance(message, ExportTraceServiceRequest):
        return sum(len(s.spans) for rs in message.resource_spans for s in rs.scope_spans)
    if isinstance(message, ExportLogsServiceRequest):
        return sum(len(s.log_records) for rl in message.resource_logs for s in rl.scope_logs)
    if isinstance(message, ExportMetricsServiceRequest):
        total = 0
        for rm in message.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    total += len(getattr(metric, metric.WhichOneof("data")).data_points)
        return total
    raise TypeError(f"no item count for {signal}")


def _variants(signal: str, size: str, raw: bytes, items: int, content_type: str) -> list[Body]:
    plain = {"Content-Type": content_type}
    packed = {**plain, "Content-Encoding": "gzip"}
    # mtime=0: the same body bytes on every run
    zipped = gzip.compress(raw, compresslevel=6, mtime=0)
    return [
        Body(signal, size, False, PATHS[signal], raw, items, plain),
        Body(signal, size, True, PATHS[signal], zipped, items, packed),
    ]


@functools.cache
def catalog() -> dict[str, tuple[Body, ...]]:
    """Every body, by signal: each size once as is and once gzip-compressed."""
    rng = random.Random(SEED)
    builders: dict[str, Callable[[int, random.Random], Message]] = {
        "traces": build_traces,
        "logs": build_logs,
        "metrics": build_metrics,
    }
    bodies: dict[str, list[Body]] = {signal: [] for signal in PATHS}
    for size_name, size in SIZES.items():
        for signal, build in builders.items():
            message = build(size, rng)
            raw = message.SerializeToString()
            items = _count_items(signal, message)
            bodies[signal] += _variants(signal, size_name, raw, items, PROTOBUF)
        lines = build_logpush(size, rng)
        raw = b"\n".join(lines) + b"\n"
        bodies["logpush"] += _variants("logpush", size_name, raw, len(lines), NDJSON)
    return {signal: tuple(found) for signal, found in bodies.items()}


CATALOG = catalog()
