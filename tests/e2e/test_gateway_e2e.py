"""The real gateway process between real clients (the OpenTelemetry SDK, httpx) and a real upstream.

Every test makes an org and key of its own through the admin API, so tests share the
module's gateway process without sharing state.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from google.rpc import code_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from gateway.responses import decode_status
from tests.refusals import code_of, error_of

if TYPE_CHECKING:
    from conftest import Gateway, Upstream

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
RESOURCE = Resource.create({"service.name": "e2e"})


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def trace_json(*names: str) -> bytes:
    """OTLP/JSON with unusual spacing, so that any re-serialization would show."""
    spans = [
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": f"eee19b7ec3c1b17{i}", "name": n}
        for i, n in enumerate(names)
    ]
    request = {"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}
    return json.dumps(request, indent=3).encode()


def trace_proto(*names: str) -> bytes:
    spans = [
        Span(trace_id=bytes(16), span_id=i.to_bytes(8, "big"), name=n)
        for i, n in enumerate(names, start=1)
    ]
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
    )
    body: bytes = request.SerializeToString()
    return body


def span_names(bodies: list[bytes]) -> list[str]:
    return [
        span.name
        for body in bodies
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]


def wait_for(check: Callable[[], bool], timeout: float = 15.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def send_json(client: httpx.Client, key: str) -> httpx.Response:
    return client.post(
        "/v1/traces", content=trace_json("x"), headers={"Content-Type": JSON, "X-Ingest-Key": key}
    )


def assert_key_hidden(upstream: Upstream, org_id: str, key: str) -> None:
    seen = upstream.received(org_id)
    assert seen
    for request in seen:
        assert key not in request.query
        for name, value in request.headers:
            assert key not in value, f"the ingest key leaked upstream in {name}"
        assert request.header("x-ingest-key") is None
        org_headers = [v for n, v in request.headers if n.lower() == "x-gateway-org-id"]
        assert org_headers == [org_id]


# 1. The OpenTelemetry SDK through the gateway


def test_sdk_traces_reach_upstream_and_are_metered(gateway: Gateway, upstream: Upstream) -> None:
    org_id, key = gateway.new_tenant("sdk-traces")
    exporter = OTLPSpanExporter(
        endpoint=f"{gateway.url}/v1/traces",
        headers={"Authorization": f"Bearer {key}"},
        compression=Compression.NoCompression,
        timeout=5,
    )
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("e2e")
    names = ["checkout", "charge-card", "send-receipt"]
    for name in names:
        tracer.start_span(name).end()
    assert provider.force_flush()
    provider.shutdown()

    seen = upstream.received(org_id, "/v1/traces")
    assert seen and all(r.method == "POST" for r in seen)
    assert all(r.header("content-type") == PROTOBUF for r in seen)
    assert sorted(span_names([r.body for r in seen])) == sorted(names)
    assert_key_hidden(upstream, org_id, key)
    usage = gateway.usage(org_id)
    assert usage["requests"] == len(seen) >= 1
    assert usage["items"] == len(names)
    assert usage["bytes"] == sum(len(r.body) for r in seen)


def test_sdk_logs_reach_upstream_and_are_metered(gateway: Gateway, upstream: Upstream) -> None:
    org_id, key = gateway.new_tenant("sdk-logs")
    exporter = OTLPLogExporter(
        endpoint=f"{gateway.url}/v1/logs",
        headers={"Authorization": f"Bearer {key}"},
        compression=Compression.NoCompression,
        timeout=5,
    )
    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("e2e")
    logger.emit(body="payment accepted", severity_text="INFO")
    logger.emit(body="receipt sent", severity_text="INFO")
    assert provider.force_flush()
    provider.shutdown()

    seen = upstream.received(org_id, "/v1/logs")
    assert seen
    records = [
        record.body.string_value
        for r in seen
        for rl in ExportLogsServiceRequest.FromString(r.body).resource_logs
        for sl in rl.scope_logs
        for record in sl.log_records
    ]
    assert sorted(records) == ["payment accepted", "receipt sent"]
    assert_key_hidden(upstream, org_id, key)
    usage = gateway.usage(org_id)
    assert usage["requests"] == len(seen)
    assert usage["items"] == len(records) > 0


def test_sdk_metrics_reach_upstream_and_are_metered(gateway: Gateway, upstream: Upstream) -> None:
    org_id, key = gateway.new_tenant("sdk-metrics")
    exporter = OTLPMetricExporter(
        endpoint=f"{gateway.url}/v1/metrics",
        headers={"Authorization": f"Bearer {key}"},
        compression=Compression.NoCompression,
        timeout=5,
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    meter = provider.get_meter("e2e")
    meter.create_counter("orders").add(3, {"region": "eu"})
    meter.create_histogram("latency_ms").record(12.5)
    assert provider.force_flush()
    provider.shutdown()

    seen = upstream.received(org_id, "/v1/metrics")
    assert seen
    metric_names = {
        metric.name
        for r in seen
        for rm in ExportMetricsServiceRequest.FromString(r.body).resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert {"orders", "latency_ms"} <= metric_names
    assert_key_hidden(upstream, org_id, key)
    usage = gateway.usage(org_id)
    assert usage["requests"] == len(seen)
    assert usage["items"] > 0


# 2. Raw OTLP over HTTP


def test_json_body_is_forwarded_byte_identical(
    gateway: Gateway, upstream: Upstream, client: httpx.Client
) -> None:
    org_id, key = gateway.new_tenant("raw-json")
    body = trace_json("a", "b")
    response = client.post(
        "/v1/traces",
        content=body,
        headers={
            "Content-Type": JSON,
            "X-Ingest-Key": key,
            # A client must not be able to claim another org upstream.
            "X-Gateway-Org-Id": "org_someone_else",
        },
    )
    assert response.status_code == 200, response.text
    (seen,) = upstream.received(org_id)
    assert (seen.method, seen.path, seen.body) == ("POST", "/v1/traces", body)
    assert seen.header("content-type") == JSON
    assert_key_hidden(upstream, org_id, key)
    assert upstream.received("org_someone_else") == []
    assert gateway.usage(org_id) == {"requests": 1, "bytes": len(body), "items": 2}


def test_gzip_body_is_forwarded_compressed_and_metered_decompressed(
    gateway: Gateway, upstream: Upstream, client: httpx.Client
) -> None:
    org_id, key = gateway.new_tenant("raw-gzip")
    raw = trace_proto(*(f"span-{i % 3}" for i in range(50)))
    compressed = gzip.compress(raw, mtime=0)
    assert len(compressed) < len(raw)
    response = client.post(
        "/v1/traces",
        content=compressed,
        headers={"Content-Type": PROTOBUF, "Content-Encoding": "gzip", "X-Ingest-Key": key},
    )
    assert response.status_code == 200, response.text
    (seen,) = upstream.received(org_id)
    assert seen.body == compressed
    assert seen.header("content-encoding") == "gzip"
    assert seen.header("content-type") == PROTOBUF
    assert gateway.usage(org_id) == {"requests": 1, "bytes": len(raw), "items": 50}


# 3. Logpush


def test_logpush_strips_the_key_from_the_query(
    gateway: Gateway, upstream: Upstream, client: httpx.Client
) -> None:
    org_id, key = gateway.new_tenant("logpush")
    lines = b'{"msg":"one"}\n{"msg":"two","n":2}\n\n{"msg":"three"}\n'
    response = client.post(
        f"/v1/logpush/myapp?key={key}&x=1",
        content=lines,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 200, response.text
    (seen,) = upstream.received(org_id)
    assert (seen.path, seen.query, seen.body) == ("/v1/logpush/myapp", "x=1", lines)
    assert_key_hidden(upstream, org_id, key)
    usage = gateway.usage(org_id)
    assert usage["items"] == 3
    assert usage["requests"] == 1


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("key={key}&x=1", id="first"),
        pytest.param("x=1&key={key}", id="last"),
        pytest.param("x=1&%6Bey={key}", id="percent-encoded-name"),
    ],
)
def test_logpush_key_never_travels_upstream(
    gateway: Gateway, upstream: Upstream, client: httpx.Client, query: str
) -> None:
    org_id, key = gateway.new_tenant("logpush-query")
    response = client.post(f"/v1/logpush/app?{query.format(key=key)}", content=b'{"a":1}\n')
    assert response.status_code == 200, response.text
    (seen,) = upstream.received(org_id)
    assert seen.query == "x=1"
    assert_key_hidden(upstream, org_id, key)


# 4. Invalid keys


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"X-Ingest-Key": "igk_not-a-key-we-know"}, id="unknown-x-ingest-key"),
        pytest.param({"Authorization": "Bearer igk_not-a-key-we-know"}, id="unknown-bearer"),
        pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="not-bearer"),
    ],
)
def test_invalid_key_is_refused_with_json(client: httpx.Client, headers: dict[str, str]) -> None:
    response = client.post(
        "/v1/traces", content=trace_json("x"), headers={"Content-Type": JSON, **headers}
    )
    assert response.status_code == 401
    assert error_of(response) == ("invalid_ingest_key", {})


def test_invalid_key_is_refused_with_rpc_status_for_protobuf(client: httpx.Client) -> None:
    response = client.post(
        "/v1/traces",
        content=trace_proto("x"),
        headers={"Content-Type": PROTOBUF, "X-Ingest-Key": "igk_unknown"},
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == PROTOBUF
    code, reason, _ = decode_status(response.content)
    assert (code, reason) == (code_pb2.UNAUTHENTICATED, "invalid_ingest_key")


def test_revoked_key_is_refused(gateway: Gateway, upstream: Upstream, client: httpx.Client) -> None:
    org_id = gateway.create_org("revoked")
    key_id, key = gateway.create_key(org_id)
    _, other_key = gateway.create_key(org_id)

    def send(ingest_key: str) -> httpx.Response:
        return client.post(
            "/v1/traces",
            content=trace_proto("x"),
            headers={"Content-Type": PROTOBUF, "Authorization": f"Bearer {ingest_key}"},
        )

    assert send(key).status_code == 200
    assert gateway.admin("DELETE", f"/admin/keys/{key_id}").status_code == 204
    assert wait_for(lambda: send(key).status_code == 401)
    response = send(key)
    assert response.status_code == 401
    assert decode_status(response.content)[1] == "invalid_ingest_key"
    # The org's other key goes on working.
    assert send(other_key).status_code == 200
    assert len(upstream.received(org_id)) == 2


# 5. Suspension


def test_suspension_refuses_and_lifting_it_admits_again(
    gateway: Gateway, upstream: Upstream, client: httpx.Client
) -> None:
    org_id, key = gateway.new_tenant("suspended")

    assert send_json(client, key).status_code == 200
    body = {"suspended": True, "reason": "test"}
    suspended = gateway.admin("PUT", f"/admin/orgs/{org_id}/suspension", body)
    assert suspended.status_code == 200 and suspended.json()["suspended"] is True
    assert wait_for(lambda: send_json(client, key).status_code == 402)
    refused = send_json(client, key)
    assert refused.status_code == 402
    assert error_of(refused) == ("billing_suspended", {})
    protobuf = client.post(
        "/v1/traces",
        content=trace_proto("x"),
        headers={"Content-Type": PROTOBUF, "X-Ingest-Key": key},
    )
    assert protobuf.status_code == 402
    code, reason, _ = decode_status(protobuf.content)
    assert (code, reason) == (code_pb2.RESOURCE_EXHAUSTED, "billing_suspended")
    forwarded = len(upstream.received(org_id))

    lifted = gateway.admin("PUT", f"/admin/orgs/{org_id}/suspension", {"suspended": False})
    assert lifted.status_code == 200 and lifted.json()["suspended"] is False
    assert wait_for(lambda: send_json(client, key).status_code == 200)
    assert len(upstream.received(org_id)) == forwarded + 1


# 6. Usage limits


def test_request_limit_admits_exactly_the_limit(
    gateway: Gateway, upstream: Upstream, client: httpx.Client
) -> None:
    org_id, key = gateway.new_tenant("limited", limits={"requests": 5})
    responses = [send_json(client, key) for _ in range(8)]
    assert [r.status_code for r in responses] == [200] * 5 + [402] * 3
    for refused in responses[5:]:
        code, body = error_of(refused)
        assert code == "usage_limit_exceeded"
        assert (body["meter"], body["limit"], body["used"]) == ("requests", "5", "5")
        resets_at = datetime.fromisoformat(body["resets_at"].replace("Z", "+00:00"))
        assert resets_at > datetime.now(UTC)
        assert (resets_at.day, resets_at.hour, resets_at.minute) == (1, 0, 0)
    assert len(upstream.received(org_id)) == 5
    assert gateway.usage(org_id)["requests"] == 5


async def test_request_limit_is_exact_under_concurrency(
    gateway: Gateway, upstream: Upstream
) -> None:
    org_id, key = gateway.new_tenant("limited-concurrent", limits={"requests": 100})
    body = trace_json("x")
    headers = {"Content-Type": JSON, "X-Ingest-Key": key}
    async with httpx.AsyncClient(
        base_url=gateway.url, timeout=30, limits=httpx.Limits(max_connections=50)
    ) as ingest:
        responses = await asyncio.gather(
            *(ingest.post("/v1/traces", content=body, headers=headers) for _ in range(300))
        )
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 100
    assert statuses.count(402) == 200
    assert {code_of(r) for r in responses if r.status_code == 402} == {"usage_limit_exceeded"}
    await asyncio.sleep(0.5)
    assert gateway.usage(org_id)["requests"] == 100
    assert len(upstream.received(org_id)) == 100


def test_item_limit_is_exact(gateway: Gateway, client: httpx.Client) -> None:
    org_id, key = gateway.new_tenant("item-limit", limits={"items": 5})
    headers = {"Content-Type": PROTOBUF, "X-Ingest-Key": key}

    def send(items: int) -> httpx.Response:
        body = trace_proto(*(f"s{i}" for i in range(items)))
        return client.post("/v1/traces", content=body, headers=headers)

    assert send(3).status_code == 200
    refused = send(3)
    assert refused.status_code == 402
    code, reason, detail = decode_status(refused.content)
    assert (code, reason) == (code_pb2.RESOURCE_EXHAUSTED, "usage_limit_exceeded")
    assert (detail["meter"], detail["limit"]) == ("items", "5")
    assert send(2).status_code == 200
    assert send(1).status_code == 402
    assert gateway.usage(org_id)["items"] == 5


def test_raising_a_limit_admits_again_at_once(gateway: Gateway, client: httpx.Client) -> None:
    org_id, key = gateway.new_tenant("raised", limits={"requests": 2})
    assert [send_json(client, key).status_code for _ in range(3)] == [200, 200, 402]
    patched = gateway.admin("PATCH", f"/admin/orgs/{org_id}", {"limits": {"requests": 4}})
    assert patched.status_code == 200
    assert [send_json(client, key).status_code for _ in range(3)] == [200, 200, 402]
    assert gateway.usage(org_id)["requests"] == 4


def test_lowering_a_limit_takes_effect_at_once(gateway: Gateway, client: httpx.Client) -> None:
    org_id, key = gateway.new_tenant("lowered", limits={"requests": 100})
    assert send_json(client, key).status_code == 200
    patched = gateway.admin("PATCH", f"/admin/orgs/{org_id}", {"limits": {"requests": 2}})
    assert patched.status_code == 200
    assert [send_json(client, key).status_code for _ in range(4)] == [200, 402, 402, 402]
    assert gateway.usage(org_id)["requests"] == 2


# 7. Refunds when the upstream does not accept a batch


def test_upstream_error_is_passed_back_and_refunded(
    gateway: Gateway, upstream: Upstream, client: httpx.Client
) -> None:
    org_id, key = gateway.new_tenant("refund-500")
    assert send_json(client, key).status_code == 200
    before = gateway.usage(org_id)
    assert before["requests"] == 1
    upstream.status = 500
    assert send_json(client, key).status_code == 500
    time.sleep(gateway.flush_interval * 2)
    assert gateway.usage(org_id) == before
    assert len(upstream.received(org_id)) == 2


def test_refund_gives_the_quota_back(
    gateway: Gateway, upstream: Upstream, client: httpx.Client
) -> None:
    org_id, key = gateway.new_tenant("refund-limit", limits={"requests": 1})
    upstream.status = 503
    assert send_json(client, key).status_code == 503
    upstream.status = 200
    assert send_json(client, key).status_code == 200
    assert send_json(client, key).status_code == 402
    assert gateway.usage(org_id)["requests"] == 1


def test_upstream_timeout_is_504_and_refunded(
    gateway: Gateway, upstream: Upstream, client: httpx.Client
) -> None:
    org_id, key = gateway.new_tenant("refund-timeout")
    before = gateway.usage(org_id)
    upstream.delay = 10.0  # the 1 s timeout + 5 s for scheduling stay well short of it
    started = time.monotonic()
    response = send_json(client, key)
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert code_of(response) == "upstream_timeout"
    assert elapsed < 6.0, "the gateway waited for the upstream beyond its timeout"
    time.sleep(gateway.flush_interval * 2)
    assert gateway.usage(org_id) == before
    assert len(upstream.received(org_id)) == 1


def test_unreachable_upstream_is_503_with_retry_after_and_refunded(
    gateway: Gateway, client: httpx.Client
) -> None:
    org_id, key = gateway.new_tenant("refund-unreachable")
    closed = f"http://127.0.0.1:{closed_port()}"
    patched = gateway.admin("PATCH", f"/admin/orgs/{org_id}", {"upstream": closed})
    assert patched.status_code == 200 and patched.json()["upstream"] == closed
    before = gateway.usage(org_id)
    response = send_json(client, key)
    assert response.status_code == 503
    assert code_of(response) == "upstream_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    protobuf = client.post(
        "/v1/traces",
        content=trace_proto("x"),
        headers={"Content-Type": PROTOBUF, "X-Ingest-Key": key},
    )
    assert protobuf.status_code == 503
    assert decode_status(protobuf.content)[:2] == (code_pb2.UNAVAILABLE, "upstream_unavailable")
    time.sleep(gateway.flush_interval * 2)
    assert gateway.usage(org_id) == before


# 8. Bad input


Body = Callable[["Gateway"], Any]


def _chunked(total: int, size: int = 8192) -> Iterator[bytes]:
    """A body without Content-Length: httpx sends it chunked."""
    for _ in range(total // size + 1):
        yield b"\0" * size


def _gzip_bomb(gw: Gateway) -> bytes:
    return gzip.compress(b"\0" * (gw.max_decompressed + 1))


_BAD_INPUT = [
    pytest.param("POST", {"Content-Type": "text/plain"}, lambda _: trace_json("x"), 415,
                 "unsupported_media_type", id="wrong-content-type"),
    pytest.param("POST", {"Content-Type": JSON, "Content-Encoding": "br"},
                 lambda _: b"\x0b\x02\x80{}\x03", 415, "unsupported_media_type", id="brotli"),
    pytest.param("POST", {"Content-Type": PROTOBUF}, lambda _: b"\x0a\xff\xff\xff\xff\x0f\x01",
                 400, "bad_request", id="malformed-protobuf"),
    pytest.param("POST", {"Content-Type": JSON}, lambda _: b'{"resourceSpans": [', 400,
                 "bad_request", id="malformed-json"),
    pytest.param("POST", {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"},
                 lambda _: gzip.compress(trace_proto(*"abcdefgh"), mtime=0)[:-12], 400,
                 "bad_request", id="truncated-gzip"),
    pytest.param("POST", {"Content-Type": PROTOBUF}, lambda gw: b"\0" * (gw.max_body + 1), 413,
                 "payload_too_large", id="too-large"),
    pytest.param("POST", {"Content-Type": PROTOBUF}, lambda gw: _chunked(gw.max_body), 413,
                 "payload_too_large", id="too-large-chunked"),
    pytest.param("POST", {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}, _gzip_bomb, 413,
                 "payload_too_large", id="gzip-bomb"),
    pytest.param("GET", {}, lambda _: None, 405, "method_not_allowed", id="get"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "headers", "body", "status", "code"), _BAD_INPUT)
def test_bad_input_is_refused(
    gateway: Gateway,
    upstream: Upstream,
    client: httpx.Client,
    method: str,
    headers: dict[str, str],
    body: Body,
    status: int,
    code: str,
) -> None:
    org_id, key = gateway.new_tenant("bad-input")
    response = client.request(
        method, "/v1/traces", content=body(gateway), headers={"X-Ingest-Key": key, **headers}
    )
    assert response.status_code == status, response.text
    if headers.get("Content-Type") == PROTOBUF:
        assert response.headers["content-type"] == PROTOBUF
        assert decode_status(response.content)[1] == code
    else:
        assert code_of(response) == code
    assert upstream.received(org_id) == []
    assert gateway.usage(org_id) == {"requests": 0, "bytes": 0, "items": 0}
    assert client.get("/healthz").status_code == 200


def test_gzip_bomb_is_small_on_the_wire(gateway: Gateway) -> None:
    assert len(_gzip_bomb(gateway)) < gateway.max_body // 10


# 9. The admin listener


def test_metrics_need_the_admin_token(gateway: Gateway, client: httpx.Client) -> None:
    _, key = gateway.new_tenant("metrics")
    assert send_json(client, key).status_code == 200
    with httpx.Client(base_url=gateway.admin_url, timeout=5) as anonymous:
        assert anonymous.get("/metrics").status_code == 401
        wrong = anonymous.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert anonymous.post("/admin/orgs", json={"name": "x"}).status_code == 401
    response = gateway.admin("GET", "/metrics")
    assert response.status_code == 200
    assert 'gateway_requests_total{outcome="forwarded",signal="traces"}' in response.text


def test_admin_routes_are_not_served_on_the_ingest_port(client: httpx.Client) -> None:
    assert client.post("/admin/orgs", json={"name": "x"}).status_code == 404
    assert client.get("/admin/orgs/whatever/usage").status_code == 404
    assert client.get("/metrics").status_code == 404


def _listeners(port: int) -> set[str]:
    """Local addresses in LISTEN state on ``port``, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_admin_listener_binds_loopback_only(gateway: Gateway) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp")
    # 0100007F is 127.0.0.1 in /proc's little-endian hex.
    assert _listeners(gateway.admin_port) == {"0100007F"}


# 10. Shutdown


def test_sigterm_loses_no_usage(
    gateway_factory: Callable[..., Gateway], upstream: Upstream
) -> None:
    # A long flush interval: only the shutdown flush can commit this usage.
    gw = gateway_factory(GATEWAY_FLUSH_INTERVAL="60")
    org_id, key = gw.new_tenant("sigterm")
    accepted = 20
    with httpx.Client(base_url=gw.url, timeout=10) as ingest:
        for _ in range(accepted):
            assert send_json(ingest, key).status_code == 200
    gw.process.send_signal(signal.SIGTERM)
    assert gw.process.wait(10) == 0, gw.logs()
    assert len(upstream.received(org_id)) == accepted

    result = gw.cli("usage", org_id)
    assert result.returncode == 0, result.stderr.decode()
    usage = json.loads(result.stdout)["usage"]
    assert usage["requests"] == accepted
    assert usage["items"] == accepted
