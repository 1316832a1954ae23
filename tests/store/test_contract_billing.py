"""The Store contract, billing part: every backend must pass every test here (conftest.py).

Changes are built by hand (small ``decide`` functions): the store only persists what a
decision says, whatever policy made it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.store import Exhausted, Granted, OrgChanges, OrgRecord, ReserveRequest, Store
from gateway.store.base import CustomerTaken, DecideEvent, WebhookOutcome, iso, stored_state
from policies.billing import AuditEntry, BillingChange, BillingEvent, BillingState, CreditEntry
from policies.model import Limits, Period, Prices
from policies.reservations import ChunkPolicy
from tests.store.conftest import NewStore

T0 = datetime(2024, 5, 3, 12, 0, tzinfo=UTC)
MAY = Period(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC))
JUNE = Period(datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC))
PRICED = Prices(requests=1_000, bytes=10, block_over_balance=True)

Decide = Callable[[BillingState], BillingChange]


def event(
    event_id: str = "evt_1", customer: str | None = "cus_1", **fields: object
) -> BillingEvent:
    base = BillingEvent("stripe", event_id, "invoice.paid", "payment_succeeded", customer, T0)
    return replace(base, **fields)  # type: ignore[arg-type]


def credit(amount: int, key: str, source: str = "top_up") -> Decide:
    return lambda state: BillingChange(state, credits=(CreditEntry(amount, source, key),))


def status(value: str, reason: str = "invoice failed") -> Decide:
    def decide(state: BillingState) -> BillingChange:
        new = replace(state, payment_status=value, status_at=T0)  # type: ignore[arg-type]
        return BillingChange(
            new, audit=(AuditEntry("payment_status", state.payment_status, value, reason),)
        )

    return decide


def renewal(period: Period, grant: int) -> Decide:
    """A new period with its grant; the state's own period is left for the claimant to set."""

    def decide(state: BillingState) -> BillingChange:
        entry = CreditEntry(grant, "plan_grant", f"grant:{period.key}")
        return BillingChange(state, new_period=period, period_grants=(entry,))

    return decide


def suspend(state: BillingState) -> BillingChange:
    return BillingChange(replace(state, suspended_at=T0, suspension_reason="overdue"))


async def billed_org(store: Store, customer: str = "cus_1", **limits: int) -> OrgRecord:
    org = await store.create_org("acme", Limits.from_dict(limits), "http://upstream:4318")
    linked = await store.set_billing_customers(org.id, {"stripe": customer})
    assert linked is not None
    return linked


# prices and customers


async def test_prices_read_back_and_reach_routing(store: Store) -> None:
    org = await store.create_org("acme", Limits(requests=5), None)
    assert org.prices == Prices() and org.billing_customers == {}
    await store.create_key(org.id, b"hash-1")

    priced = await store.update_org(org.id, OrgChanges(prices=PRICED))
    assert priced is not None and priced.prices == PRICED
    assert await store.get_org(org.id) == priced
    routing = await store.routing_for_key(b"hash-1")
    assert routing is not None and routing.prices == PRICED
    assert routing == priced.routing()

    # Other changes leave prices alone.
    renamed = await store.update_org(org.id, OrgChanges(name="acme2"))
    assert renamed is not None and renamed.prices == PRICED


async def test_billing_customers_merge_per_provider(store: Store) -> None:
    org = await store.create_org("acme", Limits(), None)
    other = await store.create_org("other", Limits(), None)
    first = await store.set_billing_customers(org.id, {"stripe": "cus_1"})
    assert first is not None and first.billing_customers == {"stripe": "cus_1"}
    merged = await store.set_billing_customers(org.id, {"autumn": "org-acme"})
    assert merged is not None
    assert merged.billing_customers == {"stripe": "cus_1", "autumn": "org-acme"}
    moved = await store.set_billing_customers(org.id, {"stripe": "cus_2"})
    assert moved is not None
    assert moved.billing_customers == {"stripe": "cus_2", "autumn": "org-acme"}
    assert await store.get_org(org.id) == moved

    # The id the org let go of is free for another org.
    taken = await store.set_billing_customers(other.id, {"stripe": "cus_1"})
    assert taken is not None and taken.billing_customers == {"stripe": "cus_1"}
    assert await store.billing_orgs() == sorted(
        [(org.id, {"autumn": "org-acme", "stripe": "cus_2"}), (other.id, {"stripe": "cus_1"})]
    )
    assert await store.set_billing_customers("org_missing", {"stripe": "cus_9"}) is None


async def test_a_customer_of_another_org_is_refused_and_nothing_changes(store: Store) -> None:
    org = await billed_org(store, "cus_1")
    other = await store.create_org("other", Limits(), None)
    with pytest.raises(CustomerTaken):
        await store.set_billing_customers(other.id, {"autumn": "a-1", "stripe": "cus_1"})
    again = await store.get_org(other.id)
    assert again is not None and again.billing_customers == {}
    assert await store.billing_orgs() == [(org.id, {"stripe": "cus_1"})]
    # Setting an org's own customer again is no conflict.
    assert await store.set_billing_customers(org.id, {"stripe": "cus_1"}) == org


# routing from billing


async def test_routing_carries_billing_suspension_status_period_and_credit(store: Store) -> None:
    org = await billed_org(store, requests=10)
    await store.update_org(org.id, OrgChanges(prices=PRICED))
    await store.create_key(org.id, b"hash-1")

    def past_due_in_may(state: BillingState) -> BillingChange:
        new = replace(state, payment_status="past_due", suspended_at=T0, suspension_reason="x")
        return BillingChange(
            new,
            credits=(CreditEntry(250, "top_up", "topup:1"),),
            new_period=MAY,
            period_grants=(CreditEntry(50, "plan_grant", "grant:may"),),
        )

    outcome = await store.apply_billing_event(event(), past_due_in_may, T0)
    assert outcome.status == "applied"
    routing = await store.routing_for_key(b"hash-1")
    assert routing is not None
    assert routing.suspended and routing.payment_status == "past_due"
    assert routing.period == MAY and routing.prices == PRICED
    assert routing.limits == Limits(requests=10, credit=300 * 1_000_000)

    record = await store.get_org(org.id)
    assert record is not None and record.routing() == routing
    # The admin's suspension is apart from the billing one.
    assert not record.suspended and record.billing_suspended
    assert record.balance_minor == 300 == await store.balance(org.id)


async def test_credit_limit_only_when_priced_and_blocking(store: Store) -> None:
    org = await billed_org(store)
    await store.create_key(org.id, b"hash-1")
    await store.update_billing(org.id, credit(7, "topup:1"), actor="test", now=T0)

    async def credit_limit(prices: Prices) -> int | None:
        await store.update_org(org.id, OrgChanges(prices=prices))
        routing = await store.routing_for_key(b"hash-1")
        assert routing is not None
        return routing.limits.credit

    assert await credit_limit(Prices(requests=5)) is None
    assert await credit_limit(Prices(block_over_balance=True)) is None
    assert await credit_limit(Prices(items=1, block_over_balance=True)) == 7_000_000
    # A balance below zero blocks like an empty one.
    await store.update_billing(org.id, credit(-10, "refund:1"), actor="test", now=T0)
    assert await store.balance(org.id) == -3
    assert await credit_limit(PRICED) == 0


async def test_new_org_routes_with_billing_defaults(store: Store) -> None:
    # Limits(credit=...) is never stored: the credit limit is the balance.
    org = await store.create_org("acme", Limits(requests=3, credit=99), None)
    assert org.limits == Limits(requests=3)
    await store.create_key(org.id, b"hash-1")
    routing = await store.routing_for_key(b"hash-1")
    assert routing is not None and routing == org.routing()
    assert (routing.payment_status, routing.period, routing.limits.credit) == ("ok", None, None)
    assert await store.billing_state(org.id) == BillingState()
    assert await store.billing_state("org_missing") is None
    assert await store.balance(org.id) == 0


# the credit meter


@dataclass(frozen=True, slots=True)
class CreditChunks(ChunkPolicy):
    """ChunkPolicy has no max_credit yet, and backends ask max_chunk of every meter."""

    max_credit: int = 10**15


def credit_ask(org: OrgRecord, credit_limit: int | None, **needs: int) -> ReserveRequest:
    limits = replace(org.limits, credit=credit_limit)
    policy = CreditChunks(strict=True)
    return ReserveRequest("a", org.id, MAY.key, needs, policy, 1_000.0, 60.0, limits=limits)


async def test_reserve_takes_the_credit_limit_from_the_request(store: Store) -> None:
    org = await store.create_org("acme", Limits(requests=10), None)
    granted = await store.reserve(credit_ask(org, 1_000, requests=1, credit=600))
    assert granted == Granted({"requests": 1, "credit": 600})
    assert await store.reserve(credit_ask(org, 1_000, requests=1, credit=500)) == Exhausted(
        "credit", 1_000, 600
    )
    # All or nothing: the requests meter was not held by the refused call.
    assert await store.reserve(credit_ask(org, 1_000, requests=9)) == Granted({"requests": 9})
    # A larger balance in a newer routing lets more through at once.
    assert await store.reserve(credit_ask(org, 2_000, credit=1_400)) == Granted({"credit": 1_400})


async def test_credit_without_a_limit_is_granted_and_not_held(store: Store) -> None:
    org = await store.create_org("acme", Limits(), None)
    assert await store.reserve(credit_ask(org, None, credit=10**12)) == Granted({"credit": 10**12})
    assert await store.live_reservations(org.id, MAY.key, now=1_000) == []
    assert await store.reserve(credit_ask(org, 0, credit=1)) == Exhausted("credit", 0, 0)
    assert await store.reserve(credit_ask(org, 0, credit=0)) == Granted({"credit": 0})


# billing state and the ledger


async def test_billing_state_keeps_every_field(store: Store) -> None:
    org = await billed_org(store)
    plus_two = timezone(timedelta(hours=2))
    wanted = BillingState(
        payment_status="blocked",
        plan="pro",
        period=Period(datetime(2024, 5, 1, 2, tzinfo=plus_two), datetime(2024, 6, 1, tzinfo=UTC)),
        subscription_id="sub_1",
        never_paid=False,
        cancel_at_period_end=True,
        overdue_since=T0 - timedelta(days=4),
        overdue_invoice_id="in_1",
        suspended_at=T0,
        suspension_reason="overdue past grace",
        status_at=T0 + timedelta(microseconds=1),
        subscription_at=T0 - timedelta(seconds=1),
        refunded={"ch_1": 500, "ch_2": 20},
    )
    change = await store.update_billing(
        org.id, lambda _: BillingChange(wanted), actor="test", now=T0
    )
    assert change is not None and change.state == stored_state(wanted)
    state = await store.billing_state(org.id)
    assert state == wanted
    # Times come back in UTC, so period keys agree across backends.
    assert state is not None and state.period is not None
    assert state.period.key == "2024-05-01T00:00:00+00:00"

    cleared = replace(wanted, overdue_since=None, overdue_invoice_id=None, suspended_at=None)
    cleared = replace(cleared, suspension_reason=None, refunded={})
    await store.update_billing(org.id, lambda _: BillingChange(cleared), actor="test", now=T0)
    assert await store.billing_state(org.id) == cleared


async def test_ledger_entries_count_once_per_idempotency_key(store: Store) -> None:
    org = await billed_org(store)
    for _ in range(2):
        await store.update_billing(org.id, credit(500, "topup:cs_1"), actor="test", now=T0)

    def two(state: BillingState) -> BillingChange:
        entries = (CreditEntry(20, "top_up", "topup:cs_2"), CreditEntry(500, "x", "topup:cs_1"))
        return BillingChange(state, credits=entries)

    await store.update_billing(org.id, two, actor="test", now=T0)
    assert await store.balance(org.id) == 520
    record = await store.get_org(org.id)
    assert record is not None and record.balance_minor == 520
    assert await store.update_billing("org_missing", two, actor="test", now=T0) is None


# webhook events


async def test_event_applies_once_and_a_duplicate_has_no_effect(store: Store) -> None:
    org = await billed_org(store)
    calls: list[BillingState] = []

    def decide(state: BillingState) -> BillingChange:
        calls.append(state)
        return credit(100, f"topup:{len(calls)}")(state)

    first = await store.apply_billing_event(event(), decide, T0)
    assert first.status == "applied" and first.org_id == org.id
    assert first.change is not None and first.change.credits[0].amount_minor == 100
    again = await store.apply_billing_event(event(), decide, T0 + timedelta(seconds=1))
    assert again == WebhookOutcome("duplicate", None, None)
    assert len(calls) == 1 and await store.balance(org.id) == 100
    # The same id from another provider is another event.
    other = await store.apply_billing_event(event(provider="autumn"), decide, T0)
    assert other.status == "unlinked"


async def test_an_exception_in_decide_leaves_nothing_and_the_retry_applies(store: Store) -> None:
    org = await billed_org(store)

    def broken(state: BillingState) -> BillingChange:
        raise RuntimeError("bug in a policy")

    with pytest.raises(RuntimeError, match="bug in a policy"):
        await store.apply_billing_event(event(), broken, T0)
    assert await store.webhook_events() == []
    assert await store.billing_state(org.id) == BillingState()

    retried = await store.apply_billing_event(event(), credit(40, "topup:1"), T0)
    assert retried.status == "applied" and await store.balance(org.id) == 40
    with pytest.raises(RuntimeError):
        await store.update_billing(org.id, broken, actor="reconciler", now=T0)
    assert await store.balance(org.id) == 40


async def test_fifty_deliveries_of_one_event_apply_once(store: Store) -> None:
    org = await billed_org(store)
    outcomes = await asyncio.gather(
        *(store.apply_billing_event(event(), credit(100, "topup:1"), T0) for _ in range(50))
    )
    statuses = [outcome.status for outcome in outcomes]
    assert statuses.count("applied") == 1 and statuses.count("duplicate") == 49
    assert await store.balance(org.id) == 100
    assert len(await store.webhook_events()) == 1


async def test_fifty_deliveries_across_two_instances_apply_once(durable: NewStore) -> None:
    stores = [durable(), durable()]
    for store in stores:
        await store.open()
    try:
        org = await billed_org(stores[0])

        def decide(state: BillingState) -> BillingChange:
            # A distinct key per call: only the event claim can keep the ledger at one entry.
            return credit(100, f"topup:{id(state)}")(state)

        outcomes = await asyncio.gather(
            *(stores[n % 2].apply_billing_event(event(), decide, T0) for n in range(50))
        )
        statuses = [outcome.status for outcome in outcomes]
        assert statuses.count("applied") == 1 and statuses.count("duplicate") == 49
        assert await stores[1].balance(org.id) == 100
    finally:
        for store in stores:
            await store.close()


async def test_two_events_renewing_one_period_set_it_and_grant_once(store: Store) -> None:
    org = await billed_org(store)
    outcomes = await asyncio.gather(
        store.apply_billing_event(event("evt_paid"), renewal(JUNE, 1_000), T0),
        store.apply_billing_event(event("evt_sub"), renewal(JUNE, 1_000), T0),
    )
    assert [outcome.status for outcome in outcomes] == ["applied", "applied"]
    changes = [outcome.change for outcome in outcomes if outcome.change is not None]
    assert sorted(change.new_period is not None for change in changes) == [False, True]
    assert all(change.state.period == JUNE for change in changes if change.new_period)
    state = await store.billing_state(org.id)
    assert state is not None and state.period == JUNE
    assert await store.balance(org.id) == 1_000

    # A later renewal event of June, with the state moved back (out of order), grants nothing.
    def rewind(state: BillingState) -> BillingChange:
        return renewal(JUNE, 1_000)(replace(state, period=MAY))

    late = await store.apply_billing_event(event("evt_late"), rewind, T0)
    assert late.change is not None and late.change.new_period is None
    state = await store.billing_state(org.id)
    assert state is not None and state.period == MAY and await store.balance(org.id) == 1_000


async def test_an_unlinked_customer_or_none_is_recorded_without_effect(store: Store) -> None:
    org = await billed_org(store, "cus_1")
    calls: list[BillingState] = []

    def decide(state: BillingState) -> BillingChange:
        calls.append(state)
        return suspend(state)

    unlinked = await store.apply_billing_event(event("evt_1", "cus_other"), decide, T0)
    assert unlinked == WebhookOutcome("unlinked", None, None)
    anonymous = await store.apply_billing_event(event("evt_2", None), decide, T0)
    assert anonymous == WebhookOutcome("unknown_customer", None, None)
    assert calls == [] and await store.billing_state(org.id) == BillingState()
    assert [(e["event_id"], e["status"], e["org_id"]) for e in await store.webhook_events()] == [
        ("evt_2", "unknown_customer", None),
        ("evt_1", "unlinked", None),
    ]
    # Recorded: a second delivery is a duplicate.
    again = await store.apply_billing_event(event("evt_1", "cus_other"), decide, T0)
    assert again.status == "duplicate"
    assert await store.apply_unlinked_events("stripe", "cus_other", lambda _: decide, T0) == []


async def test_refused_event_is_recorded_and_changes_nothing(store: Store) -> None:
    org = await billed_org(store)

    def refuse(state: BillingState) -> BillingChange:
        return replace(suspend(state), refused="unknown plan gold")

    outcome = await store.apply_billing_event(event(), refuse, T0)
    assert outcome.status == "refused" and outcome.org_id == org.id
    assert outcome.change is not None and outcome.change.refused == "unknown plan gold"
    assert await store.billing_state(org.id) == BillingState()
    (row,) = await store.webhook_events()
    assert (row["status"], row["reason"], row["org_id"]) == ("refused", "unknown plan gold", org.id)
    assert (await store.apply_billing_event(event(), refuse, T0)).status == "duplicate"


async def test_webhook_events_newest_first(store: Store) -> None:
    org = await billed_org(store)
    for n in range(3):
        at = T0 + timedelta(minutes=n)
        await store.apply_billing_event(event(f"evt_{n}", type=f"t{n}"), credit(1, f"k{n}"), at)
    events = await store.webhook_events(limit=2)
    assert events == [
        {
            "provider": "stripe",
            "event_id": "evt_2",
            "type": "t2",
            "org_id": org.id,
            "status": "applied",
            "reason": None,
            "received_at": "2024-05-03T12:02:00+00:00",
        },
        {
            "provider": "stripe",
            "event_id": "evt_1",
            "type": "t1",
            "org_id": org.id,
            "status": "applied",
            "reason": None,
            "received_at": "2024-05-03T12:01:00+00:00",
        },
    ]


# events from before the link


def never(state: BillingState) -> BillingChange:
    raise AssertionError("an unlinked event is decided only once its customer is linked")


def credits_of(seen: list[BillingEvent] | None = None) -> DecideEvent:
    """Each event credits its amount under a key of its own, as a top-up does."""

    def decide_event(kept: BillingEvent) -> Decide:
        if seen is not None:
            seen.append(kept)
        return credit(kept.amount_minor or 0, f"topup:{kept.event_id}")

    return decide_event


def statuses(rows: list[dict[str, object]]) -> dict[object, tuple[object, ...]]:
    return {row["event_id"]: (row["status"], row["org_id"], row["reason"]) for row in rows}


async def test_an_unlinked_event_is_kept_and_applied_once_its_customer_is_linked(
    store: Store,
) -> None:
    org = await store.create_org("acme", Limits(), None)
    topup = event(
        "evt_top",
        "cus_new",
        type="checkout.session.completed",
        kind="credit_purchased",
        occurred_at=T0 - timedelta(hours=1, microseconds=5),
        object_id="cs_1",
        amount_minor=500,
        currency="eur",
        period=MAY,
        metered=True,
        cancel_at_period_end=False,
    )
    assert await store.apply_billing_event(topup, never, T0) == WebhookOutcome(
        "unlinked", None, None
    )
    assert await store.apply_unlinked_events("stripe", "cus_new", credits_of(), T0) == []
    assert statuses(await store.webhook_events()) == {"evt_top": ("unlinked", None, None)}

    await store.set_billing_customers(org.id, {"stripe": "cus_new"})
    seen: list[BillingEvent] = []
    later = T0 + timedelta(days=2)
    outcomes = await store.apply_unlinked_events("stripe", "cus_new", credits_of(seen), later)
    assert [(outcome.status, outcome.org_id) for outcome in outcomes] == [("applied", org.id)]
    assert seen == [topup]  # kept as parsed, field for field
    assert await store.balance(org.id) == 500
    (row,) = await store.webhook_events()
    assert (row["status"], row["org_id"], row["received_at"]) == ("applied", org.id, iso(T0))

    # A second link and a replayed delivery find nothing left to apply.
    assert await store.apply_unlinked_events("stripe", "cus_new", credits_of(), later) == []
    replayed = await store.apply_billing_event(topup, credits_of()(topup), later)
    assert replayed.status == "duplicate" and await store.balance(org.id) == 500


async def test_unlinked_events_apply_by_event_time_then_arrival_each_on_the_last_state(
    store: Store,
) -> None:
    org = await store.create_org("acme", Limits(), None)
    # Arrival order; evt_early and evt_same were sent at the same second.
    for event_id, at in (("evt_late", T0), ("evt_early", T0 - timedelta(hours=2))):
        await store.apply_billing_event(event(event_id, "cus_new", occurred_at=at), never, T0)
    same = event("evt_same", "cus_new", occurred_at=T0 - timedelta(hours=2))
    await store.apply_billing_event(same, never, T0)
    await store.apply_billing_event(event("evt_else", "cus_else"), never, T0)
    await store.apply_billing_event(event("evt_autumn", "cus_new", provider="autumn"), never, T0)
    await store.set_billing_customers(org.id, {"stripe": "cus_new"})

    decided: list[tuple[str, str]] = []

    def decide_event(kept: BillingEvent) -> Decide:
        def decide(state: BillingState) -> BillingChange:
            decided.append((kept.event_id, state.payment_status))
            if kept.event_id == "evt_same":
                return BillingChange(state, refused="unknown plan")
            return status("past_due" if kept.event_id == "evt_early" else "blocked")(state)

        return decide

    later = T0 + timedelta(days=1)
    outcomes = await store.apply_unlinked_events("stripe", "cus_new", decide_event, later)
    assert [outcome.status for outcome in outcomes] == ["applied", "refused", "applied"]
    assert decided == [("evt_early", "ok"), ("evt_same", "past_due"), ("evt_late", "past_due")]
    state = await store.billing_state(org.id)
    assert state is not None and state.payment_status == "blocked"
    assert statuses(await store.webhook_events()) == {
        "evt_late": ("applied", org.id, None),
        "evt_early": ("applied", org.id, None),
        "evt_same": ("refused", org.id, "unknown plan"),
        "evt_else": ("unlinked", None, None),
        "evt_autumn": ("unlinked", None, None),
    }
    rows = [row for row in await store.audit_log(org.id) if row["field"] == "payment_status"]
    assert [(row["new"], row["actor"], row["at"]) for row in rows] == [
        ("blocked", "webhook:stripe", iso(later)),
        ("past_due", "webhook:stripe", iso(later)),
    ]


async def test_an_exception_stops_there_and_leaves_the_rest_unlinked(store: Store) -> None:
    org = await store.create_org("acme", Limits(), None)
    for n in range(3):
        kept = event(f"evt_{n}", "cus_new", occurred_at=T0 + timedelta(seconds=n))
        await store.apply_billing_event(replace(kept, amount_minor=100), never, T0)
    await store.set_billing_customers(org.id, {"stripe": "cus_new"})

    def broken(state: BillingState) -> BillingChange:
        raise RuntimeError("bug in a policy")

    def failing(kept: BillingEvent) -> Decide:
        return broken if kept.event_id == "evt_1" else credits_of()(kept)

    with pytest.raises(RuntimeError, match="bug in a policy"):
        await store.apply_unlinked_events("stripe", "cus_new", failing, T0)
    assert await store.balance(org.id) == 100
    assert [row[0] for row in statuses(await store.webhook_events()).values()] == [
        "unlinked",
        "unlinked",
        "applied",
    ]
    retried = await store.apply_unlinked_events("stripe", "cus_new", credits_of(), T0)
    assert [outcome.status for outcome in retried] == ["applied", "applied"]
    assert await store.balance(org.id) == 300


def fresh_keys(amount: int) -> DecideEvent:
    """A ledger key per call: only the event's status can keep an event to one credit."""
    calls = itertools.count()
    return lambda _kept: credit(amount, f"topup:{next(calls)}")


async def test_ten_links_at_once_apply_each_unlinked_event_once(store: Store) -> None:
    org = await store.create_org("acme", Limits(), None)
    for n in range(5):
        await store.apply_billing_event(event(f"evt_{n}", "cus_new"), never, T0)
    await store.set_billing_customers(org.id, {"stripe": "cus_new"})
    decide_event = fresh_keys(100)
    results = await asyncio.gather(
        *(store.apply_unlinked_events("stripe", "cus_new", decide_event, T0) for _ in range(10))
    )
    assert sum(len(outcomes) for outcomes in results) == 5
    assert await store.balance(org.id) == 500


async def test_links_on_two_instances_apply_each_unlinked_event_once(durable: NewStore) -> None:
    stores = [durable(), durable()]
    for store in stores:
        await store.open()
    try:
        org = await stores[0].create_org("acme", Limits(), None)
        for n in range(5):
            await stores[n % 2].apply_billing_event(event(f"evt_{n}", "cus_new"), never, T0)
        await stores[1].set_billing_customers(org.id, {"stripe": "cus_new"})
        decide_event = fresh_keys(100)
        results = await asyncio.gather(
            *(
                stores[n % 2].apply_unlinked_events("stripe", "cus_new", decide_event, T0)
                for n in range(20)
            )
        )
        assert sum(len(outcomes) for outcomes in results) == 5
        assert await stores[0].balance(org.id) == 500
    finally:
        for store in stores:
            await store.close()


async def test_deliveries_racing_the_link_are_each_applied_once(store: Store) -> None:
    """Each delivery is kept or sees the link, never lost between (the interleaving that
    lost one on PostgreSQL is forced in test_postgres_unlinked.py)."""
    org = await store.create_org("acme", Limits(), None)
    decide_event = credits_of()

    async def deliver(n: int) -> None:
        kept = event(f"evt_{n}", "cus_race", amount_minor=10)
        await store.apply_billing_event(kept, decide_event(kept), T0)

    async def link() -> None:
        await store.set_billing_customers(org.id, {"stripe": "cus_race"})
        await store.apply_unlinked_events("stripe", "cus_race", decide_event, T0)

    await asyncio.gather(
        *(deliver(n) for n in range(30)), link(), *(deliver(n) for n in range(30, 60))
    )
    rows = await store.webhook_events(limit=100)
    assert {row["status"] for row in rows} == {"applied"} and len(rows) == 60
    assert await store.balance(org.id) == 600


# grants per org, plans refused and redelivered, the ledger's integer range


async def test_two_orgs_renewing_periods_that_start_at_the_same_second_each_get_a_grant(
    store: Store,
) -> None:
    """Regression: the grant's key named the period alone, so the second org got 0."""
    orgs = [await billed_org(store, f"cus_{n}") for n in range(2)]
    for n in range(2):
        outcome = await store.apply_billing_event(
            event(f"evt_{n}", f"cus_{n}"), renewal(JUNE, 1_000), T0
        )
        assert outcome.change is not None and outcome.change.new_period == JUNE
    assert [await store.balance(org.id) for org in orgs] == [1_000, 1_000]


def grant_of(period: Period, amount: int) -> Decide:
    """A grant of the state's own period, as a plan adopted within it writes."""
    entry = CreditEntry(amount, "grant:pro", f"grant:{period.key}")
    return lambda state: BillingChange(state, period_grants=(entry,))


async def test_a_grant_without_a_claim_is_written_once_per_org_and_period(store: Store) -> None:
    org = await billed_org(store)
    # The period claimed on a plan without a grant (an invoice before the subscription update).
    claimed = await store.apply_billing_event(
        event("evt_1"), lambda state: BillingChange(state, new_period=JUNE), T0
    )
    assert claimed.change is not None and claimed.change.new_period == JUNE
    for n in range(3):
        await store.apply_billing_event(event(f"evt_g{n}"), grant_of(JUNE, 700), T0)
    assert await store.balance(org.id) == 700


def plan_refused(state: BillingState) -> BillingChange:
    new = replace(state, payment_status="past_due", status_at=T0)
    audit = (AuditEntry("plan_refused", "pro", "gold", "unknown plan"),)
    return BillingChange(new, audit=audit, plan_refused="gold")


def adopt_gold(state: BillingState) -> BillingChange:
    audit = (AuditEntry("plan", state.plan, "gold", "redelivered"),)
    entry = CreditEntry(500, "grant:gold", "grant:june")
    return BillingChange(replace(state, plan="gold"), audit=audit, period_grants=(entry,))


async def test_an_event_applied_with_its_plan_refused_is_redelivered_once(store: Store) -> None:
    org = await billed_org(store)
    first = await store.apply_billing_event(event(), plan_refused, T0)
    assert (first.status, first.org_id) == ("applied", org.id)
    assert statuses(await store.webhook_events()) == {"evt_1": ("applied", org.id, "plan_refused")}
    assert ("plan_refused", "pro", "gold") in [
        (row["field"], row["old"], row["new"]) for row in await store.audit_log(org.id)
    ]
    # Without a redelivery decision, a delivery is a duplicate as ever.
    assert (await store.apply_billing_event(event(), plan_refused, T0)).status == "duplicate"

    def still_unknown(state: BillingState) -> BillingChange:
        return BillingChange(state, refused="unknown plan")

    refused = await store.apply_billing_event(event(), plan_refused, T0, still_unknown)
    assert refused.status == "refused"
    assert statuses(await store.webhook_events()) == {"evt_1": ("applied", org.id, "plan_refused")}

    later = T0 + timedelta(days=1)
    outcomes = await asyncio.gather(
        *(store.apply_billing_event(event(), never, later, adopt_gold) for _ in range(10))
    )
    assert sorted(outcome.status for outcome in outcomes) == ["applied"] + ["duplicate"] * 9
    state = await store.billing_state(org.id)
    assert state is not None and (state.plan, state.payment_status) == ("gold", "past_due")
    assert await store.balance(org.id) == 500
    assert statuses(await store.webhook_events()) == {"evt_1": ("applied", org.id, None)}


async def test_a_refused_change_writes_its_own_audit_entry_only(store: Store) -> None:
    org = await billed_org(store)

    def refuse(state: BillingState) -> BillingChange:
        audit = (AuditEntry("credit_refused", None, "1000 jpy", "other currency"),)
        return BillingChange(state, refused="other currency", audit=audit)

    assert (await store.apply_billing_event(event(), refuse, T0)).status == "refused"
    rows = await store.audit_log(org.id)
    assert [
        (r["field"], r["new"], r["actor"]) for r in rows if r["field"] != "billing_customers.stripe"
    ] == [("credit_refused", "1000 jpy", "webhook:stripe")]
    assert await store.billing_state(org.id) == BillingState()


@pytest.mark.parametrize("amount", [2**63, -(2**63) - 1, 10**30])
async def test_an_amount_beyond_the_integer_range_is_refused_not_raised(
    store: Store, amount: int
) -> None:
    """Regression: SQLite raised OverflowError (a 500), PostgreSQL a DataError (a 503 loop)."""
    org = await billed_org(store)
    outcome = await store.apply_billing_event(event(), credit(amount, "topup:huge"), T0)
    assert outcome.status == "refused" and outcome.change is not None
    assert outcome.change.refused == "amount out of range"
    assert await store.balance(org.id) == 0
    (row,) = await store.webhook_events()
    assert (row["status"], row["reason"]) == ("refused", "amount out of range")
    changed = await store.update_billing(org.id, credit(amount, "k"), actor="test", now=T0)
    assert changed is not None and changed.refused == "amount out of range"


async def test_a_balance_beyond_the_integer_range_is_refused(store: Store) -> None:
    org = await billed_org(store)
    top = 2**63 - 1
    await store.apply_billing_event(event("evt_1"), credit(top, "topup:1"), T0)
    over = await store.apply_billing_event(event("evt_2"), credit(1, "topup:2"), T0)
    assert over.change is not None and over.change.refused == "balance out of range"
    assert await store.balance(org.id) == top
    record = await store.get_org(org.id)
    assert record is not None and record.balance_minor == top
    await store.update_billing(org.id, credit(-top, "refund:1"), actor="test", now=T0)
    under = await store.update_billing(org.id, credit(-2, "refund:2"), actor="test", now=T0)
    assert under is not None and under.refused is None
    assert await store.balance(org.id) == -2
    floor = await store.update_billing(org.id, credit(-(2**63) + 1, "r3"), actor="test", now=T0)
    assert floor is not None and floor.refused == "balance out of range"


async def test_the_newest_paid_invoice_is_kept(durable: NewStore) -> None:
    first = durable()
    await first.open()
    org = await billed_org(first)

    def paid(state: BillingState) -> BillingChange:
        return BillingChange(replace(state, paid_invoice_id="in_1", paid_at=T0))

    await first.apply_billing_event(event(), paid, T0)
    await first.close()
    second = durable()
    await second.open()
    try:
        state = await second.billing_state(org.id)
        assert state is not None and (state.paid_invoice_id, state.paid_at) == ("in_1", T0)
    finally:
        await second.close()


# reconciliation


async def test_orgs_to_reconcile_are_past_due_or_billing_suspended(store: Store) -> None:
    fine, late, suspended = [await billed_org(store, f"cus_{n}") for n in range(3)]
    await store.update_billing(fine.id, credit(5, "k"), actor="test", now=T0)
    await store.update_billing(late.id, status("past_due"), actor="test", now=T0)
    await store.update_billing(suspended.id, suspend, actor="test", now=T0)
    assert await store.orgs_to_reconcile() == sorted([late.id, suspended.id])

    def lift(state: BillingState) -> BillingChange:
        return BillingChange(replace(state, suspended_at=None, suspension_reason=None))

    await store.update_billing(suspended.id, lift, actor="admin", now=T0)
    await store.update_billing(late.id, status("ok"), actor="test", now=T0)
    assert await store.orgs_to_reconcile() == []


# audit


def audited(rows: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(r["field"], r["old"], r["new"], r["reason"], r["actor"]) for r in rows]


async def test_admin_changes_are_audited(store: Store) -> None:
    org = await store.create_org("acme", Limits(requests=1), "http://a")
    changes = OrgChanges(
        name="acme2",
        limits=Limits(requests=2),
        upstream="http://b",
        set_upstream=True,
        prices=Prices(requests=3),
        shadow=True,
    )
    await store.update_org(org.id, changes, actor="ops@x", reason="upgrade")
    # Nothing changes: nothing is written.
    await store.update_org(org.id, changes, actor="ops@x", reason="again")
    rows = await store.audit_log(org.id)
    assert sorted(audited(rows)) == [
        ("limits", '{"requests": 1}', '{"requests": 2}', "upgrade", "ops@x"),
        ("name", "acme", "acme2", "upgrade", "ops@x"),
        (
            "prices",
            '{"block_over_balance": false}',
            '{"block_over_balance": false, "requests": 3}',
            "upgrade",
            "ops@x",
        ),
        ("shadow", "false", "true", "upgrade", "ops@x"),
        ("upstream", "http://a", "http://b", "upgrade", "ops@x"),
    ]
    assert {(r["entity"], r["entity_id"]) for r in rows} == {("org", org.id)}

    await store.set_suspension(org.id, True, "chargeback", actor="ops@x")
    await store.set_suspension(org.id, True, "chargeback", actor="ops@x")
    await store.set_suspension(org.id, False, "resolved")
    key = await store.create_key(org.id, b"hash-1", reason="new sdk")
    assert key is not None
    await store.revoke_key(key.id, actor="cli", reason="leaked")
    await store.revoke_key(key.id, actor="cli", reason="leaked")
    newest = await store.audit_log(org.id, limit=4)
    assert audited(newest) == [
        ("key", key.id, None, "leaked", "cli"),
        ("key", None, key.id, "new sdk", "admin"),
        ("suspended", "true", "false", "resolved", "admin"),
        ("suspended", "false", "true", "chargeback", "ops@x"),
    ]


async def test_billing_changes_are_audited_with_their_actor(store: Store) -> None:
    org = await billed_org(store)
    other = await billed_org(store, "cus_2")
    await store.apply_billing_event(event(occurred_at=T0), status("past_due"), T0)
    later = T0 + timedelta(hours=1)
    await store.update_billing(org.id, status("ok", "paid"), actor="reconciler", now=later)
    await store.update_billing(other.id, status("blocked"), actor="reconciler", now=later)

    rows = await store.audit_log(org.id)
    billing = [row for row in rows if row["field"] == "payment_status"]
    assert audited(billing) == [
        ("payment_status", "past_due", "ok", "paid", "reconciler"),
        ("payment_status", "ok", "past_due", "invoice failed", "webhook:stripe"),
    ]
    assert [row["at"] for row in billing] == [later.isoformat(), T0.isoformat()]
    everyone = await store.audit_log()
    assert {row["entity_id"] for row in everyone} == {org.id, other.id}
    assert len(await store.audit_log(limit=1)) == 1


# leases


async def test_a_lease_has_one_holder_until_it_expires(store: Store) -> None:
    assert await store.acquire_lease("reconciler", "a", now=100.0, ttl=10.0) is True
    assert await store.acquire_lease("reconciler", "b", now=105.0, ttl=10.0) is False
    assert await store.acquire_lease("usage-export", "b", now=105.0, ttl=10.0) is True
    # Re-acquiring extends: b waits until 115, not 110.
    assert await store.acquire_lease("reconciler", "a", now=105.0, ttl=10.0) is True
    assert await store.acquire_lease("reconciler", "b", now=112.0, ttl=10.0) is False
    assert await store.acquire_lease("reconciler", "b", now=115.0, ttl=10.0) is True
    assert await store.acquire_lease("reconciler", "a", now=116.0, ttl=10.0) is False

    await store.release_lease("reconciler", "a")  # not a's any more: no effect
    assert await store.acquire_lease("reconciler", "a", now=117.0, ttl=10.0) is False
    await store.release_lease("reconciler", "b")
    assert await store.acquire_lease("reconciler", "a", now=117.0, ttl=10.0) is True


async def test_concurrent_acquires_have_one_winner(store: Store) -> None:
    results = await asyncio.gather(
        *(store.acquire_lease("reconciler", f"r{n}", now=1.0, ttl=30.0) for n in range(20))
    )
    assert results.count(True) == 1


# usage export


async def test_export_bookkeeping_keeps_the_largest_value(store: Store) -> None:
    org = await billed_org(store)
    assert await store.exported(org.id, "stripe", MAY.key) == {}
    await store.record_export(org.id, "stripe", MAY.key, "requests", 50)
    await store.record_export(org.id, "stripe", MAY.key, "requests", 30)
    await store.record_export(org.id, "stripe", MAY.key, "bytes", 7)
    await store.record_export(org.id, "autumn", MAY.key, "requests", 90)
    await store.record_export(org.id, "stripe", JUNE.key, "requests", 1)
    assert await store.exported(org.id, "stripe", MAY.key) == {"requests": 50, "bytes": 7}
    await store.record_export(org.id, "stripe", MAY.key, "requests", 80)
    assert await store.exported(org.id, "stripe", MAY.key) == {"requests": 80, "bytes": 7}
    assert await store.exported(org.id, "autumn", MAY.key) == {"requests": 90}


# durability


async def test_billing_survives_close_and_reopen(durable: NewStore) -> None:
    first = durable()
    await first.open()
    org = await billed_org(first)
    await first.update_org(org.id, OrgChanges(prices=PRICED))
    await first.apply_billing_event(event(), renewal(MAY, 300), T0)
    await first.acquire_lease("reconciler", "a", now=100.0, ttl=10.0)
    await first.record_export(org.id, "stripe", MAY.key, "requests", 5)
    before = await first.get_org(org.id)
    state = await first.billing_state(org.id)
    await first.close()

    second = durable()
    await second.open()
    try:
        assert await second.get_org(org.id) == before
        assert await second.billing_state(org.id) == state
        assert await second.balance(org.id) == 300
        assert (await second.apply_billing_event(event(), renewal(MAY, 300), T0)).status == (
            "duplicate"
        )
        again = await second.apply_billing_event(event("evt_2"), renewal(MAY, 300), T0)
        assert again.change is not None and again.change.new_period is None
        assert await second.acquire_lease("reconciler", "b", now=105.0, ttl=10.0) is False
        assert await second.exported(org.id, "stripe", MAY.key) == {"requests": 5}
    finally:
        await second.close()


async def test_an_unlinked_event_survives_close_and_reopen(durable: NewStore) -> None:
    first = durable()
    await first.open()
    org = await first.create_org("acme", Limits(), None)
    kept = event("evt_kept", "cus_new", amount_minor=250, period=JUNE)
    assert (await first.apply_billing_event(kept, never, T0)).status == "unlinked"
    await first.close()

    second = durable()
    await second.open()
    try:
        await second.set_billing_customers(org.id, {"stripe": "cus_new"})
        seen: list[BillingEvent] = []
        outcomes = await second.apply_unlinked_events("stripe", "cus_new", credits_of(seen), T0)
        assert [outcome.status for outcome in outcomes] == ["applied"] and seen == [kept]
        assert await second.balance(org.id) == 250
    finally:
        await second.close()
