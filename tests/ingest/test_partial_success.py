"""An org pays only for what the backend accepted: OTLP partial success is refunded.

Regression: 37 spans sent, the upstream answered 200 with ``rejected_spans: 5``, 37 charged.
The ingest app runs in process in front of an upstream that answers what the test says.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceResponse,
)

from gateway.ingest.app import IngestApp
from gateway.ingest.upstream import UpstreamResponse
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.base import OrgChanges
from gateway.store.memory import MemoryStore
from policies.model import Limits, Prices
from tests.fakes import MemoryUpstream

SECRET = "r" * 32


def spans_json(n: int) -> bytes:
    spans = ",".join('{"name":"s"}' for _ in range(n))
    return f'{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{spans}]}}]}}]}}'.encode()


def logs_json(n: int) -> bytes:
    records = ",".join("{}" for _ in range(n))
    return f'{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{records}]}}]}}]}}'.encode()


class Rig:
    def __init__(self, runtime: Runtime, client: httpx.AsyncClient, upstream: MemoryUpstream):
        self.runtime, self.client, self.upstream = runtime, client, upstream

    async def tenant(self, **kwargs: Any) -> tuple[str, str]:
        org = await self.runtime.store.create_org("p", kwargs.pop("limits", Limits()), None)
        if kwargs:
            await self.runtime.store.update_org(org.id, OrgChanges(**kwargs))
        key = f"igk_{org.id}"
        await self.runtime.store.create_key(org.id, self.runtime.hasher(key))
        return org.id, key

    async def usage(self, org_id: str) -> dict[str, int]:
        await self.runtime.usage.flush()
        period = self.runtime.usage.current_period(time.time())
        return await self.runtime.store.usage(org_id, period.key)

    async def send(self, key: str, body: bytes, path: str = "/v1/traces") -> httpx.Response:
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        return await self.client.post(path, content=body, headers=headers)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    upstream = MemoryUpstream()
    runtime = Runtime(
        Settings(
            data_dir=tmp_path,
            key_secret=SECRET,
            flush_interval=3600,
            upstream_url="http://collector.invalid",
        ),
        store=MemoryStore(),
        upstream=upstream,
        spool_dir=None,
    )
    await runtime.start()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=IngestApp(runtime)), base_url="http://gw"
    )
    yield Rig(runtime, client, upstream)
    await client.aclose()
    await runtime.close()


def protobuf_answer(rejected: int) -> UpstreamResponse:
    body = ExportTraceServiceResponse(
        partial_success=ExportTracePartialSuccess(rejected_spans=rejected, error_message="bad")
    ).SerializeToString()
    return UpstreamResponse(200, [(b"content-type", b"application/x-protobuf")], body)


def json_answer(partial: dict[str, Any], coding: str | None = None) -> UpstreamResponse:
    body = json.dumps({"partialSuccess": partial}).encode()
    headers = [(b"content-type", b"application/json")]
    if coding == "gzip":
        body = gzip.compress(body)
    elif coding == "zstd":
        body = zstandard.ZstdCompressor().compress(body)
    if coding:
        headers.append((b"content-encoding", coding.encode()))
    return UpstreamResponse(200, headers, body)


@pytest.mark.parametrize(
    "answer",
    [
        protobuf_answer(5),
        json_answer({"rejectedSpans": "5", "errorMessage": "bad"}),
        json_answer({"rejected_spans": 5}),
        json_answer({"rejectedSpans": "5"}, "gzip"),
        json_answer({"rejectedSpans": "5"}, "zstd"),
    ],
    ids=["protobuf", "json-string", "json-snake-number", "json-gzip", "json-zstd"],
)
async def test_rejected_spans_are_not_charged(rig: Rig, answer: UpstreamResponse) -> None:
    org_id, key = await rig.tenant()
    rig.upstream.answer = answer
    response = await rig.send(key, spans_json(37))
    assert response.status_code == 200
    # The client sees the backend's own answer (httpx has undone a gzip coding).
    if answer.body[:2] == b"\x1f\x8b":
        assert response.content == gzip.decompress(answer.body)
    elif dict(answer.headers).get(b"content-encoding") != b"zstd":  # httpx may lack zstd
        assert response.content == answer.body
    assert (await rig.usage(org_id))["items"] == 32
    assert rig.runtime.metrics.refunded_items._value.get() == 5


async def test_rejected_log_records_and_a_quiet_answer(rig: Rig) -> None:
    org_id, key = await rig.tenant()
    rig.upstream.answer = UpstreamResponse(
        200,
        [(b"content-type", b"application/x-protobuf")],
        ExportLogsServiceResponse(
            partial_success=ExportLogsPartialSuccess(rejected_log_records=4)
        ).SerializeToString(),
    )
    await rig.send(key, logs_json(10), "/v1/logs")
    rig.upstream.answer = json_answer({})  # {"partialSuccess": {}}: everything accepted
    await rig.send(key, logs_json(10), "/v1/logs")
    assert (await rig.usage(org_id))["items"] == 16


async def test_a_rejection_never_refunds_more_than_was_counted(rig: Rig) -> None:
    org_id, key = await rig.tenant()
    rig.upstream.answer = json_answer({"rejectedSpans": "1000"})
    await rig.send(key, spans_json(3))
    usage = await rig.usage(org_id)
    assert (usage["requests"], usage.get("items", 0)) == (1, 0)


async def test_refunded_items_go_back_into_the_limit_and_the_balance(rig: Rig) -> None:
    org_id, key = await rig.tenant(limits=Limits(items=10))
    rig.upstream.answer = json_answer({"rejectedSpans": "6"})
    assert (await rig.send(key, spans_json(10))).status_code == 200
    rig.upstream.answer = json_answer({})
    assert (await rig.send(key, spans_json(6))).status_code == 200  # the 6 rejected came back
    assert (await rig.send(key, spans_json(1))).status_code == 402
    assert (await rig.usage(org_id))["items"] == 10


async def test_a_priced_org_gets_the_price_of_rejected_items_back(rig: Rig) -> None:
    org_id, key = await rig.tenant(prices=Prices(items=1_000_000))  # 1 minor unit per item
    rig.upstream.answer = json_answer({"rejectedSpans": "2"})
    await rig.send(key, spans_json(5))
    await rig.runtime.usage.flush()
    from gateway.limits.budgets import CREDIT_PERIOD

    credit = await rig.runtime.store.usage(org_id, CREDIT_PERIOD.key)
    assert credit["credit"] == 3 * 1_000_000


async def test_every_request_has_one_outcome_from_the_fixed_set(rig: Rig) -> None:
    from gateway.ingest.outcomes import Outcome

    _, limited = await rig.tenant(limits=Limits(requests=1))
    await rig.send(limited, spans_json(1))
    await rig.send(limited, spans_json(1))
    _, failing = await rig.tenant()
    rig.upstream.answer = UpstreamResponse(500, [], b"no")
    await rig.send(failing, spans_json(1))
    await rig.send("igk_unknown", spans_json(1))
    samples = {
        s.labels["outcome"]: s.value
        for metric in rig.runtime.metrics.requests.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    }
    assert set(samples) <= set(Outcome)
    assert samples == {
        "forwarded": 1,
        "usage_limit_exceeded": 1,
        "upstream_rejected": 1,
        "invalid_ingest_key": 1,
    }
    forwards = [
        s.value
        for metric in rig.runtime.metrics.upstream_seconds.collect()
        for s in metric.samples
        if s.name.endswith("_count")
    ]
    assert forwards == [2]
