"""No secret, key or signature appears in the gateway's logs or in any error body.

A gateway of its own runs with ``GATEWAY_LOG_LEVEL=debug``, every webhook secret set and the
key-hashing secret generated into its data folder. The test drives valid and invalid ingest
keys, admin calls with good and bad tokens, forged and valid signed webhooks, malformed HTTP
carrying a key, and key creation; then it searches the whole log (after shutdown, so every
line is flushed) and every error body for each secret.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.badinput.rawhttp import head, request
from tests.harness import ADMIN_TOKEN, Gateway, Upstream, start_gateway
from tests.security.signing import (
    AUTUMN_SECRET,
    PADDLE_SECRET,
    STRIPE_SECRET,
    WEBHOOK_ENV,
    paddle_event,
    paddle_signature,
    stripe_event,
    stripe_signature,
    svix_signature,
)

BODY = b'{"resourceSpans":[]}'
BAD_ADMIN_TOKEN = "bad-admin-token-5e1f0c7d9a"
FORGED_SECRET = "whsec_forger_has_no_secret_3c8d"


@dataclass
class Exercise:
    """Everything that must not leak, and every error body the gateway answered."""

    secrets: dict[str, str] = field(default_factory=dict)
    error_bodies: list[tuple[str, bytes]] = field(default_factory=list)
    log: str = ""

    def keep(self, what: str, response: httpx.Response) -> None:
        if response.status_code >= 400:
            self.error_bodies.append((what, response.content))


@pytest.fixture(scope="module")
def exercised(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Exercise]:
    env = {**WEBHOOK_ENV, "GATEWAY_LOG_LEVEL": "debug"}
    gateway = start_gateway(tmp_path_factory.mktemp("no-secrets"), upstream.url, env)
    try:
        exercise = Exercise()
        drive(gateway, exercise)
        exercise.secrets["key secret"] = (gateway.data_dir / "key-secret").read_text().strip()
    finally:
        gateway.terminate()
    exercise.log = gateway.logs()
    yield exercise


def drive(gateway: Gateway, ex: Exercise) -> None:
    s = ex.secrets
    s["admin token"] = ADMIN_TOKEN
    s["bad admin token"] = BAD_ADMIN_TOKEN
    s["stripe webhook secret"] = STRIPE_SECRET
    s["autumn webhook secret"] = AUTUMN_SECRET
    s["autumn webhook key"] = base64.b64decode(AUTUMN_SECRET.removeprefix("whsec_")).decode()
    s["paddle webhook secret"] = PADDLE_SECRET
    s["forger's secret"] = FORGED_SECRET

    # Key creation: the plaintext key comes back once, in the 201 body, and never again.
    org = gateway.create_org("no-secrets")
    key_id, key = gateway.create_key(org)
    s["ingest key"] = key
    s["ingest key body"] = key.removeprefix("igk_")
    revoked_id, revoked = gateway.create_key(org)
    s["revoked ingest key"] = revoked
    assert gateway.admin("DELETE", f"/admin/keys/{revoked_id}").status_code == 204
    s["unknown ingest key"] = "igk_unknown_9b1d7e3a5c0f2468ace"
    assert key_id not in key

    with httpx.Client(base_url=gateway.url, timeout=10) as ingest:
        ok = {"content-type": "application/json"}
        for headers in (
            {**ok, "authorization": f"Bearer {key}"},
            {**ok, "x-ingest-key": key},
        ):
            assert ingest.post("/v1/traces", content=BODY, headers=headers).status_code == 200
        assert ingest.post(f"/v1/logpush/app?key={key}", content=b'{"a":1}\n').status_code == 200
        for bad in (s["unknown ingest key"], revoked, key + "x", ADMIN_TOKEN):
            for headers in ({**ok, "authorization": f"Bearer {bad}"}, {**ok, "x-ingest-key": bad}):
                response = ingest.post("/v1/traces", content=BODY, headers=headers)
                assert response.status_code == 401
                ex.keep(f"ingest with {bad[:6]}...", response)
            response = ingest.post(f"/v1/logpush/app?key={bad}", content=b"{}\n")
            ex.keep("logpush with a bad query key", response)
        # Refusals after a valid key: bad payloads, wrong media type, gzip garbage.
        for headers, body in (
            ({**ok, "authorization": f"Bearer {key}"}, b"{not json " + key.encode()),
            ({"content-type": "text/xml", "authorization": f"Bearer {key}"}, BODY),
            ({**ok, "authorization": f"Bearer {key}", "content-encoding": "gzip"}, b"\x1f\x8bxx"),
            ({**ok, "authorization": f"Bearer {key}", "content-encoding": "br"}, BODY),
        ):
            response = ingest.post("/v1/traces", content=body, headers=headers)
            assert 400 <= response.status_code < 500
            ex.keep("bad payload", response)
        # A /v1/ path with a key in it; admin routes and unknown paths on the ingest port.
        for path in ("/admin/orgs", f"/nope/{key}", "/metrics"):
            ex.keep(path, ingest.post(path, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}))

    with httpx.Client(base_url=gateway.admin_url, timeout=10) as admin:
        for token in (BAD_ADMIN_TOKEN, ADMIN_TOKEN + "x", key, "-"):
            for method, path in (
                ("GET", "/metrics"),
                ("POST", "/admin/orgs"),
                ("GET", f"/admin/orgs/{org}"),
            ):
                response = admin.request(method, path, headers={"authorization": f"Bearer {token}"})
                assert response.status_code in {401, 429}  # 429: over 10 failures in a second
                ex.keep(f"admin {method} {path} with a bad token", response)
        good = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        assert admin.get("/metrics", headers=good).status_code == 200
        assert admin.get(f"/admin/orgs/{org}/usage", headers=good).status_code == 200
        ex.keep(
            "bad org body", admin.post("/admin/orgs", headers=good, content=b"{" + key.encode())
        )
        ex.keep("unknown key id", admin.delete(f"/admin/keys/{key}", headers=good))
        ex.keep("unknown org", admin.get(f"/admin/orgs/{key}", headers=good))

    webhooks(gateway, ex)
    malformed_http(gateway, key)


def webhooks(gateway: Gateway, ex: Exercise) -> None:
    now = int(time.time())
    with httpx.Client(base_url=gateway.url, timeout=10) as ingest:
        # Stripe: forged (another secret), valid, stale, and garbage in the header.
        body = stripe_event("evt_no_secrets_1")
        forged = stripe_signature(body, now, FORGED_SECRET)
        valid = stripe_signature(body, now)
        stale = stripe_signature(body, now - 3600)
        ex.secrets |= {"forged stripe signature": forged, "valid stripe signature": valid}
        ex.secrets["stale stripe signature"] = stale
        for header, status in (
            (f"t={now},v1={forged}", 400),
            (f"t={now - 3600},v1={stale}", 400),
            (f"t={now},v1={forged},v0={valid}", 400),
            (f"garbage {valid}", 400),
            (f"t={now},v1={valid}", 200),
        ):
            response = ingest.post(
                "/webhooks/stripe",
                content=body,
                headers={"content-type": "application/json", "stripe-signature": header},
            )
            assert response.status_code == status, response.text
            ex.keep("stripe webhook", response)
        # Paddle: forged and valid.
        body = paddle_event("evt_no_secrets_paddle")
        forged = paddle_signature(body, now, FORGED_SECRET)
        valid = paddle_signature(body, now)
        ex.secrets |= {"forged paddle signature": forged, "valid paddle signature": valid}
        for header, status in ((f"ts={now};h1={forged}", 400), (f"ts={now};h1={valid}", 200)):
            response = ingest.post(
                "/webhooks/paddle",
                content=body,
                headers={"content-type": "application/json", "paddle-signature": header},
            )
            assert response.status_code == status, response.text
            ex.keep("paddle webhook", response)
        # Autumn (Svix): forged and valid.
        body = b'{"type":"customer.created","data":{}}'
        forged_key = "whsec_" + base64.b64encode(FORGED_SECRET.encode()).decode()
        forged = svix_signature(body, "msg_no_secrets", now, forged_key)
        valid = svix_signature(body, "msg_no_secrets", now)
        ex.secrets |= {"forged svix signature": forged, "valid svix signature": valid}
        for signature, status in ((forged, 400), (valid, 200)):
            headers = {
                "content-type": "application/json",
                "svix-id": "msg_no_secrets",
                "svix-timestamp": str(now),
                "svix-signature": f"v1,{signature}",
            }
            response = ingest.post("/webhooks/autumn", content=body, headers=headers)
            assert response.status_code == status, response.text
            ex.keep("autumn webhook", response)


def malformed_http(gateway: Gateway, key: str) -> None:
    """Requests uvicorn itself refuses, with the key in them: its debug log must not echo it."""
    host, port = gateway.url.removeprefix("http://").split(":")
    auth = (b"Authorization", b"Bearer " + key.encode())
    for data in (
        head(
            "POST",
            b"/v1/traces",
            [auth, (b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")],
        ),
        head("POST", b"/v1/tra\x00ces?key=" + key.encode(), [auth, (b"Content-Length", b"0")]),
        head(
            "POST", b"/v1/traces", [auth, (b"Bad Header", key.encode()), (b"Content-Length", b"0")]
        ),
        b"POST /v1/logpush/app?key=" + key.encode() + b" HTTP/9.9\r\n\r\n",
    ):
        answer = request(host, int(port), data)
        assert answer.status is None or 400 <= answer.status < 500, answer.describe()


def test_the_gateway_logged_at_debug_level(exercised: Exercise) -> None:
    """The search below is only meaningful if the log is not empty."""
    assert "DEBUG" in exercised.log or "debug" in exercised.log.lower(), exercised.log[-2000:]


def test_no_secret_appears_in_the_log(exercised: Exercise) -> None:
    leaked = {
        what for what, secret in exercised.secrets.items() if secret and secret in exercised.log
    }
    assert not leaked, f"in the gateway log: {sorted(leaked)}"


def test_no_secret_appears_in_any_error_body(exercised: Exercise) -> None:
    assert len(exercised.error_bodies) >= 30
    leaked = [
        (where, what)
        for where, body in exercised.error_bodies
        for what, secret in exercised.secrets.items()
        if secret and secret.encode() in body
    ]
    assert not leaked, f"in error bodies: {leaked}"
