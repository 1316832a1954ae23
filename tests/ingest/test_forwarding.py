"""What reaches the upstream: the org headers always, never the key, no client hop claims.

The ingest app (MeteringMiddleware in front of the ReverseProxy) is driven in process with an
upstream that records every header it was sent.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.ingest.app import IngestApp
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.memory import MemoryStore
from policies.model import Limits
from tests.fakes import MemoryUpstream
from tests.refusals import code_of, error_of

SECRET = "f" * 32
BODY = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{}]}]}]}'


class Rig:
    def __init__(self, runtime: Runtime, client: httpx.AsyncClient, upstream: MemoryUpstream):
        self.runtime, self.client, self.upstream = runtime, client, upstream

    async def tenant(self, limits: Limits | None = None) -> tuple[str, str]:
        org = await self.runtime.store.create_org("t", limits or Limits(), None)
        key = f"igk_{org.id}"
        await self.runtime.store.create_key(org.id, self.runtime.hasher(key))
        return org.id, key

    def headers_sent(self) -> list[tuple[str, str]]:
        return self.upstream.requests[-1].headers

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers_sent() if n.lower() == name]

    async def usage(self, org_id: str) -> dict[str, int]:
        await self.runtime.usage.flush()
        period = self.runtime.usage.current_period(time.time())
        return await self.runtime.store.usage(org_id, period.key)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    upstream = MemoryUpstream()
    runtime = Runtime(
        Settings(
            data_dir=tmp_path,
            key_secret=SECRET,
            flush_interval=3600,
            upstream_url="http://collector.invalid:4318",
        ),
        store=MemoryStore(),
        upstream=upstream,
        spool_dir=None,
    )
    await runtime.start()
    transport = httpx.ASGITransport(app=IngestApp(runtime), client=("203.0.113.9", 4000))
    client = httpx.AsyncClient(transport=transport, base_url="http://gw")
    yield Rig(runtime, client, upstream)
    await client.aclose()
    await runtime.close()


@pytest.mark.parametrize(
    "named",
    ["x-gateway-org-id", "X-Scope-OrgID", "x-gateway-org-id, x-scope-orgid, keep-alive"],
)
async def test_a_connection_header_cannot_strip_the_org_headers(rig: Rig, named: str) -> None:
    org_id, key = await rig.tenant()
    headers = [
        ("authorization", f"Bearer {key}"),
        ("content-type", "application/json"),
        ("connection", named),
        ("x-custom", "kept"),
    ]
    assert (await rig.client.post("/v1/traces", content=BODY, headers=headers)).status_code == 200
    assert rig.values("x-gateway-org-id") == [org_id]
    assert rig.values("x-scope-orgid") == [org_id]
    assert rig.values("x-custom") == ["kept"]
    assert rig.values("connection") == []


async def test_a_connection_header_still_drops_the_client_headers_it_names(rig: Rig) -> None:
    _, key = await rig.tenant()
    headers = [
        ("authorization", f"Bearer {key}"),
        ("content-type", "application/json"),
        ("connection", "x-hop-only"),
        ("x-hop-only", "1"),
    ]
    assert (await rig.client.post("/v1/traces", content=BODY, headers=headers)).status_code == 200
    assert rig.values("x-hop-only") == []


async def test_client_hop_claims_are_dropped_and_forwarded_is_appended(rig: Rig) -> None:
    _, key = await rig.tenant()
    headers = [
        ("authorization", f"Bearer {key}"),
        ("content-type", "application/json"),
        ("x-real-ip", "10.0.0.1"),
        ("x-forwarded-host", "admin.internal"),
        ("x-forwarded-proto", "https"),
        ("x_real_ip", "10.0.0.2"),
        ("forwarded", "for=198.51.100.1"),
        ("x-forwarded-for", "198.51.100.1"),
    ]
    assert (await rig.client.post("/v1/traces", content=BODY, headers=headers)).status_code == 200
    for name in ("x-real-ip", "x-forwarded-host", "x-forwarded-proto", "x_real_ip"):
        assert rig.values(name) == [], name
    assert rig.values("forwarded") == ["for=198.51.100.1, for=203.0.113.9;proto=http"]
    assert rig.values("x-forwarded-for") == ["198.51.100.1, 203.0.113.9"]


@pytest.mark.parametrize(
    ("where", "extra_headers", "query"),
    [
        ("x-ingest-key", [("authorization", "Basic dXNlcjpwYXNz")], ""),
        ("bearer", [("authorization", "Basic dXNlcjpwYXNz")], ""),
        ("query", [("authorization", "Basic dXNlcjpwYXNz")], "?a=1;key={key}&b=2"),
    ],
)
async def test_the_key_never_reaches_the_upstream(
    rig: Rig, where: str, extra_headers: list[tuple[str, str]], query: str
) -> None:
    _, key = await rig.tenant()
    headers = [("content-type", "application/x-ndjson"), *extra_headers]
    if where == "x-ingest-key":
        headers.append(("x-ingest-key", key))
    elif where == "bearer":
        headers.insert(0, ("authorization", f"Bearer {key}"))
    url = "/v1/logpush/app" + query.format(key=key)
    if where == "query":
        url += f"&key={key}"
    response = await rig.client.post(url, content=b'{"a":1}\n', headers=headers)
    assert response.status_code == 200, response.text
    sent = rig.upstream.requests[-1]
    sent_url, sent_headers = sent.url, sent.headers
    assert key not in sent_url and key not in str(sent_headers)
    assert rig.values("authorization") == []
    if where == "query":
        assert sent_url.endswith("/v1/logpush/app?a=1&b=2")


async def test_an_org_at_its_limit_is_refused_before_its_body_is_read(rig: Rig) -> None:
    org_id, key = await rig.tenant(Limits(items=1))
    auth = [("authorization", f"Bearer {key}"), ("content-type", "application/json")]
    assert (await rig.client.post("/v1/traces", content=BODY, headers=auth)).status_code == 200
    assert (await rig.client.post("/v1/traces", content=BODY, headers=auth)).status_code == 402
    inspected = rig.runtime.inspector.inspected
    # A malformed body is not even parsed now: the answer is the limit, not 400.
    garbage = b"{" * 5000
    response = await rig.client.post("/v1/traces", content=garbage, headers=auth)
    assert (response.status_code, code_of(response)) == (402, "usage_limit_exceeded")
    assert rig.runtime.inspector.inspected == inspected
    assert (await rig.usage(org_id))["items"] == 1


async def test_more_items_than_the_maximum_is_413(tmp_path: Path) -> None:
    upstream = MemoryUpstream()
    runtime = Runtime(
        Settings(
            data_dir=tmp_path,
            key_secret=SECRET,
            flush_interval=3600,
            max_items=5,
            upstream_url="http://collector.invalid",
        ),
        store=MemoryStore(),
        upstream=upstream,
        spool_dir=None,
    )
    await runtime.start()
    try:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=IngestApp(runtime)), base_url="http://gw"
        )
        org = await runtime.store.create_org("t", Limits(), None)
        key = f"igk_{org.id}"
        await runtime.store.create_key(org.id, runtime.hasher(key))
        auth = {"authorization": f"Bearer {key}", "content-type": "application/x-ndjson"}
        ok = await client.post("/v1/logpush/app", content=b"{}\n" * 5, headers=auth)
        assert ok.status_code == 200
        over = await client.post("/v1/logpush/app", content=b"[1,2,3]\n[4,5,6]\n", headers=auth)
        assert (over.status_code, code_of(over)) == (413, "payload_too_large")
        spans = b'{"resourceSpans":[{"scopeSpans":[{"spans":[' + b",".join([b"{}"] * 6) + b"]}]}]}"
        auth["content-type"] = "application/json"
        over = await client.post("/v1/traces", content=spans, headers=auth)
        assert (over.status_code, code_of(over)) == (413, "payload_too_large")
        assert len(upstream.requests) == 1
        await client.aclose()
    finally:
        await runtime.close()


async def test_otlp_json_errors_are_a_readable_google_rpc_status(rig: Rig) -> None:
    _, key = await rig.tenant(Limits(items=1))
    auth = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    await rig.client.post("/v1/traces", content=BODY, headers=auth)
    response = await rig.client.post("/v1/traces", content=BODY, headers=auth)
    status = response.json()
    assert set(status) == {"code", "message", "details"}
    assert status["code"] == 8  # RESOURCE_EXHAUSTED
    reason, metadata = error_of(response)
    assert reason == "usage_limit_exceeded"
    assert (metadata["meter"], metadata["limit"], metadata["used"]) == ("items", "1", "1")
    assert status["message"] == (
        f"usage limit exceeded: items 1 of 1 this period, resets {metadata['resets_at']}"
    )
    assert status["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    # Logpush keeps the plain {"error": code} body.
    response = await rig.client.post(
        "/v1/logpush/app", content=b"{}\n", headers={"authorization": "Bearer igk_unknown"}
    )
    assert response.json() == {"error": "invalid_ingest_key"}


async def test_protobuf_errors_carry_the_same_readable_message(rig: Rig) -> None:
    from google.rpc import status_pb2

    _, key = await rig.tenant(Limits(items=1))
    auth = {"authorization": f"Bearer {key}", "content-type": "application/x-protobuf"}
    one_span = b"\x0a\x06\x12\x04\x12\x02\x0a\x00"  # resource_spans > scope_spans > one span
    assert (await rig.client.post("/v1/traces", content=one_span, headers=auth)).status_code == 200
    response = await rig.client.post("/v1/traces", content=one_span, headers=auth)
    assert response.headers["content-type"] == "application/x-protobuf"
    status = status_pb2.Status.FromString(response.content)
    reason, metadata = error_of(response)
    assert reason == "usage_limit_exceeded"
    assert status.message == (
        f"usage limit exceeded: items 1 of 1 this period, resets {metadata['resets_at']}"
    )
