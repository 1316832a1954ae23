"""Partial admission: a batch over an items limit is cut to what fits, forwarded in its own
encoding, counted exactly, and answered with an OTLP partial success (every backend)."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from gateway.ingest.upstream import UpstreamResponse
from gateway.settings import Settings
from gateway.types import Receive, Scope, Send
from tests.fakes import Forwarded, MemoryUpstream
from tests.limits.conftest import Rig, running, tenant
from tests.store.conftest import memory_backend

REQUESTS: dict[str, Any] = {
    "traces": ExportTraceServiceRequest,
    "logs": ExportLogsServiceRequest,
    "metrics": ExportMetricsServiceRequest,
}
RESPONSES: dict[str, Any] = {
    "traces": ExportTraceServiceResponse,
    "logs": ExportLogsServiceResponse,
    "metrics": ExportMetricsServiceResponse,
}
REJECTED = {
    "traces": "rejected_spans",
    "logs": "rejected_log_records",
    "metrics": "rejected_data_points",
}
CASES = [(s, f) for s in ("logs", "traces", "metrics") for f in ("protobuf", "json")]


def _resource(name: str) -> Resource:
    return Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=name))])


def _scope(name: str) -> InstrumentationScope:
    return InstrumentationScope(name=name, version="1.0")


def batch(signal: str) -> Any:
    """15 items over two resources of two scopes each (4 + 4, then 4 + 3)."""
    sizes = [[4, 4], [4, 3]]
    n = iter(range(100))
    if signal == "logs":
        return ExportLogsServiceRequest(
            resource_logs=[
                ResourceLogs(
                    resource=_resource(f"svc{r}"),
                    scope_logs=[
                        ScopeLogs(
                            scope=_scope(f"lib{r}{s}"),
                            log_records=[
                                LogRecord(body=AnyValue(string_value=f"line {next(n)}"))
                                for _ in range(size)
                            ],
                        )
                        for s, size in enumerate(scopes)
                    ],
                )
                for r, scopes in enumerate(sizes)
            ]
        )
    if signal == "traces":
        return ExportTraceServiceRequest(
            resource_spans=[
                ResourceSpans(
                    resource=_resource(f"svc{r}"),
                    scope_spans=[
                        ScopeSpans(
                            scope=_scope(f"lib{r}{s}"),
                            spans=[Span(name=f"span {next(n)}") for _ in range(size)],
                        )
                        for s, size in enumerate(scopes)
                    ],
                )
                for r, scopes in enumerate(sizes)
            ]
        )

    def gauge(size: int) -> m.Metric:
        points = [m.NumberDataPoint(as_int=next(n)) for _ in range(size)]
        return m.Metric(name=f"metric {points[0].as_int}", gauge=m.Gauge(data_points=points))

    return ExportMetricsServiceRequest(
        resource_metrics=[
            m.ResourceMetrics(
                resource=_resource(f"svc{r}"),
                scope_metrics=[
                    # Two metrics per scope: the cut can fall inside a metric.
                    m.ScopeMetrics(scope=_scope(f"lib{r}{s}"), metrics=[gauge(size - 2), gauge(2)])
                    for s, size in enumerate(scopes)
                ],
            )
            for r, scopes in enumerate(sizes)
        ]
    )


def items(signal: str, request: Any) -> list[str]:
    """The items of a request, by what each one says, in order."""
    out = []
    for resource in getattr(request, f"resource_{'spans' if signal == 'traces' else signal}"):
        for scope in getattr(resource, f"scope_{'spans' if signal == 'traces' else signal}"):
            if signal == "logs":
                out += [r.body.string_value for r in scope.log_records]
            elif signal == "traces":
                out += [s.name for s in scope.spans]
            else:
                out += [str(p.as_int) for metric in scope.metrics for p in metric.gauge.data_points]
    return out


def encode(request: Any, fmt: str) -> bytes:
    if fmt == "protobuf":
        data: bytes = request.SerializeToString()
        return data
    text: str = json_format.MessageToJson(request)
    return text.encode()


def upstream(rig: Rig) -> MemoryUpstream:
    assert isinstance(rig.runtime.upstream, MemoryUpstream)
    return rig.runtime.upstream


def decode(signal: str, fmt: str, body: bytes) -> Any:
    message = REQUESTS[signal]()
    if fmt == "protobuf":
        message.ParseFromString(body)
    else:
        json_format.Parse(body, message)
    return message


async def post(rig: Rig, key: str, signal: str, fmt: str, body: bytes, **headers: str) -> Any:
    media = "application/x-protobuf" if fmt == "protobuf" else "application/json"
    headers = {"authorization": f"Bearer {key}", "content-type": media, **headers}
    return await rig.ingest.post(f"/v1/{signal}", content=body, headers=headers)


def answer(signal: str, fmt: str, body: bytes) -> tuple[int, str]:
    """(rejected items, error message) of a partial success the client got."""
    if fmt == "protobuf":
        partial = RESPONSES[signal].FromString(body).partial_success
        return getattr(partial, REJECTED[signal]), partial.error_message
    document = RESPONSES[signal]()
    json_format.Parse(body, document)
    return getattr(
        document.partial_success, REJECTED[signal]
    ), document.partial_success.error_message


async def partial_tenant(rig: Rig, limits: dict[str, int | None]) -> tuple[str, str]:
    org_id, key = await tenant(rig, limits)
    patched = await rig.admin.patch(f"/admin/orgs/{org_id}", json={"partial_admission": True})
    assert patched.status_code == 200, patched.text
    assert patched.json()["partial_admission"] is True
    return org_id, key


@pytest.mark.parametrize(("signal", "fmt"), CASES)
async def test_a_batch_over_the_limit_forwards_what_fits_and_reports_the_rest(
    rig: Rig, signal: str, fmt: str
) -> None:
    org_id, key = await partial_tenant(rig, {"items": 10})
    sent = batch(signal)

    response = await post(rig, key, signal, fmt, encode(sent, fmt))

    assert response.status_code == 200, response.text
    rejected, message = answer(signal, fmt, response.content)
    assert rejected == 5
    assert "items limit of 10" in message
    sent_on = upstream(rig).requests
    forwarded = decode(signal, fmt, sent_on[-1].body)
    assert items(signal, forwarded) == items(signal, sent)[:10]
    # Resources and scopes stay as they were; what lost all its items is gone.
    resources = getattr(forwarded, sent.DESCRIPTOR.fields[0].name)
    originals = getattr(sent, sent.DESCRIPTOR.fields[0].name)
    assert [r.resource for r in resources] == [r.resource for r in originals]
    scopes = [s.scope.name for r in resources for s in getattr(r, r.DESCRIPTOR.fields[1].name)]
    assert scopes == ["lib00", "lib01", "lib10"]
    usage = await rig.usage(org_id)
    meters = usage["meters"]
    assert isinstance(meters, dict)
    assert meters["items"]["used"] == 10
    assert meters[f"{signal}.items"]["used"] == 10
    assert meters["bytes"]["used"] == len(sent_on[-1].body)  # the cut body, not the sent one

    registry = rig.runtime.metrics.registry
    labels = {"signal": signal, "outcome": "partially_forwarded"}
    assert registry.get_sample_value("gateway_requests_total", labels) == 1
    cut_items = "gateway_partial_admission_rejected_items_total"
    assert registry.get_sample_value(cut_items, {"signal": signal}) == 5

    again = await post(rig, key, signal, fmt, encode(sent, fmt))
    assert again.status_code == 402
    assert len(sent_on) == 1


async def test_a_compressed_batch_is_cut_and_sent_compressed_the_same_way(rig: Rig) -> None:
    _, key = await partial_tenant(rig, {"logs.items": 6})
    sent = batch("logs")
    body = gzip.compress(sent.SerializeToString())

    response = await post(rig, key, "logs", "protobuf", body, **{"content-encoding": "gzip"})

    assert response.status_code == 200, response.text
    assert answer("logs", "protobuf", response.content)[0] == 9
    forwarded: Forwarded = upstream(rig).requests[-1]
    assert forwarded.header("content-encoding") == "gzip"
    got = ExportLogsServiceRequest.FromString(gzip.decompress(forwarded.body))
    assert items("logs", got) == items("logs", sent)[:6]


async def test_the_upstream_s_own_partial_success_is_added_and_refunded(rig: Rig) -> None:
    org_id, key = await partial_tenant(rig, {"items": 10})

    def rejects_two(request: Forwarded) -> UpstreamResponse:
        said = ExportLogsServiceResponse()
        said.partial_success.rejected_log_records = 2
        said.partial_success.error_message = "two records too old"
        return UpstreamResponse(
            200, [(b"content-type", b"application/x-protobuf")], said.SerializeToString()
        )

    upstream(rig).handler = rejects_two
    response = await post(rig, key, "logs", "protobuf", encode(batch("logs"), "protobuf"))

    rejected, message = answer("logs", "protobuf", response.content)
    assert (response.status_code, rejected) == (200, 7)
    assert "upstream: two records too old" in message
    meters = (await rig.usage(org_id))["meters"]
    assert isinstance(meters, dict)
    assert meters["items"]["used"] == 8  # 10 forwarded, 2 of them rejected by the backend


async def test_a_key_s_items_limit_cuts_too(rig: Rig) -> None:
    org_id, _ = await partial_tenant(rig, {})
    created = await rig.admin.post(
        f"/admin/orgs/{org_id}/keys", json={"name": "ci", "limits": {"items": 4}}
    )
    key = created.json()["key"]

    response = await post(rig, key, "traces", "json", encode(batch("traces"), "json"))

    assert response.status_code == 200, response.text
    rejected, message = answer("traces", "json", response.content)
    assert rejected == 11
    assert f"key {created.json()['id']}" in message
    forwarded = decode("traces", "json", upstream(rig).requests[-1].body)
    assert len(items("traces", forwarded)) == 4


async def test_without_partial_admission_the_whole_batch_is_refused(rig: Rig) -> None:
    org_id, key = await tenant(rig, {"items": 10})

    response = await post(rig, key, "logs", "protobuf", encode(batch("logs"), "protobuf"))

    assert response.status_code == 402
    assert upstream(rig).requests == []
    patched = await rig.admin.patch(f"/admin/orgs/{org_id}", json={"partial_admission": "yes"})
    assert patched.status_code == 400


async def test_a_limit_that_leaves_nothing_or_a_bytes_limit_is_not_cut(rig: Rig) -> None:
    _, key = await partial_tenant(rig, {"items": 0})
    refused = await post(rig, key, "logs", "protobuf", encode(batch("logs"), "protobuf"))
    assert refused.status_code == 402

    _, key = await partial_tenant(rig, {"bytes": 100})
    refused = await post(rig, key, "logs", "protobuf", encode(batch("logs"), "protobuf"))
    assert refused.status_code == 402
    assert refused.headers["content-type"] == "application/x-protobuf"
    assert upstream(rig).requests == []


async def test_gateway_partial_admission_cuts_for_every_org_but_one_that_said_no(
    tmp_path: Path,
) -> None:
    async with running(memory_backend(tmp_path), tmp_path, partial_admission=True) as rig:
        _, key = await tenant(rig, {"items": 10})
        cut_batch = await post(rig, key, "logs", "json", encode(batch("logs"), "json"))
        assert cut_batch.status_code == 200, cut_batch.text
        assert answer("logs", "json", cut_batch.content)[0] == 5

        org_id, key = await tenant(rig, {"items": 10})
        said_no = {"partial_admission": False}
        assert (await rig.admin.patch(f"/admin/orgs/{org_id}", json=said_no)).status_code == 200
        refused = await post(rig, key, "logs", "json", encode(batch("logs"), "json"))
        assert refused.status_code == 402
    assert Settings.from_env({"GATEWAY_PARTIAL_ADMISSION": "true"}).partial_admission is True


async def test_an_embedding_service_reads_the_cut_body_at_its_own_length(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    async def service(scope: Scope, receive: Receive, send: Send) -> None:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        seen["body"] = b"".join(chunks)
        seen["length"] = dict(scope["headers"])[b"content-length"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with running(memory_backend(tmp_path), tmp_path, partial_admission=True) as rig:
        _, key = await tenant(rig, {"items": 3})
        app = rig.runtime.middleware(service)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            response = await client.post(
                "/v1/logs",
                content=encode(batch("logs"), "protobuf"),
                headers={
                    "authorization": f"Bearer {key}",
                    "content-type": "application/x-protobuf",
                },
            )
    assert response.status_code == 200, response.text
    assert answer("logs", "protobuf", response.content)[0] == 12
    assert len(items("logs", decode("logs", "protobuf", seen["body"]))) == 3
    assert seen["length"] == str(len(seen["body"])).encode()


async def test_concurrent_batches_fill_the_limit_exactly_and_forward_what_they_count(
    rig: Rig,
) -> None:
    org_id, key = await partial_tenant(rig, {"items": 100})
    body = encode(batch("logs"), "protobuf")

    answers = await asyncio.gather(*(post(rig, key, "logs", "protobuf", body) for _ in range(12)))

    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {200, 402}, statuses
    forwarded = sum(
        len(items("logs", decode("logs", "protobuf", r.body))) for r in upstream(rig).requests
    )
    meters = (await rig.usage(org_id))["meters"]
    assert isinstance(meters, dict)
    assert forwarded == meters["items"]["used"] == 100
    # Whole batches get the upstream's own answer ({} in JSON), cut ones the gateway's.
    cut = [a for a in answers if a.headers["content-type"] == "application/x-protobuf"]
    rejected = sum(answer("logs", "protobuf", a.content)[0] for a in cut if a.status_code == 200)
    assert forwarded + rejected == 15 * statuses.count(200)


async def test_an_upstream_claiming_more_rejections_than_it_got_is_capped(rig: Rig) -> None:
    org_id, key = await partial_tenant(rig, {"items": 10})

    def rejects_everything_and_more(request: Forwarded) -> UpstreamResponse:
        said = ExportLogsServiceResponse()
        said.partial_success.rejected_log_records = 2**63 - 1
        return UpstreamResponse(
            200, [(b"content-type", b"application/x-protobuf")], said.SerializeToString()
        )

    upstream(rig).handler = rejects_everything_and_more
    response = await post(rig, key, "logs", "protobuf", encode(batch("logs"), "protobuf"))

    assert response.status_code == 200, response.text  # was a 500: the sum overflowed int64
    assert answer("logs", "protobuf", response.content)[0] == 15
    meters = (await rig.usage(org_id))["meters"]
    assert isinstance(meters, dict)
    assert meters["items"]["used"] == 0


async def test_a_cut_batch_the_upstream_refuses_is_refunded_and_its_answer_passed_on(
    rig: Rig,
) -> None:
    org_id, key = await partial_tenant(rig, {"items": 10})
    upstream(rig).answer = UpstreamResponse(503, [(b"retry-after", b"3")], b"busy")

    response = await post(
        rig, key, "logs", "json", encode(batch("logs"), "json"), **{"accept-encoding": "br"}
    )

    assert (response.status_code, response.content) == (503, b"busy")
    assert upstream(rig).requests[-1].header("accept-encoding") is None
    meters = (await rig.usage(org_id))["meters"]
    assert isinstance(meters, dict)
    assert meters["items"]["used"] == 0
    cut_items = "gateway_partial_admission_rejected_items_total"
    assert not rig.runtime.metrics.registry.get_sample_value(cut_items, {"signal": "logs"})


async def test_a_json_batch_a_cut_would_change_is_refused_whole(rig: Rig) -> None:
    _, key = await partial_tenant(rig, {"items": 2})
    body = (
        b'{"resourceLogs":[{"resource":{"attributes":[]},"resource":{"droppedAttributesCount":1},'
        b'"scopeLogs":[{"logRecords":[{},{},{}]}]}]}'
    )

    response = await post(rig, key, "logs", "json", body)

    assert response.status_code == 402, response.text
    assert upstream(rig).requests == []
