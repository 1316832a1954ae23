"""Nothing reaches an upstream without a valid ingest key.

Missing, unknown, revoked and malformed keys, keys in headers the gateway does not read, and
whitespace variants of a real key are all refused with 401 ``invalid_ingest_key``, on every
ingest route, and the upstream receives nothing. Requests go over raw sockets so that no
client normalises what is sent.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from gateway.responses import decode_status_json
from tests.badinput.rawhttp import Answer, head, request
from tests.harness import Gateway, Upstream

BODY = b'{"resourceSpans":[]}'
ROUTES = [b"/v1/traces", b"/v1/logs", b"/v1/metrics", b"/v1/logpush/app"]


@dataclass(frozen=True)
class Keys:
    valid: str
    revoked: str
    other_org_revoked: str


@pytest.fixture(scope="module")
def keys(gateway: Gateway) -> Keys:
    org_a = gateway.create_org("keys-a")
    _, valid = gateway.create_key(org_a)
    revoked_id, revoked = gateway.create_key(org_a)
    assert gateway.admin("DELETE", f"/admin/keys/{revoked_id}").status_code == 204
    org_b = gateway.create_org("keys-b")
    other_id, other = gateway.create_key(org_b)
    assert gateway.admin("DELETE", f"/admin/keys/{other_id}").status_code == 204
    return Keys(valid, revoked, other)


@pytest.fixture
def nothing_forwarded(upstream: Upstream) -> Iterator[None]:
    before = len(upstream.received())
    yield
    assert upstream.received()[before:] == [], "a request without a valid key was forwarded"


def send(
    gateway: Gateway,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes = BODY,
) -> Answer:
    host, port = gateway.url.removeprefix("http://").split(":")
    all_headers = [
        (b"Content-Type", b"application/json"),
        *headers,
        (b"Content-Length", str(len(body)).encode()),
    ]
    return request(host, int(port), head("POST", target, all_headers) + body)


def assert_refused(answer: Answer) -> None:
    assert answer.status == 401, answer.describe()
    body = json.loads(answer.body)
    # OTLP/JSON gets a google.rpc.Status, logpush the plain {"error": code}.
    reason = body.get("error") or decode_status_json(answer.body)[1]
    assert reason == "invalid_ingest_key"


Variant = tuple[list[tuple[bytes, bytes]], bytes]


def variants(keys: Keys) -> dict[str, Variant]:
    """(headers, extra query) of requests whose key is not a valid one, by name."""
    k = keys.valid.encode()
    b64 = base64.b64encode(k + b":").decode().encode()
    return {
        "missing": ([], b""),
        "empty-bearer": ([(b"Authorization", b"Bearer ")], b""),
        "empty-x-ingest-key": ([(b"X-Ingest-Key", b"")], b""),
        "unknown": ([(b"Authorization", b"Bearer igk_" + b"A" * 43)], b""),
        "unknown-x-ingest-key": ([(b"X-Ingest-Key", b"igk_unknown")], b""),
        "revoked": ([(b"Authorization", b"Bearer " + keys.revoked.encode())], b""),
        "revoked-x-ingest-key": ([(b"X-Ingest-Key", keys.revoked.encode())], b""),
        "other-org-after-revocation": (
            [(b"Authorization", b"Bearer " + keys.other_org_revoked.encode())],
            b"",
        ),
        "other-org-after-revocation-query": ([], b"?key=" + keys.other_org_revoked.encode()),
        "truncated": ([(b"Authorization", b"Bearer " + k[:-1])], b""),
        "extended": ([(b"Authorization", b"Bearer " + k + b"x")], b""),
        "case-changed": ([(b"Authorization", b"Bearer " + k.swapcase())], b""),
        "too-long": ([(b"Authorization", b"Bearer " + k + b"A" * 300)], b""),
        # The key in headers the gateway does not read.
        "no-scheme": ([(b"Authorization", k)], b""),
        "basic-scheme": ([(b"Authorization", b"Basic " + b64)], b""),
        "token-scheme": ([(b"Authorization", b"Token " + k)], b""),
        "bearer-no-space": ([(b"Authorization", b"Bearer" + k)], b""),
        "bearer-tab": ([(b"Authorization", b"Bearer\t" + k)], b""),
        "proxy-authorization": ([(b"Proxy-Authorization", b"Bearer " + k)], b""),
        "x-api-key": ([(b"X-Api-Key", k)], b""),
        "api-key": ([(b"Api-Key", k)], b""),
        "x-ingest-token": ([(b"X-Ingest-Token", k)], b""),
        "x-ingest-key-underscore": ([(b"X_Ingest_Key", k)], b""),
        "cookie": ([(b"Cookie", b"key=" + k)], b""),
        "x-gateway-org-id-only": ([(b"X-Gateway-Org-Id", b"org_anything")], b""),
        # Whitespace inside or glued to the key: a different key.
        "space-inside": ([(b"Authorization", b"Bearer " + k[:8] + b" " + k[8:])], b""),
        "tab-inside": ([(b"X-Ingest-Key", k[:8] + b"\t" + k[8:])], b""),
        "nbsp-after": ([(b"Authorization", b"Bearer " + k + b"\xa0")], b""),
        "nbsp-before": ([(b"X-Ingest-Key", b"\xa0" + k)], b""),
        "space-then-junk": ([(b"Authorization", b"Bearer " + k + b" x")], b""),
        "two-keys-in-one-header": ([(b"X-Ingest-Key", k + b", " + k)], b""),
        "percent-encoded-space-query": ([], b"?key=%20" + k + b"x"),
    }


VARIANT_NAMES = list(variants(Keys("igk_valid_placeholder", "r", "o")))


@pytest.mark.usefixtures("nothing_forwarded")
@pytest.mark.parametrize("route", ROUTES, ids=[r.decode() for r in ROUTES])
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_no_valid_key_no_forward(gateway: Gateway, keys: Keys, variant: str, route: bytes) -> None:
    headers, query = variants(keys)[variant]
    assert_refused(send(gateway, route + query, headers))


@pytest.mark.usefixtures("nothing_forwarded")
@pytest.mark.parametrize("route", [b"/v1/traces", b"/v1/logs", b"/v1/metrics"])
def test_the_query_key_is_only_read_on_logpush(gateway: Gateway, keys: Keys, route: bytes) -> None:
    assert_refused(send(gateway, route + b"?key=" + keys.valid.encode(), []))


def test_the_valid_key_is_admitted_on_every_route(
    gateway: Gateway, upstream: Upstream, keys: Keys
) -> None:
    """The control: the same requests with the real key do reach the upstream."""
    before = len(upstream.received())
    for route in ROUTES:
        body = BODY if route != b"/v1/logpush/app" else b'{"a":1}\n'
        answer = send(gateway, route, [(b"Authorization", b"Bearer " + keys.valid.encode())], body)
        assert answer.status == 200, answer.describe()
    answer = send(gateway, b"/v1/logpush/app?key=" + keys.valid.encode(), [], b'{"a":1}\n')
    assert answer.status == 200, answer.describe()
    assert len(upstream.received()) == before + len(ROUTES) + 1


def test_surrounding_whitespace_is_http_padding_not_part_of_the_key(
    gateway: Gateway, upstream: Upstream, keys: Keys
) -> None:
    """Recorded behaviour: spaces around the key (HTTP OWS, or two after Bearer) are trimmed."""
    before = len(upstream.received())
    k = keys.valid.encode()
    for value in (b"Bearer  " + k, b"Bearer " + k + b"  "):
        answer = send(gateway, b"/v1/traces", [(b"Authorization", value)])
        assert answer.status == 200, answer.describe()
    assert len(upstream.received()) == before + 2


# Paths under /v1/ that are not exactly a gated route.
UNGATED = [
    b"/v1/traces/",
    b"/v1/Traces",
    b"/v1//traces",
    b"/v1/traces;x",
    b"/v1/logpush",
    b"/v1/logpush/",
    b"/v1/anything",
    b"/v1/x/../traces",
    b"/v1/./traces",
    b"/v1/%2e%2e/v1/traces",
    b"/v1/traces%2f",
]


# MeteringMiddleware.__call__ (gateway/ingest/metering.py) runs `if signal is None: await
# self.app(scope, receive, send)` for any path that is not exactly a gated route, and
# IngestApp.__call__ (gateway/ingest/app.py) sends every `/v1/` path to that middleware in front of
# ReverseProxy, which forwards any path; aiohttp/yarl then normalises dot segments, so
# /v1/x/../traces lands on the upstream's /v1/traces: keyless, without X-Gateway-Org-Id, and
# with no usage counted (the client sees the upstream's 200).
@pytest.mark.parametrize("target", UNGATED, ids=[t.decode() for t in UNGATED])
def test_no_path_under_v1_reaches_the_upstream_without_a_key(
    gateway: Gateway, upstream: Upstream, target: bytes
) -> None:
    before = len(upstream.received())
    answer = send(gateway, target, [])
    assert upstream.received()[before:] == []
    assert answer.status is not None and 400 <= answer.status < 500, answer.describe()
