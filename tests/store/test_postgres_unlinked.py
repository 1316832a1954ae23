"""PostgreSQL only: a delivery and the link of its customer, interleaved on purpose.

SQLite runs every write under one lock and the memory store never awaits, so only
PostgreSQL can run a delivery's transaction and a link's at the same time. A trigger holds
the delivery just before it records its event as unlinked, so that the link runs in the
gap that used to lose the event.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from gateway.store.base import Decide
from gateway.store.postgres import PostgresStore, split_url
from policies.billing import BillingChange, BillingEvent, BillingState, CreditEntry
from policies.model import Limits
from tests.store.conftest import drop_schema, new_schema_url

T0 = datetime(2024, 5, 3, 12, 0, tzinfo=UTC)

# Before the row becomes 'unlinked', wait for the advisory lock the test holds.
HOLD = """
CREATE FUNCTION hold_unlinked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'unlinked' THEN
        PERFORM pg_advisory_xact_lock({key});
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER hold_unlinked BEFORE UPDATE ON webhook_events
    FOR EACH ROW EXECUTE FUNCTION hold_unlinked();
"""


@pytest.fixture
async def url() -> AsyncIterator[str]:
    url = new_schema_url()
    yield url
    await drop_schema(url)


def topup(event_id: str, customer: str) -> BillingEvent:
    return BillingEvent(
        "stripe", event_id, "checkout.session.completed", "credit_purchased", customer, T0,
        object_id=f"cs_{event_id}", amount_minor=500,
    )  # fmt: skip


def credit(kept: BillingEvent) -> Decide:
    entry = CreditEntry(kept.amount_minor or 0, "top_up", f"topup:{kept.event_id}")
    return lambda state: BillingChange(state, credits=(entry,))


def never(_state: BillingState) -> BillingChange:
    raise AssertionError("an unlinked event is decided only once its customer is linked")


async def test_a_delivery_finding_no_link_while_the_link_commits_is_still_applied(
    url: str,
) -> None:
    """Regression: the link committed and applied the unlinked events between the
    delivery's lookup of its customer and its commit, so the event stayed unlinked."""
    key = 1 + secrets.randbelow(2**31 - 1)  # below 2**31: pg_locks shows it as objid
    store = PostgresStore(url)
    await store.open()
    dsn, schema = split_url(url)
    raw = await asyncpg.connect(dsn, server_settings={"search_path": schema or "public"})
    try:
        await raw.execute(HOLD.replace("{key}", str(key)))
        org = await store.create_org("acme", Limits(), None)
        await raw.execute("SELECT pg_advisory_lock($1)", key)
        delivery = asyncio.create_task(
            store.apply_billing_event(topup("evt_1", "cus_1"), never, T0)
        )
        waiting = """SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
            AND objid::text::bigint = $1 AND objsubid = 1 AND NOT granted"""
        for _ in range(200):
            if await raw.fetchval(waiting, key):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the delivery never reached the trigger")

        async def link() -> None:
            await store.set_billing_customers(org.id, {"stripe": "cus_1"})
            await store.apply_unlinked_events("stripe", "cus_1", credit, T0)

        linking = asyncio.create_task(link())
        await asyncio.sleep(0.3)  # the link's time to commit, unless it waits for the delivery
        await raw.execute("SELECT pg_advisory_unlock($1)", key)
        await asyncio.wait_for(asyncio.gather(delivery, linking), 10)

        (row,) = await store.webhook_events()
        assert (row["status"], row["org_id"]) == ("applied", org.id)
        assert await store.balance(org.id) == 500
    finally:
        await raw.close()
        await store.close()
