"""A key of one org never counts against, nor speaks for, another org.

Two orgs, A and B. Traffic with A's key, whatever tenant headers the client adds, is counted
against A only, and the upstream sees exactly one ``X-Gateway-Org-Id``: A's. Nothing on the
ingest port reads any org's usage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.badinput.rawhttp import Answer, head, request
from tests.harness import Gateway, Upstream

BODY = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"a"},{"name":"b"}]}]}]}'
ZERO = {"requests": 0, "bytes": 0, "items": 0}


@dataclass(frozen=True)
class Tenants:
    a: str
    a_key: str
    b: str
    b_key: str


@pytest.fixture
def tenants(gateway: Gateway, request: pytest.FixtureRequest) -> Tenants:
    name = request.node.name[:40]
    a, a_key = gateway.new_tenant(f"a-{name}")
    b, b_key = gateway.new_tenant(f"b-{name}")
    return Tenants(a, a_key, b, b_key)


def send(
    gateway: Gateway, headers: list[tuple[bytes, bytes]], target: bytes = b"/v1/traces"
) -> Answer:
    host, port = gateway.url.removeprefix("http://").split(":")
    all_headers = [
        (b"Content-Type", b"application/json"),
        *headers,
        (b"Content-Length", str(len(BODY)).encode()),
    ]
    return request(host, int(port), head("POST", target, all_headers) + BODY)


def org_headers(headers: list[tuple[str, str]]) -> list[str]:
    return [v for n, v in headers if n.lower() == "x-gateway-org-id"]


def forged(b: str) -> dict[str, list[tuple[bytes, bytes]]]:
    """Tenant headers a client might add, all naming org B."""
    o = b.encode()
    return {
        "canonical": [(b"X-Gateway-Org-Id", o)],
        "lowercase": [(b"x-gateway-org-id", o)],
        "uppercase": [(b"X-GATEWAY-ORG-ID", o)],
        "duplicates": [(b"X-Gateway-Org-Id", o), (b"x-gateway-org-id", o)],
        "duplicates-around-key": [(b"x-gateway-org-id", o)],  # the key goes between below
        "comma-list": [(b"X-Gateway-Org-Id", o + b", " + o)],
        "empty": [(b"X-Gateway-Org-Id", b"")],
        "x-scope-orgid": [(b"X-Scope-OrgID", o)],
        "x-org-id": [(b"X-Org-Id", o)],
        "x-tenant-id": [(b"X-Tenant-Id", o)],
        "forwarded-for": [(b"X-Forwarded-For", o)],
        "in-query": [],
    }


FORGERIES = list(forged("org_placeholder"))


@pytest.mark.parametrize("how", FORGERIES)
@pytest.mark.parametrize("key_header", ["authorization", "x-ingest-key"])
def test_traffic_with_a_key_counts_and_speaks_for_its_own_org_only(
    gateway: Gateway, upstream: Upstream, tenants: Tenants, how: str, key_header: str
) -> None:
    t = tenants
    key = (
        (b"Authorization", b"Bearer " + t.a_key.encode())
        if key_header == "authorization"
        else (b"X-Ingest-Key", t.a_key.encode())
    )
    extra = forged(t.b)[how]
    headers = [*extra, key, *extra] if how == "duplicates-around-key" else [*extra, key]
    target = b"/v1/traces" + (
        b"?org_id=" + t.b.encode() + b"&org=" + t.b.encode() if how == "in-query" else b""
    )
    requests = 3
    for _ in range(requests):
        answer = send(gateway, headers, target)
        assert answer.status == 200, answer.describe()

    seen = upstream.received(path="/v1/traces")
    mine = [r for r in seen if t.a in org_headers(r.headers)]
    assert len(mine) == requests
    for received in mine:
        assert org_headers(received.headers) == [t.a]
        for _, value in received.headers:
            assert t.a_key not in value and t.b_key not in value
    assert upstream.received(org_id=t.b) == []
    assert gateway.usage(t.a) == {"requests": requests, "bytes": requests * len(BODY), "items": 6}
    assert gateway.usage(t.b) == ZERO


def test_a_second_key_header_of_another_org_never_moves_that_orgs_usage(
    gateway: Gateway, upstream: Upstream, tenants: Tenants
) -> None:
    """Two keys in one request are refused (400), in either order: no org is charged for a
    request whose attribution depends on which header a reader takes first."""
    t = tenants
    before_a, before_b = gateway.usage(t.a)["requests"], gateway.usage(t.b)["requests"]
    received = len(upstream.received())
    a = (b"Authorization", b"Bearer " + t.a_key.encode())
    b = (b"X-Ingest-Key", t.b_key.encode())
    assert send(gateway, [a, b]).status == 400
    assert send(gateway, [b, a]).status == 400
    assert gateway.usage(t.a)["requests"] == before_a
    assert gateway.usage(t.b)["requests"] == before_b
    assert len(upstream.received()) == received


def test_a_logpush_query_key_and_another_header_key_are_refused(
    gateway: Gateway, upstream: Upstream, tenants: Tenants
) -> None:
    t = tenants
    before = gateway.usage(t.a)["requests"] + gateway.usage(t.b)["requests"]
    target = b"/v1/logpush/app?key=" + t.b_key.encode()
    answer = send(gateway, [(b"Authorization", b"Bearer " + t.a_key.encode())], target)
    assert answer.status == 400, answer.describe()  # two keys: neither is charged
    assert gateway.usage(t.a)["requests"] + gateway.usage(t.b)["requests"] == before
    same = send(gateway, [(b"Authorization", b"Bearer " + t.b_key.encode())], target)
    assert same.status == 200, same.describe()  # the same key twice is one key
    assert gateway.usage(t.a)["requests"] + gateway.usage(t.b)["requests"] == before + 1
    for org in (t.a, t.b):
        for received in upstream.received(org_id=org):
            assert t.b_key not in received.query and t.a_key not in received.query


def test_no_ingest_route_reads_an_orgs_usage(gateway: Gateway, tenants: Tenants) -> None:
    t = tenants
    key = (b"Authorization", b"Bearer " + t.a_key.encode())
    host, port = gateway.url.removeprefix("http://").split(":")
    for target in (
        f"/admin/orgs/{t.b}/usage".encode(),
        f"/admin/orgs/{t.b}".encode(),
        f"/admin/orgs/{t.b}/billing".encode(),
        b"/metrics",
    ):
        answer = request(host, int(port), head("GET", target, [key]))
        assert answer.status == 404, answer.describe()
        assert t.b not in answer.body.decode("latin-1")
    assert gateway.usage(t.b) == ZERO


def test_no_forwarded_header_reads_as_the_org_header_under_cgi_rules(
    gateway: Gateway, upstream: Upstream, tenants: Tenants
) -> None:
    t = tenants
    key = (b"Authorization", b"Bearer " + t.a_key.encode())
    answer = send(gateway, [(b"X_Gateway_Org_Id", t.b.encode()), key])
    assert answer.status == 200, answer.describe()
    (received,) = upstream.received(org_id=t.a)
    cgi = [v for n, v in received.headers if n.lower().replace("_", "-") == "x-gateway-org-id"]
    assert cgi == [t.a], json.dumps(received.headers)
