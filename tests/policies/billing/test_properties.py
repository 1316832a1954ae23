from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, get_args

from hypothesis import given
from hypothesis import strategies as st

from policies.billing import (
    BillingChange,
    BillingEvent,
    BillingState,
    EventKind,
    MalformedEvent,
    apply_event,
    parse_autumn,
    parse_paddle,
    parse_stripe,
)
from policies.model import PaymentStatus, Period
from tests.policies.billing.samples import (
    JUNE,
    SVIX_ID,
    autumn_change,
    autumn_payload,
    invoice_line,
    mutated,
    paddle_event,
    paddle_subscription,
    paddle_transaction,
    stripe_charge,
    stripe_checkout,
    stripe_event,
    stripe_invoice,
    stripe_subscription,
)

_OFFSETS = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
moments = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from(_OFFSETS),
)
periods = st.tuples(moments, moments).map(lambda p: Period(min(p), max(p)))
names = st.sampled_from(["free", "pro", "team", "legacy", "sub_1", "sub_2", "ch_1", "in_1", ""])
maybe_names = st.none() | names
amounts = (
    st.none()
    | st.integers(min_value=-(10**15), max_value=10**15)
    | st.integers(min_value=2**62, max_value=2**64)
)
statuses = st.none() | st.sampled_from(
    ["active", "trialing", "past_due", "unpaid", "canceled", "incomplete_expired", "expired"]
)

events = st.builds(
    BillingEvent,
    provider=st.sampled_from(["stripe", "autumn", "paddle"]),
    event_id=st.text(max_size=6),
    type=st.text(max_size=12),
    kind=st.sampled_from(get_args(EventKind)),
    customer_id=maybe_names,
    occurred_at=moments,
    object_id=maybe_names,
    invoice_id=maybe_names,
    metered=st.booleans(),
    billing_reason=st.none() | st.sampled_from(["subscription_cycle", "manual", "web"]),
    subscription_id=maybe_names,
    subscription_status=statuses,
    plan=maybe_names,
    period=st.none() | periods,
    cancel_at_period_end=st.none() | st.booleans(),
    amount_minor=amounts,
    currency=st.none() | st.sampled_from(["usd", "USD", "eur"]),
    past_due=st.none() | st.booleans(),
)
states = st.builds(
    BillingState,
    payment_status=st.sampled_from(get_args(PaymentStatus)),
    plan=names,
    period=st.none() | periods,
    subscription_id=maybe_names,
    never_paid=st.booleans(),
    cancel_at_period_end=st.booleans(),
    overdue_since=st.none() | moments,
    overdue_invoice_id=maybe_names,
    suspended_at=st.none() | moments,
    suspension_reason=st.none() | st.just("overdue"),
    status_at=st.none() | moments,
    subscription_at=st.none() | moments,
    refunded=st.dictionaries(names, st.integers(min_value=0, max_value=10**12), max_size=3),
    paid_invoice_id=maybe_names,
    paid_at=st.none() | moments,
)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@given(
    state=states,
    event=events,
    plans=st.frozensets(names, max_size=4),
    grants=st.dictionaries(names, st.integers(min_value=-100, max_value=10**9), max_size=3),
    now=moments,
    redelivered=st.booleans(),
)
def test_apply_event_is_total_and_money_stays_integer(
    state: BillingState,
    event: BillingEvent,
    plans: frozenset[str],
    grants: dict[str, int],
    now: datetime,
    redelivered: bool,
) -> None:
    change = apply_event(
        state, event, plans=plans, plan_grants=grants, now=now, redelivered=redelivered
    )
    entries = (*change.credits, *change.period_grants)
    assert all(_is_int(e.amount_minor) and e.amount_minor != 0 for e in entries)
    assert all(-(2**63) <= e.amount_minor < 2**63 for e in entries)
    assert all(_is_int(v) for v in change.state.refunded.values())
    assert all(e.amount_minor > 0 for e in change.period_grants)
    refusals = {"plan_refused", "credit_refused"}
    diff = [a for a in change.audit if a.field not in refusals]
    assert (change.state != state) == bool(diff)
    refused_plan = any(a.field == "plan_refused" for a in change.audit)
    assert (change.plan_refused is not None or change.refused == "unknown plan") == refused_plan
    if redelivered:  # the plan alone, and its grant within the period
        assert replace(change.state, plan=state.plan, subscription_at=state.subscription_at) == (
            state
        )
        assert (change.credits, change.new_period, change.plan_refused) == ((), None, None)
    if change.refused is not None:  # stores write only a refusal's own audit entry
        assert replace(change, audit=()) == BillingChange(state, refused=change.refused)
        assert {a.field for a in change.audit} <= refusals
    if entries and event.kind in ("credit_purchased", "charge_refunded"):
        assert (event.currency or "usd").lower() == "usd"
    if event.kind == "ignored" and not redelivered:
        assert change == BillingChange(state)
    assert len({e.idempotency_key for e in entries}) == len(entries)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["2024-06-01T00:00:00Z", "0", "99", "paid", "metered", "subscription"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)

Parser = Callable[[Mapping[str, Any]], BillingEvent]
SAMPLES: list[tuple[Parser, dict[str, Any]]] = [
    (parse_stripe, stripe_event("invoice.payment_failed", stripe_invoice())),
    (
        parse_stripe,
        stripe_event("invoice.paid", stripe_invoice(lines=[invoice_line(JUNE, new_api=True)])),
    ),
    (parse_stripe, stripe_event("customer.subscription.updated", stripe_subscription())),
    (
        parse_stripe,
        stripe_event("customer.subscription.deleted", stripe_subscription(period_on_item=True)),
    ),
    (
        parse_stripe,
        stripe_event(
            "checkout.session.completed",
            stripe_checkout(amount_total=None, metadata={"org": "org_1", "credit_minor": "2500"}),
        ),
    ),
    (parse_stripe, stripe_event("charge.refunded", stripe_charge(100))),
    (lambda p: parse_autumn(p, SVIX_ID), autumn_payload(autumn_change("activated"))),
    (parse_paddle, paddle_event("transaction.completed", paddle_transaction())),
    (parse_paddle, paddle_event("subscription.updated", paddle_subscription())),
]


def _paths(value: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    if prefix:
        yield prefix
    children = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in children:
        yield from _paths(child, (*prefix, key))


@given(data=st.data())
def test_parsers_raise_only_malformed_event_on_mutated_payloads(data: st.DataObject) -> None:
    parser, payload = data.draw(st.sampled_from(SAMPLES))
    path = data.draw(st.sampled_from(list(_paths(payload))))
    value = data.draw(st.just(...) | json_values)
    try:
        parsed = parser(mutated(payload, path, value))
    except MalformedEvent:
        return
    assert parsed.amount_minor is None or _is_int(parsed.amount_minor)
    assert parsed.occurred_at.utcoffset() == timedelta(0)
    if parsed.period is not None:
        assert parsed.period.start <= parsed.period.end
