"""MeteringMiddleware mounted in process in front of an ingest service's own handlers."""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.limits.rates import RateLimiter
from gateway.responses import decode_status
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.memory import MemoryStore
from gateway.types import Message
from policies.model import Limits
from tests.fakes import Clock, FlakyStore
from tests.refusals import code_of, error_of

SECRET = "s" * 32


class Service:
    """A tiny ingest service of its own: records what reached it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.status = 200

    def app(self) -> Starlette:
        async def ingest(request: Request) -> Response:
            self.seen.append(
                {
                    "headers": dict(request.headers),
                    "body": await request.body(),
                    "org": request.scope["gateway.admission"].routing.org_id,
                }
            )
            return JSONResponse({}, status_code=self.status)

        async def other(_request: Request) -> Response:
            return Response("not gated")

        return Starlette(
            routes=[
                Route("/v1/traces", ingest, methods=["POST"]),
                Route("/v1/logpush/{source}", ingest, methods=["POST"]),
                Route("/status", other),
            ]
        )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Any]:
    flaky = FlakyStore(MemoryStore())
    runtime = Runtime(
        Settings(data_dir=tmp_path, key_secret=SECRET, flush_interval=3600, cache_ttl=0.05),
        store=flaky,
        spool_dir=None,
        timer=Clock(0.0),  # cache TTLs, breakers and buckets move only when a test moves them
    )
    service = Service()
    await runtime.start()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=runtime.middleware(service.app())),
        base_url="http://gw",
    )
    yield runtime, service, client, flaky
    await client.aclose()
    await runtime.close()


async def new_key(runtime: Runtime, **kwargs: Any) -> tuple[str, str]:
    limits = kwargs.pop("limits", Limits())
    org = await runtime.store.create_org("acme", limits, None, **kwargs)
    key = "igk_" + org.id
    await runtime.store.create_key(org.id, runtime.hasher(key))
    return org.id, key


def otlp_json(key: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    return {"headers": headers | (extra or {}), "content": b'{"resourceSpans":[]}'}


async def usage_of(runtime: Runtime, org_id: str) -> dict[str, int]:
    await runtime.usage.flush()
    period = runtime.usage.current_period(time.time())
    return await runtime.store.usage(org_id, period.key)


async def test_the_service_sees_the_org_and_never_the_key(env: Any) -> None:
    runtime, service, client, _ = env
    org_id, key = await new_key(runtime)
    response = await client.post("/v1/traces", **otlp_json(key, {"x-gateway-org-id": "org_forged"}))
    assert response.status_code == 200
    seen = service.seen[0]
    assert seen["headers"]["x-gateway-org-id"] == org_id
    assert seen["org"] == org_id
    assert "authorization" not in seen["headers"]
    assert key not in str(seen["headers"])
    assert seen["body"] == b'{"resourceSpans":[]}'


async def test_x_ingest_key_and_logpush_query_key_are_accepted_and_removed(env: Any) -> None:
    runtime, service, client, _ = env
    _, key = await new_key(runtime)
    r = await client.post(
        "/v1/traces",
        content=b"{}",
        headers={"content-type": "application/json", "x-ingest-key": key},
    )
    assert r.status_code == 200 and "x-ingest-key" not in service.seen[-1]["headers"]
    r = await client.post(f"/v1/logpush/app?key={key}", content=b'{"a":1}\n{"a":2}\n')
    assert r.status_code == 200


async def test_other_paths_pass_through_ungated(env: Any) -> None:
    _, _, client, _ = env
    assert (await client.get("/status")).text == "not gated"


async def test_a_batch_the_service_refuses_is_not_counted(env: Any) -> None:
    runtime, service, client, _ = env
    org_id, key = await new_key(runtime)
    service.status = 500
    assert (await client.post("/v1/traces", **otlp_json(key))).status_code == 500
    service.status = 200
    assert (await client.post("/v1/traces", **otlp_json(key))).status_code == 200
    assert (await usage_of(runtime, org_id))["requests"] == 1


async def test_missing_unknown_and_protobuf_key_errors(env: Any) -> None:
    _, service, client, _ = env
    r = await client.post("/v1/traces", content=b"{}", headers={"content-type": "application/json"})
    assert (r.status_code, error_of(r)) == (401, ("invalid_ingest_key", {}))
    assert r.json()["message"] == "the ingest key is missing, unknown or revoked"
    r = await client.post(
        "/v1/traces",
        content=b"",
        headers={"content-type": "application/x-protobuf", "authorization": "Bearer igk_nope"},
    )
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/x-protobuf"
    code, reason, _ = decode_status(r.content)
    assert (code, reason) == (16, "invalid_ingest_key")
    assert service.seen == []


async def test_a_suspended_org_gets_402_billing_suspended(env: Any) -> None:
    runtime, _, client, _ = env
    org_id, key = await new_key(runtime)
    await runtime.store.set_suspension(org_id, True, "test")
    await runtime.invalidate_org(org_id)
    r = await client.post("/v1/traces", **otlp_json(key))
    assert (r.status_code, code_of(r)) == (402, "billing_suspended")
    await runtime.store.set_suspension(org_id, False, None)
    await runtime.invalidate_org(org_id)
    assert (await client.post("/v1/traces", **otlp_json(key))).status_code == 200


async def test_usage_limit_refusal_body(env: Any) -> None:
    runtime, _, client, _ = env
    _, key = await new_key(runtime, limits=Limits(requests=1))
    assert (await client.post("/v1/traces", **otlp_json(key))).status_code == 200
    r = await client.post("/v1/traces", **otlp_json(key))
    code, body = error_of(r)
    assert r.status_code == 402 and "retry-after" not in r.headers
    assert code == "usage_limit_exceeded"
    assert (body["meter"], body["limit"], body["used"]) == ("requests", "1", "1")
    assert body["resets_at"].endswith("Z")
    assert r.json()["message"] == (
        f"usage limit exceeded: requests 1 of 1 this period, resets {body['resets_at']}"
    )


async def test_rate_limit_answers_429_with_retry_after(env: Any) -> None:
    runtime, _, client, _ = env
    # The bucket refills 2 tokens/s: on the real clock a 0.5 s stall would let the third pass.
    runtime.admission._rates = RateLimiter(clock=lambda: 0.0)
    _, key = await new_key(runtime, limits=Limits(rate_requests=2))
    statuses = [(await client.post("/v1/traces", **otlp_json(key))).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    r = await client.post("/v1/traces", **otlp_json(key))
    assert error_of(r) == ("rate_limited", {"meter": "requests"})
    assert int(r.headers["retry-after"]) >= 1


async def test_shadow_mode_admits_and_counts_what_it_would_refuse(env: Any) -> None:
    runtime, _service, client, _ = env
    org_id, key = await new_key(runtime, limits=Limits(requests=1), shadow=True)
    for _ in range(3):
        assert (await client.post("/v1/traces", **otlp_json(key))).status_code == 200
    counters = await usage_of(runtime, org_id)
    assert counters["requests"] == 3
    assert counters["shadow_refused:requests"] == 2
    metric = runtime.metrics.shadow_refusals.labels("usage_limit_exceeded")._value.get()
    assert metric == 2


async def test_store_down_known_key_fails_open_unknown_key_gets_503(env: Any) -> None:
    runtime, _, client, flaky = env
    _org_id, key = await new_key(runtime, limits=Limits(requests=10**6))
    assert (await client.post("/v1/traces", **otlp_json(key))).status_code == 200
    timer = runtime.timer
    assert isinstance(timer, Clock)
    timer.advance(0.1)  # the fresh entry expires; the next lookup asks the store
    flaky.down = True
    assert (await client.post("/v1/traces", **otlp_json(key))).status_code == 200
    r = await client.post("/v1/traces", **otlp_json("igk_never_seen"))
    assert (r.status_code, code_of(r)) == (503, "store_unavailable")
    assert r.headers["retry-after"] == "1"
    assert runtime.routing.stale_served >= 1
    assert runtime.metrics.fail_open._value.get() == 1


async def test_thousand_concurrent_requests_through_the_middleware_admit_exactly_100(
    env: Any,
) -> None:
    runtime, service, client, _ = env
    org_id, key = await new_key(runtime, limits=Limits(requests=100))
    responses = await asyncio.gather(
        *(client.post("/v1/traces", **otlp_json(key)) for _ in range(1000))
    )
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 100 and statuses.count(402) == 900
    assert len(service.seen) == 100
    assert (await usage_of(runtime, org_id))["requests"] == 100


async def test_without_an_upstream_batches_land_in_the_local_sink(tmp_path: Path) -> None:
    runtime = Runtime(Settings(data_dir=tmp_path, key_secret=SECRET), store=MemoryStore())
    await runtime.start()
    try:
        from gateway.ingest.app import IngestApp

        org_id, key = await new_key(runtime)
        transport = httpx.ASGITransport(app=IngestApp(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            r = await client.post("/v1/traces", **otlp_json(key))
            assert (r.status_code, r.json()) == (200, {})
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
    finally:
        await runtime.close()
    landed = list((tmp_path / "sink" / org_id / "traces").iterdir())
    assert [p.read_bytes() for p in landed] == [b'{"resourceSpans":[]}']


async def test_a_body_that_never_finishes_gets_408_and_others_are_served(tmp_path: Path) -> None:
    runtime = Runtime(
        Settings(data_dir=tmp_path, key_secret=SECRET, body_timeout=0.3),
        store=MemoryStore(),
        spool_dir=None,
    )
    service = Service()
    await runtime.start()
    try:
        _, key = await new_key(runtime)
        gated = runtime.middleware(service.app())
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/traces",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"x-ingest-key", key.encode())],
            "client": ("127.0.0.1", 1),
        }
        sent: list[Message] = []

        async def slow_receive() -> dict[str, Any]:
            await asyncio.sleep(3600)  # the body never comes
            raise AssertionError

        async def send(message: Message) -> None:
            sent.append(message)

        slow = asyncio.create_task(gated(scope, slow_receive, send))
        transport = httpx.ASGITransport(app=gated)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            assert (await client.post("/v1/traces", **otlp_json(key))).status_code == 200
        await asyncio.wait_for(slow, timeout=30)  # the 408 comes within ~0.6 s; 30 s: a hang
        assert sent[0]["status"] == 408
        assert b"request_timeout" in sent[1]["body"]
    finally:
        await runtime.close()
