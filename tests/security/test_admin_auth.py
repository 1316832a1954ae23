"""The admin API and /metrics need the admin token; the admin listener is not on the ingest port.

These tests send hundreds of wrong tokens from one address: past 10 failures in a second the
refusal is 429 ``rate_limited`` instead of 401 (tests/security/test_admin_throttle.py).
"""

from __future__ import annotations

import base64

import pytest

from tests.badinput.rawhttp import Answer, head, request
from tests.harness import ADMIN_TOKEN, Gateway

TOKEN = ADMIN_TOKEN.encode()
WRONG_TOKENS: dict[str, list[tuple[bytes, bytes]]] = {
    "missing": [],
    "empty": [(b"Authorization", b"")],
    "bearer-empty": [(b"Authorization", b"Bearer ")],
    "wrong": [(b"Authorization", b"Bearer not-the-token")],
    "prefix": [(b"Authorization", b"Bearer " + TOKEN[:-1])],
    "extended": [(b"Authorization", b"Bearer " + TOKEN + b"0")],
    "case-changed": [(b"Authorization", b"Bearer " + TOKEN.upper())],
    "no-scheme": [(b"Authorization", TOKEN)],
    "token-scheme": [(b"Authorization", b"Token " + TOKEN)],
    "basic": [(b"Authorization", b"Basic " + base64.b64encode(b"admin:" + TOKEN))],
    "bearer-tab": [(b"Authorization", b"Bearer\t" + TOKEN)],
    "two-spaces": [(b"Authorization", b"Bearer  " + TOKEN)],
    "space-inside": [(b"Authorization", b"Bearer " + TOKEN[:5] + b" " + TOKEN[5:])],
    "nbsp-after": [(b"Authorization", b"Bearer " + TOKEN + b"\xa0")],
    "x-admin-token": [(b"X-Admin-Token", TOKEN)],
    "proxy-authorization": [(b"Proxy-Authorization", b"Bearer " + TOKEN)],
    "cookie": [(b"Cookie", b"token=" + TOKEN)],
    "wrong-then-right": [
        (b"Authorization", b"Bearer wrong"),
        (b"Authorization", b"Bearer " + TOKEN),
    ],
}
ROUTES = [
    ("GET", b"/metrics"),
    ("GET", b"/admin/openapi.json"),
    ("POST", b"/admin/orgs"),
    ("GET", b"/admin/orgs/{org}"),
    ("PATCH", b"/admin/orgs/{org}"),
    ("POST", b"/admin/orgs/{org}/keys"),
    ("DELETE", b"/admin/keys/{key}"),
    ("GET", b"/admin/orgs/{org}/usage"),
    ("PUT", b"/admin/orgs/{org}/suspension"),
    ("GET", b"/admin/orgs/{org}/billing"),
    ("GET", b"/admin/webhooks/events"),
    ("GET", b"/admin/audit"),
]
BODIES = {
    "POST": b'{"name":"intruder"}',
    "PATCH": b'{"name":"renamed"}',
    "PUT": b'{"suspended":true}',
}


@pytest.fixture(scope="module")
def ids(gateway: Gateway) -> dict[str, str]:
    org, _key = gateway.new_tenant("admin-auth")
    key_id, _ = gateway.create_key(org)
    return {"org": org, "key": key_id}


REFUSED = {(401, b'{"error":"unauthorized"}'), (429, b'{"error":"rate_limited"}')}


def call(
    port: int,
    method: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
) -> Answer:
    body = BODIES.get(method, b"")
    sent = [*headers, (b"Content-Type", b"application/json")]
    sent.append((b"Content-Length", str(len(body)).encode()))
    return request("127.0.0.1", port, head(method, target, sent) + body)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def route_target(target: bytes, ids: dict[str, str]) -> bytes:
    return target.replace(b"{org}", ids["org"].encode()).replace(b"{key}", ids["key"].encode())


@pytest.mark.parametrize("variant", list(WRONG_TOKENS))
@pytest.mark.parametrize(("method", "target"), ROUTES, ids=[f"{m} {t.decode()}" for m, t in ROUTES])
def test_a_wrong_admin_token_gets_401_and_changes_nothing(
    gateway: Gateway, ids: dict[str, str], variant: str, method: str, target: bytes
) -> None:
    answer = call(
        port_of(gateway.admin_url), method, route_target(target, ids), WRONG_TOKENS[variant]
    )
    assert (answer.status, answer.body) in REFUSED, answer.describe()


def test_nothing_changed_after_all_the_refused_admin_calls(
    gateway: Gateway, ids: dict[str, str]
) -> None:
    org = gateway.admin("GET", f"/admin/orgs/{ids['org']}").json()
    assert (org["name"], org["suspended"]) == ("admin-auth", False)
    audit = gateway.admin("GET", "/admin/audit?limit=1000").json()["entries"]
    assert "intruder" not in str(audit) and "renamed" not in str(audit)
    # The key was not revoked by any refused DELETE.
    _, key = gateway.create_key(ids["org"])
    assert key


def test_the_right_token_is_accepted(gateway: Gateway) -> None:
    right = [(b"Authorization", b"Bearer " + TOKEN)]
    assert call(port_of(gateway.admin_url), "GET", b"/metrics", right).status == 200
    assert call(port_of(gateway.admin_url), "GET", b"/admin/openapi.json", right).status == 200


def test_an_ingest_key_is_not_an_admin_token(gateway: Gateway) -> None:
    _, key = gateway.new_tenant("admin-auth-ingest-key")
    headers = [(b"Authorization", b"Bearer " + key.encode())]
    for method, target in (("GET", b"/metrics"), ("POST", b"/admin/orgs")):
        answer = call(port_of(gateway.admin_url), method, target, headers)
        assert (answer.status, answer.body) in REFUSED, answer.describe()


def test_the_admin_token_is_not_an_ingest_key(gateway: Gateway) -> None:
    headers = [(b"Authorization", b"Bearer " + TOKEN)]
    assert call(port_of(gateway.url), "POST", b"/v1/traces", headers).status == 401


@pytest.mark.parametrize(("method", "target"), ROUTES, ids=[f"{m} {t.decode()}" for m, t in ROUTES])
def test_the_admin_api_is_not_served_on_the_ingest_port(
    gateway: Gateway, ids: dict[str, str], method: str, target: bytes
) -> None:
    right = [(b"Authorization", b"Bearer " + TOKEN)]
    answer = call(port_of(gateway.url), method, route_target(target, ids), right)
    assert answer.status == 404, answer.describe()
    assert answer.body == b'{"error":"not_found"}'


def test_path_tricks_on_the_ingest_port_never_reach_the_admin_api(gateway: Gateway) -> None:
    right = [(b"Authorization", b"Bearer " + TOKEN)]
    before = gateway.admin("GET", "/admin/audit?limit=1000").json()["entries"]
    for target in (
        b"//admin/orgs",
        b"/./admin/orgs",
        b"/healthz/../admin/orgs",
        b"/%61dmin/orgs",
        b"/webhooks/../admin/orgs",
        b"/ADMIN/orgs",
    ):
        answer = call(port_of(gateway.url), "POST", target, right)
        assert answer.status in {400, 404}, (target, answer.describe())
    assert gateway.admin("GET", "/admin/audit?limit=1000").json()["entries"] == before


def test_the_admin_listener_answers_on_loopback_only(gateway: Gateway) -> None:
    from pathlib import Path

    table = Path("/proc/net/tcp")
    if not table.exists():
        pytest.skip("needs Linux /proc/net/tcp")
    listening = set()
    for line in table.read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port_of(gateway.admin_url):
            listening.add(address)
    assert listening == {"0100007F"}  # 127.0.0.1
