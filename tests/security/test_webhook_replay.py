"""Webhooks signed outside the 300 s tolerance are refused (400) and store nothing.

A replayed delivery carries a valid signature over an old timestamp; it must be refused as
``stale_timestamp`` before anything is parsed or stored, for every provider and in both
directions (past and future). A fresh delivery of the same kind is stored, which shows the
refusal is about the timestamp alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from tests.harness import Gateway
from tests.security.signing import (
    autumn_event,
    paddle_event,
    paddle_headers,
    stripe_event,
    stripe_headers,
    svix_headers,
)

TOLERANCE = 300

Body = Callable[[str], bytes]
Sign = Callable[[bytes, str, int], dict[str, str]]
PROVIDERS: dict[str, tuple[Body, Sign]] = {
    "stripe": (stripe_event, lambda body, _id, at: stripe_headers(body, at)),
    "paddle": (paddle_event, lambda body, _id, at: paddle_headers(body, at)),
    "autumn": (lambda _id: autumn_event(), lambda body, id_, at: svix_headers(body, id_, at)),
}
SKEWS = {
    "301s-old": -(TOLERANCE + 1),
    "1h-old": -3600,
    "1d-old": -86400,
    "epoch": None,
    "301s-ahead": TOLERANCE + 1,
    "1h-ahead": 3600,
}


def stored_ids(gateway: Gateway) -> set[str]:
    response = gateway.admin("GET", "/admin/webhooks/events?limit=1000")
    assert response.status_code == 200, response.text
    return {event["event_id"] for event in response.json()["events"]}


def deliver(
    gateway: Gateway, provider: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    return httpx.post(f"{gateway.url}/webhooks/{provider}", content=body, headers=headers)


@pytest.mark.parametrize("skew", list(SKEWS))
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_a_delivery_outside_the_tolerance_is_refused_and_stores_nothing(
    gateway: Gateway, provider: str, skew: str
) -> None:
    event_id = f"evt_replay_{provider}_{skew.replace('-', '_')}"
    offset = SKEWS[skew]
    at = 0 if offset is None else int(time.time()) + offset
    make_body, sign = PROVIDERS[provider]
    body = make_body(event_id)
    before = stored_ids(gateway)

    response = deliver(gateway, provider, body, sign(body, event_id, at))

    assert response.status_code == 400, response.text
    assert response.json() == {"error": "invalid_signature", "reason": "stale_timestamp"}
    assert stored_ids(gateway) == before
    assert event_id not in stored_ids(gateway)


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_a_replay_of_a_stored_delivery_with_an_old_timestamp_changes_nothing(
    gateway: Gateway, provider: str
) -> None:
    event_id = f"evt_fresh_{provider}"
    make_body, sign = PROVIDERS[provider]
    body = make_body(event_id)
    first = deliver(gateway, provider, body, sign(body, event_id, int(time.time())))
    assert first.status_code == 200, first.text
    after_first = stored_ids(gateway)
    assert event_id in after_first

    old = sign(body, event_id, int(time.time()) - TOLERANCE - 5)
    replay = deliver(gateway, provider, body, old)
    assert (replay.status_code, replay.json()["reason"]) == (400, "stale_timestamp")
    assert stored_ids(gateway) == after_first


def test_just_inside_the_tolerance_is_accepted(gateway: Gateway) -> None:
    event_id = "evt_inside_tolerance"
    body = stripe_event(event_id)
    response = deliver(gateway, "stripe", body, stripe_headers(body, int(time.time()) - 270))
    assert response.status_code == 200, response.text
    assert event_id in stored_ids(gateway)
