"""Webhook signatures as each provider computes them, and minimal events of each provider."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

STRIPE_SECRET = "whsec_security_stripe_7f3a9c1e5b"
# Svix secrets are whsec_<base64 of the HMAC key>.
AUTUMN_SECRET = "whsec_" + base64.b64encode(b"security-autumn-key-0123456789").decode()
PADDLE_SECRET = "pdl_ntfset_security_paddle_4d2b8e"
WEBHOOK_ENV = {
    "GATEWAY_STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
    "GATEWAY_AUTUMN_WEBHOOK_SECRET": AUTUMN_SECRET,
    "GATEWAY_PADDLE_WEBHOOK_SECRET": PADDLE_SECRET,
}


def _hex(key: bytes, signed: bytes) -> str:
    return hmac.new(key, signed, hashlib.sha256).hexdigest()


def stripe_signature(body: bytes, at: int, secret: str = STRIPE_SECRET) -> str:
    return _hex(secret.encode(), f"{at}.".encode() + body)


def stripe_headers(
    body: bytes, at: int | None = None, secret: str = STRIPE_SECRET
) -> dict[str, str]:
    t = int(time.time()) if at is None else at
    return {
        "content-type": "application/json",
        "stripe-signature": f"t={t},v1={stripe_signature(body, t, secret)}",
    }


def paddle_signature(body: bytes, at: int, secret: str = PADDLE_SECRET) -> str:
    return _hex(secret.encode(), f"{at}:".encode() + body)


def paddle_headers(
    body: bytes, at: int | None = None, secret: str = PADDLE_SECRET
) -> dict[str, str]:
    ts = int(time.time()) if at is None else at
    return {
        "content-type": "application/json",
        "paddle-signature": f"ts={ts};h1={paddle_signature(body, ts, secret)}",
    }


def svix_signature(body: bytes, message_id: str, at: int, secret: str = AUTUMN_SECRET) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{message_id}.{at}.".encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def svix_headers(
    body: bytes, message_id: str, at: int | None = None, secret: str = AUTUMN_SECRET
) -> dict[str, str]:
    ts = int(time.time()) if at is None else at
    return {
        "content-type": "application/json",
        "svix-id": message_id,
        "svix-timestamp": str(ts),
        "svix-signature": f"v1,{svix_signature(body, message_id, ts, secret)}",
    }


def stripe_event(event_id: str, customer: str = "cus_nobody") -> bytes:
    invoice = {
        "id": f"in_{event_id}",
        "object": "invoice",
        "customer": customer,
        "subscription": "sub_1",
        "billing_reason": "subscription_cycle",
        "lines": {"data": [{"price": {"recurring": {"usage_type": "licensed"}}}]},
    }
    event = {
        "id": event_id,
        "type": "invoice.paid",
        "created": int(time.time()),
        "data": {"object": invoice},
    }
    return json.dumps(event).encode()


def paddle_event(event_id: str) -> bytes:
    occurred = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    event = {
        "event_id": event_id,
        "event_type": "transaction.created",
        "occurred_at": occurred,
        "data": {"id": "txn_1"},
    }
    return json.dumps(event).encode()


def autumn_event() -> bytes:
    return json.dumps({"type": "customer.created", "data": {}}).encode()
