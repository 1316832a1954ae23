"""The Store contract, plan catalog part: every backend must pass every test here."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from gateway.errors import Conflict
from gateway.store import Store
from gateway.store.records import OrgChanges
from policies.billing import BillingChange, BillingState
from policies.entitlements import Plan, parse_plan
from policies.model import Limits
from tests.store.conftest import NewStore

PRO = parse_plan(
    "pro",
    {"limits": {"items": 1_000, "traces.items": 600}, "overage": {"items": 100, "logs.bytes": None},
     "rate_requests": 50, "grant_minor": 2_000},
)  # fmt: skip
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def on_plan(name: str):  # type: ignore[no-untyped-def]
    def decide(state: BillingState) -> BillingChange:
        return BillingChange(replace(state, plan=name), audit=())

    return decide


async def test_a_plan_reads_back_equal_and_is_replaced_whole(store: Store) -> None:
    assert await store.get_plan("pro") is None
    await store.put_plan(PRO)
    assert await store.get_plan("pro") == PRO
    smaller = Plan("pro", limits={"items": 5})
    await store.put_plan(smaller)
    assert await store.get_plan("pro") == smaller
    await store.put_plan(Plan("basic"))
    assert [p.name for p in await store.list_plans()] == ["basic", "pro"]


async def test_a_plan_an_org_is_on_cannot_be_deleted(store: Store) -> None:
    await store.put_plan(PRO)
    await store.put_plan(Plan("free"))
    org = await store.create_org("acme", Limits(), None)
    assert await store.update_billing(org.id, on_plan("pro"), actor="test", now=T0) is not None
    with pytest.raises(Conflict):
        await store.delete_plan("pro")
    assert await store.get_plan("pro") == PRO
    await store.update_billing(org.id, on_plan("free"), actor="test", now=T0)
    assert await store.delete_plan("pro") is True
    assert await store.delete_plan("pro") is False
    assert [p.name for p in await store.list_plans()] == ["free"]


async def test_an_org_on_a_plan_routes_with_the_plan_s_limits_under_its_own(store: Store) -> None:
    await store.put_plan(Plan("pro", limits={"items": 1_000, "traces.items": 600}, rate_bytes=9))
    org = await store.create_org("acme", Limits(items=50), None)
    await store.create_key(org.id, b"hash-plan")
    routing = await store.routing_for_key(b"hash-plan")
    assert routing is not None and routing.limits == Limits(items=50)  # not on it yet
    await store.update_billing(org.id, on_plan("pro"), actor="test", now=T0)
    routing = await store.routing_for_key(b"hash-plan")
    assert routing is not None
    assert routing.limits == Limits.from_dict({"items": 50, "traces.items": 600, "rate_bytes": 9})
    record = await store.get_org(org.id)
    assert record is not None and (record.plan, record.limits) == ("pro", Limits(items=50))
    await store.put_plan(Plan("pro", limits={"traces.items": 5}))  # applies to its orgs at once
    routing = await store.routing_for_key(b"hash-plan")
    assert routing is not None and routing.limits == Limits.from_dict(
        {"items": 50, "traces.items": 5}
    )


async def test_an_unlimited_override_reads_back_and_lifts_the_plan_s_limit(store: Store) -> None:
    await store.put_plan(Plan("pro", limits={"items": 1_000, "traces.items": 600}))
    own = Limits.from_overrides({"traces.items": None, "bytes": 7})
    org = await store.create_org("acme", own, None)
    await store.update_billing(org.id, on_plan("pro"), actor="test", now=T0)
    record = await store.get_org(org.id)
    assert record is not None and record.limits.overrides() == {"bytes": 7, "traces.items": None}
    await store.create_key(org.id, b"hash-lifted")
    routing = await store.routing_for_key(b"hash-lifted")
    assert routing is not None and routing.limits == Limits.from_dict({"items": 1_000, "bytes": 7})
    back = await store.update_org(org.id, OrgChanges(limit_changes={"traces.items": "plan"}))
    assert back is not None and back.limits.overrides() == {"bytes": 7}
    assert back.effective_limits.as_dict() == {"items": 1_000, "bytes": 7, "traces.items": 600}


async def test_a_plan_deleted_while_an_org_moves_onto_it_never_leaves_the_org_on_nothing(
    durable: NewStore,
) -> None:
    a, b = durable(), durable()
    await a.open()
    await b.open()
    try:
        org = await a.create_org("racer", Limits(), None)
        await a.put_plan(Plan("free"))
        for n in range(15):
            name = f"race-{n}"
            await a.put_plan(Plan(name, limits={"items": 10}))
            moved, deleted = await asyncio.gather(
                a.update_billing(org.id, on_plan(name), actor="admin", now=T0, known_plan=True),
                b.delete_plan(name),
                return_exceptions=True,
            )
            record = await a.get_org(org.id)
            assert record is not None
            if record.plan == name:  # the move won: the delete saw the org on the plan
                assert isinstance(deleted, Conflict) and await a.get_plan(name) is not None
                assert record.plan_limits is not None
                await a.update_billing(org.id, on_plan("free"), actor="t", now=T0)
            else:  # the delete won: the move found the plan gone
                assert deleted is True and isinstance(moved, Conflict), (moved, deleted)
    finally:
        await a.close()
        await b.close()


async def test_moving_an_org_onto_a_plan_the_catalog_lacks_is_a_conflict(store: Store) -> None:
    await store.put_plan(Plan("free"))
    org = await store.create_org("acme", Limits(), None)
    with pytest.raises(Conflict):
        await store.update_billing(org.id, on_plan("gone"), actor="admin", now=T0, known_plan=True)
    record = await store.get_org(org.id)
    assert record is not None and record.plan == "free"
    # Without known_plan (a provider's plan), the org may be on a plan the catalog lacks.
    await store.update_billing(org.id, on_plan("gone"), actor="stripe", now=T0)
    record = await store.get_org(org.id)
    assert record is not None and (record.plan, record.plan_limits) == ("gone", None)
