"""Every ingest request ends with exactly one Outcome, counted once, on every path."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import (
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.ingest.metering import METHOD_NOT_ALLOWED, REQUEST_TIMEOUT
from gateway.ingest.outcomes import Outcome
from gateway.ingest.proxy import ReverseProxy
from gateway.ingest.upstream import UpstreamResponse
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.memory import MemoryStore
from gateway.types import Message, Receive, Scope, Send
from policies.decisions import (
    BILLING_SUSPENDED,
    INVALID_INGEST_KEY,
    rate_limited,
    store_unavailable,
    usage_exceeded,
)
from policies.model import Limits
from tests.fakes import Forwarded, MemoryUpstream

SPANS = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{}]}]}]}'


def answer(request: Forwarded) -> UpstreamResponse:
    case = request.header("x-case")
    if case == "unavailable":
        raise UpstreamUnavailable("injected")
    if case == "timeout":
        raise UpstreamTimeout("injected")
    if case == "rejected":
        return UpstreamResponse(500, [], b"no")
    return UpstreamResponse(200, [(b"content-type", b"application/json")], b"{}")


class Rig:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        upstream = MemoryUpstream(answer)
        proxy = ReverseProxy(upstream, "http://upstream.test", upstream)

        async def inner(scope: Scope, receive: Receive, send: Send) -> None:
            if dict(scope["headers"]).get(b"x-case") == b"raise":
                raise RuntimeError("the inner app failed")
            await proxy(scope, receive, send)

        self.app = runtime.middleware(inner)
        self.requests = 0

    async def key(self, limits: Limits | None = None) -> str:
        org = await self.runtime.store.create_org("o", limits or Limits(), None)
        key = "igk_" + org.id
        await self.runtime.store.create_key(org.id, self.runtime.hasher(key))
        return key

    def counted(self) -> dict[str, float]:
        return {
            s.labels["outcome"]: s.value
            for metric in self.runtime.metrics.requests.collect()
            for s in metric.samples
            if s.name.endswith("_total")
        }

    async def send(
        self,
        key: str | None,
        body: bytes = SPANS,
        *,
        method: str = "POST",
        case: str = "",
        disconnect: bool = False,
        gone: bool = False,
    ) -> str:
        """One request driven through the ASGI callable; the one outcome it was counted as."""
        headers = [(b"content-type", b"application/json")]
        if key is not None:
            headers.append((b"authorization", b"Bearer " + key.encode()))
        if case:
            headers.append((b"x-case", case.encode()))
        scope = {
            "type": "http",
            "method": method,
            "path": "/v1/traces",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 5000),
            "scheme": "http",
        }

        async def receive() -> Message:
            if disconnect:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(_message: Message) -> None:
            if gone:
                raise OSError("the client went away while it was answered")

        before = self.counted()
        self.requests += 1
        try:
            await self.app(scope, receive, send)
        finally:
            after = self.counted()
            changed = {o: n - before.get(o, 0) for o, n in after.items() if n != before.get(o, 0)}
            assert len(changed) == 1, changed
            [(outcome, n)] = changed.items()
            assert n == 1
        return outcome


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    settings = Settings(data_dir=tmp_path, key_secret="o" * 32, flush_interval=3600)
    runtime = Runtime(settings, store=MemoryStore(), spool_dir=None)
    await runtime.start()
    yield Rig(runtime)
    await runtime.close()


async def test_every_path_counts_exactly_one_outcome_and_the_counters_sum_to_the_requests(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = await rig.key()
    assert await rig.send(key, method="GET") == "method_not_allowed"
    assert await rig.send(None) == "invalid_ingest_key"  # refused before the body
    assert await rig.send(key, b"{not json") == "bad_request"
    assert await rig.send(key, disconnect=True) == "client_disconnected"
    assert await rig.send(key) == "forwarded"
    assert await rig.send(key, case="rejected") == "upstream_rejected"
    assert await rig.send(key, case="unavailable") == "upstream_unavailable"
    assert await rig.send(key, case="timeout") == "upstream_timeout"
    assert await rig.send(await rig.key(Limits(requests=0))) == "usage_limit_exceeded"
    with pytest.raises(OSError):  # decided before the answer failed: invalid_ingest_key
        await rig.send(None, gone=True)
    with pytest.raises(RuntimeError, match="inner app failed"):
        await rig.send(key, case="raise")

    async def broken(*_args: Any) -> None:
        raise RuntimeError("the gates failed")

    monkeypatch.setattr(rig.runtime.admission, "admit", broken)
    with pytest.raises(RuntimeError, match="gates failed"):
        await rig.send(key)

    counted = rig.counted()
    assert sum(counted.values()) == rig.requests == 12
    assert counted["internal_error"] == 2
    assert counted["invalid_ingest_key"] == 2
    assert set(counted) <= set(Outcome)


REFUSALS = [
    METHOD_NOT_ALLOWED,
    REQUEST_TIMEOUT,
    INVALID_INGEST_KEY,
    BILLING_SUSPENDED,
    store_unavailable(),
    rate_limited("requests", 1.0),
    usage_exceeded("requests", 1, 1, datetime(2030, 1, 1, tzinfo=UTC)),
    usage_exceeded("credit", 1, 1, datetime(2030, 1, 1, tzinfo=UTC)),
    *(e().refusal() for e in (BadRequest, PayloadTooLarge, UnsupportedMediaType)),
    *(e().refusal() for e in (UpstreamUnavailable, UpstreamTimeout)),
]


@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda r: r.code)
def test_every_code_a_client_can_see_is_an_outcome_of_its_own(refusal: Any) -> None:
    assert Outcome.of(refusal.code).value == refusal.code


def test_a_code_nobody_declared_counts_as_an_internal_error() -> None:
    assert Outcome.of("made_up") is Outcome.INTERNAL_ERROR
    assert json.dumps(Outcome.FORWARDED) == '"forwarded"'  # str-valued: a label as it is
