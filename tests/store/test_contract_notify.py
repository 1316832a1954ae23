"""The Store contract, notifications outbox part: every backend must pass every test here."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from datetime import UTC, datetime

from gateway.store import Store
from policies.billing import BillingChange, BillingState
from policies.model import Limits
from tests.store.conftest import NewStore

T0 = 1_764_547_200.0


async def claim(store: Store, event_id: str, key: str, now: float = T0) -> bool:
    return await store.claim_notification(
        event_id, key, "org_1", "usage.threshold", "http://receiver.test/hook", '{"id": 1}', now
    )


async def test_a_claim_is_taken_once_and_its_event_is_due_at_once(store: Store) -> None:
    assert await claim(store, "evt_a", "usage.threshold|org_1||items|p|50") is True
    assert await claim(store, "evt_b", "usage.threshold|org_1||items|p|50") is False
    (due,) = await store.due_notifications(T0, lease=60, limit=10)
    assert (due.id, due.org_id, due.type, due.attempts) == ("evt_a", "org_1", "usage.threshold", 0)
    assert (due.url, due.body, due.created_at) == ("http://receiver.test/hook", '{"id": 1}', T0)
    assert await store.due_notifications(T0 + 59, lease=60, limit=10) == []  # leased
    assert [e.id for e in await store.due_notifications(T0 + 60, lease=60, limit=10)] == ["evt_a"]


async def test_attempts_deliver_retry_or_give_up(store: Store) -> None:
    for n in range(3):
        await claim(store, f"evt_{n}", f"claim-{n}")
    await store.notification_attempted("evt_0", T0 + 1, None, None)
    await store.notification_attempted("evt_1", T0 + 1, "HTTP 503", T0 + 10)
    await store.notification_attempted("evt_2", T0 + 1, "ConnectError", None)
    assert await store.due_notifications(T0 + 5, lease=60, limit=10) == []
    (again,) = await store.due_notifications(T0 + 10, lease=60, limit=10)
    assert (again.id, again.attempts) == ("evt_1", 1)
    shown = {row["id"]: row for row in await store.notifications("org_1", 10)}
    assert shown["evt_0"]["delivered_at"] == T0 + 1 and shown["evt_0"]["last_error"] is None
    assert shown["evt_1"]["last_error"] == "HTTP 503" and shown["evt_1"]["attempts"] == 1
    assert shown["evt_2"]["failed_at"] == T0 + 1 and shown["evt_2"]["delivered_at"] is None
    assert await store.notifications("org_other", 10) == []
    assert len(await store.notifications(None, 2)) == 2


async def test_two_stores_on_one_database_claim_and_lease_each_event_once(
    durable: NewStore,
) -> None:
    a, b = durable(), durable()
    await a.open()
    await b.open()
    try:
        won = await asyncio.gather(
            *(claim(s, f"evt_{i}", "one-claim") for i, s in enumerate([a, b] * 5))
        )
        assert sum(won) == 1
        for n in range(20):
            await claim(a, f"evt_more_{n}", f"claim-{n}")
        leased = await asyncio.gather(
            *(s.due_notifications(T0, lease=60, limit=7) for s in [a, b, a, b])
        )
        ids = [event.id for batch in leased for event in batch]
        assert len(ids) == len(set(ids)) == 21  # every event leased, none twice
    finally:
        await a.close()
        await b.close()


async def test_a_billing_suspension_starting_and_ending_is_one_event_each(store: Store) -> None:
    org = await store.create_org("acme", Limits(), None)
    began = datetime(2026, 12, 1, tzinfo=UTC)

    def suspend(state: BillingState) -> BillingChange:
        return BillingChange(replace(state, suspended_at=began, suspension_reason="overdue"))

    def lift(state: BillingState) -> BillingChange:
        return BillingChange(replace(state, suspended_at=None, suspension_reason=None))

    for decide in (suspend, suspend, lift, lift):  # the second of each changes nothing
        await store.update_billing(org.id, decide, actor="reconciler", now=began)
    rows = sorted(await store.notifications(org.id, 10), key=lambda r: r["type"])
    assert [row["type"] for row in rows] == ["billing.suspended", "billing.unsuspended"]
    for row in rows:
        event = json.loads(row["body"])
        assert event["id"] == row["id"] and event["type"] == row["type"]
        assert event["data"] == {
            "org_id": org.id,
            "key_id": None,
            "suspended_at": began.isoformat(),
            "reason": "overdue" if row["type"] == "billing.suspended" else None,
        }
    due = await store.due_notifications(time.time(), lease=60, limit=10)
    assert {event.url for event in due} == {""}  # sent to the URL configured at delivery
