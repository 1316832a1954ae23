from __future__ import annotations

import base64
import json
import time

import pytest
from svix.webhooks import Webhook

from policies.notifications import (
    LIMIT_REACHED,
    Crossing,
    NotificationError,
    crossed,
    parse_thresholds,
    retry_delay,
    signature,
    signing_key,
)

SECRET = "whsec_" + base64.b64encode(b"a secret of thirty-two bytes!!!!").decode()


def test_thresholds_are_crossed_at_their_percent_of_the_limit() -> None:
    assert crossed(49, 100, (50, 80, 100)) == ()
    assert crossed(50, 100, (50, 80, 100)) == (50,)
    assert crossed(99, 100, (50, 80, 100)) == (50, 80)
    assert crossed(250, 100, (50, 80, 100)) == (50, 80, 100)
    assert crossed(1, 3, (33,)) == (33,) and crossed(0, 0, (50,)) == ()
    assert crossed(1, 0, (50, 100)) == (50, 100)  # a zero limit is reached by any use


def test_thresholds_parse_or_name_the_setting() -> None:
    assert parse_thresholds("100, 50,80,50") == (50, 80, 100)
    for bad in ("", "fifty", "0", "2000"):
        with pytest.raises(NotificationError, match="GATEWAY_NOTIFY_THRESHOLDS"):
            parse_thresholds(bad)


def test_retries_back_off_from_five_seconds_to_an_hour() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert retry_delay(30) == 3600.0


def test_a_signature_verifies_with_the_svix_library_and_fails_on_any_change() -> None:
    key = signing_key(SECRET)
    body = json.dumps({"type": "usage.threshold", "id": "evt_1"}).encode()
    timestamp = int(time.time())
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, "evt_1", timestamp, body),
    }
    Webhook(SECRET).verify(body, headers)  # raises unless the signature is right
    with pytest.raises(Exception):  # noqa: B017 (the library's own error type)
        Webhook(SECRET).verify(body + b" ", headers)
    with pytest.raises(NotificationError):
        signing_key("whsec_not base64!")
    with pytest.raises(NotificationError):
        signing_key("whsec_" + base64.b64encode(b"short").decode())


def test_a_crossing_is_claimed_once_per_scope_meter_period_and_threshold() -> None:
    a = Crossing(LIMIT_REACHED, "org_1", None, "items", "p0", "p1", 100, 10, 10)
    same = Crossing(LIMIT_REACHED, "org_1", None, "items", "p0", "p1", 100, 12, 10)
    keyed = Crossing(LIMIT_REACHED, "org_1", "key_1", "items", "p0", "p1", 100, 10, 10)
    assert a.claim == same.claim and a.claim != keyed.claim
    assert a.data()["key_id"] is None and keyed.data()["key_id"] == "key_1"
