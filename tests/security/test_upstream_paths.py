"""A keyed request reaches the upstream on its own route only, never elsewhere on the upstream.

An org's upstream may be a shared backend (a Collector, a ClickHouse or Tinybird HTTP API).
A key entitles its holder to send batches to the ingest routes; it must not turn the gateway
into a proxy to any other path on that backend.
"""

from __future__ import annotations

import pytest

from tests.badinput.rawhttp import head, request
from tests.harness import Gateway, Upstream

NDJSON = b'{"a":1}\n'

TRAVERSALS = [
    b"/v1/logpush/../../internal/admin",
    b"/v1/logpush/..%2f..%2finternal%2fadmin",
    b"/v1/logpush/%2e%2e/%2e%2e/internal/admin",
    b"/v1/logpush/app/../../../internal/admin",
]


def send(gateway: Gateway, key: str, target: bytes) -> int | None:
    host, port = gateway.url.removeprefix("http://").split(":")
    headers = [(b"Authorization", b"Bearer " + key.encode())]
    headers.append((b"Content-Length", str(len(NDJSON)).encode()))
    return request(host, int(port), head("POST", target, headers) + NDJSON).status


def test_a_logpush_source_is_forwarded_under_logpush(gateway: Gateway, upstream: Upstream) -> None:
    org, key = gateway.new_tenant("paths-ok")
    assert send(gateway, key, b"/v1/logpush/app-1") == 200
    assert [r.path for r in upstream.received(org_id=org)] == ["/v1/logpush/app-1"]


@pytest.mark.parametrize("target", TRAVERSALS, ids=[t.decode() for t in TRAVERSALS])
def test_a_dot_segment_never_leaves_the_logpush_route(
    gateway: Gateway, upstream: Upstream, target: bytes
) -> None:
    org, key = gateway.new_tenant("paths-traversal")
    status = send(gateway, key, target)
    for received in upstream.received(org_id=org):
        assert received.path.startswith("/v1/logpush/"), (status, received.path)
