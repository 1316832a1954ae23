"""Orgs, ingest keys and billing customers in SQL, written once (steps; see ``seam``).

Admin changes lock the org's row first (``FOR NO KEY UPDATE`` on PostgreSQL, which billing
rows referencing the org do not wait for), so that changes to one org take turns; every
change writes one audit row per field in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from gateway.store.normal import iso, org_audit, suspension_audit
from gateway.store.records import AuditRow, CustomerTaken, KeyRecord, OrgChanges, OrgRecord, new_id
from gateway.store.seam import Dialect, Step, execute, rows, value
from policies.entitlements import plan_from_json, plan_limits
from policies.model import Limits, OrgRouting, PaymentStatus, Period, Prices

# An org with its limits (one row per limit, or one row of NULLs), prices, billing state
# and balance; columns by position in org_from_rows.
_ORG_COLUMNS = """SELECT o.id, o.name, o.upstream, o.suspended, o.suspension_reason,
        COALESCE(b.payment_status, 'ok'), o.shadow, o.created_at, l.name, l.value,
        p.requests, p.bytes, p.items, COALESCE(p.block_over_balance, FALSE),
        s.suspended_at IS NOT NULL, b.period_start, b.period_end,
        COALESCE(b.balance_minor, 0), COALESCE(b.plan, 'free'), pl.body, o.notify_url,
        o.partial_admission"""
_ORG_JOINS = """
    LEFT JOIN org_limits l ON l.org_id = o.id
    LEFT JOIN org_prices p ON p.org_id = o.id
    LEFT JOIN billing_state b ON b.org_id = o.id
    LEFT JOIN billing_suspensions s ON s.org_id = o.id
    LEFT JOIN plans pl ON pl.name = COALESCE(b.plan, 'free')"""
SELECT_ORG = f"{_ORG_COLUMNS}\n    FROM orgs o{_ORG_JOINS}\n    WHERE o.id = ?"
SELECT_ROUTING = f"""{_ORG_COLUMNS}
    FROM ingest_keys k JOIN orgs o ON o.id = k.org_id{_ORG_JOINS}
    WHERE k.key_hash = ? AND k.revoked_at IS NULL"""

# The org row is locked before an admin change reads it: changes to one org take turns.
LOCK_ORG = "SELECT id FROM orgs WHERE id = ? FOR NO KEY UPDATE"

UPDATE_ORG = """UPDATE orgs SET
        name = COALESCE(?, name),
        upstream = CASE WHEN ? THEN ? ELSE upstream END,
        shadow = COALESCE(?, shadow),
        notify_url = CASE WHEN ? THEN ? ELSE notify_url END,
        partial_admission = CASE WHEN ? THEN ? ELSE partial_admission END,
        updated_at = ?
    WHERE id = ?"""

WRITE_PRICES = """INSERT INTO org_prices (org_id, requests, bytes, items, block_over_balance)
    VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (org_id) DO UPDATE SET requests = excluded.requests,
        bytes = excluded.bytes, items = excluded.items,
        block_over_balance = excluded.block_over_balance"""

INSERT_AUDIT = """INSERT INTO audit_log
        (at, entity, entity_id, field, old_value, new_value, reason, actor)
    VALUES (?, 'org', ?, ?, ?, ?, ?, ?)"""

# A conflict is another org's: the org row lock keeps its own rows still.
LINK_CUSTOMER = """INSERT INTO billing_customers (provider, customer_id, org_id) VALUES (?, ?, ?)
    ON CONFLICT (provider, customer_id) DO NOTHING RETURNING org_id"""


def _period(d: Dialect, start: Any, end: Any) -> Period | None:
    first, last = d.moment(start), d.moment(end)
    return None if first is None or last is None else Period(first, last)


def org_from_rows(
    d: Dialect, found: Sequence[Sequence[Any]], customers: dict[str, str] | None = None
) -> OrgRecord | None:
    if not found:
        return None
    first = found[0]
    created_at = d.moment(first[7])
    assert created_at is not None
    return OrgRecord(
        id=first[0],
        name=first[1],
        limits=Limits.from_overrides({row[8]: row[9] for row in found if row[8] is not None}),
        upstream=first[2],
        suspended=bool(first[3]),
        suspension_reason=first[4],
        payment_status=cast(PaymentStatus, first[5]),
        shadow=bool(first[6]),
        created_at=created_at,
        prices=Prices(first[10], first[11], first[12], bool(first[13])),
        billing_customers=customers or {},
        billing_suspended=bool(first[14]),
        period=_period(d, first[15], first[16]),
        balance_minor=int(first[17]),
        plan=first[18],
        plan_limits=None if first[19] is None else plan_limits(plan_from_json(*first[18:20])),
        notify_url=first[20],
        partial_admission=None if first[21] is None else bool(first[21]),
    )


_KEY_COLUMNS = """SELECT k.id, k.org_id, k.created_at, k.name, k.revoked_at IS NOT NULL,
        l.name, l.value
    FROM ingest_keys k LEFT JOIN key_limits l ON l.key_id = k.id"""


def _key_from_rows(d: Dialect, found: Sequence[Sequence[Any]]) -> KeyRecord | None:
    if not found:
        return None
    first = found[0]
    created_at = d.moment(first[2])
    assert created_at is not None
    limits = Limits.from_dict({row[5]: row[6] for row in found if row[5] is not None})
    return KeyRecord(first[0], first[1], created_at, first[3], limits, bool(first[4]))


def routing_for_key(d: Dialect, key_hash: bytes) -> Step[OrgRouting | None]:
    org = org_from_rows(d, (yield from rows(SELECT_ROUTING, key_hash)))
    if org is None:
        return None
    found = yield from rows(f"{_KEY_COLUMNS} WHERE k.key_hash = ?", key_hash)
    key = _key_from_rows(d, found)
    return org.routing() if key is None else key.routing(org)


def select_key(d: Dialect, key_id: str) -> Step[KeyRecord | None]:
    return _key_from_rows(d, (yield from rows(f"{_KEY_COLUMNS} WHERE k.id = ?", key_id)))


def list_keys(d: Dialect, org_id: str) -> Step[list[KeyRecord]]:
    ordered = f"{_KEY_COLUMNS} WHERE k.org_id = ? ORDER BY k.created_at, k.id"
    found = yield from rows(ordered, org_id)
    by_key: dict[str, list[Sequence[Any]]] = {}
    for row in found:
        by_key.setdefault(row[0], []).append(row)
    return [key for group in by_key.values() if (key := _key_from_rows(d, group))]


def _write_key_limits(key_id: str, limits: Limits) -> Step[None]:
    yield from execute("DELETE FROM key_limits WHERE key_id = ?", key_id)
    for name, amount in limits.as_dict().items():
        yield from execute(
            "INSERT INTO key_limits (key_id, name, value) VALUES (?, ?, ?)", key_id, name, amount
        )


def update_key(
    d: Dialect,
    key_id: str,
    name: str | None,
    limit_changes: Mapping[str, int | None] | None,
    actor: str,
) -> Step[KeyRecord | None]:
    org_id = yield from value("SELECT org_id FROM ingest_keys WHERE id = ?", key_id)
    if org_id is None:
        return None
    yield from execute(LOCK_ORG, org_id)  # key changes take turns with the org's, then read
    current = yield from select_key(d, key_id)
    if current is None:
        return None
    limits = None if limit_changes is None else current.limits.patched(limit_changes)
    now = datetime.now(UTC)
    entries: list[AuditRow] = []
    if name is not None and name != current.name:
        yield from execute("UPDATE ingest_keys SET name = ? WHERE id = ?", name, key_id)
        entries.append((f"key {key_id} name", current.name, name))
    if limits is not None and limits != current.limits:
        yield from _write_key_limits(key_id, limits)
        old, new = current.limits.as_dict(), limits.as_dict()
        entries.append((f"key {key_id} limits", _json(old), _json(new)))
    yield from audit(d, current.org_id, entries, [None] * len(entries), actor, now)
    return (yield from select_key(d, key_id))


def _json(value: Mapping[str, int]) -> str:
    return json.dumps(dict(value), sort_keys=True)


def select_org(d: Dialect, org_id: str) -> Step[OrgRecord | None]:
    found = yield from rows(SELECT_ORG, org_id)
    if not found:
        return None
    linked = yield from rows(
        "SELECT provider, customer_id FROM billing_customers WHERE org_id = ?", org_id
    )
    return org_from_rows(d, found, {provider: customer for provider, customer in linked})


def _like(query: str) -> str:
    """``query`` as a LIKE pattern of its own characters (``\\`` escapes ``%`` and ``_``)."""
    escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_orgs(d: Dialect, query: str | None, limit: int) -> Step[list[OrgRecord]]:
    if query:
        found = yield from rows(
            "SELECT id FROM orgs WHERE lower(name) LIKE ? ESCAPE '\\' OR id = ?"
            " ORDER BY name, id LIMIT ?",
            _like(query),
            query,
            limit,
        )
    else:
        found = yield from rows("SELECT id FROM orgs ORDER BY name, id LIMIT ?", limit)
    orgs = []
    for (org_id,) in found:
        org = yield from select_org(d, org_id)
        if org is not None:
            orgs.append(org)
    return orgs


def audit(
    d: Dialect,
    org_id: str,
    entries: Sequence[AuditRow],
    reasons: Sequence[str | None],
    actor: str,
    at: datetime,
) -> Step[None]:
    """One audit row per entry, with the reason of the same index, in order."""
    for (name, old, new), reason in zip(entries, reasons, strict=True):
        yield from execute(INSERT_AUDIT, d.stamp(at), org_id, name, old, new, reason, actor)


def write_limits(org_id: str, limits: Limits) -> Step[None]:
    """An org's own limits, one row each; a NULL value is an override to unlimited."""
    yield from execute("DELETE FROM org_limits WHERE org_id = ?", org_id)
    for name, amount in limits.overrides().items():
        yield from execute(
            "INSERT INTO org_limits (org_id, name, value) VALUES (?, ?, ?)", org_id, name, amount
        )


def create_org(
    d: Dialect, name: str, limits: Limits, upstream: str | None, shadow: bool
) -> Step[OrgRecord]:
    org = OrgRecord.new(name, limits, upstream, shadow)
    stamp = d.stamp(org.created_at)
    yield from execute(
        "INSERT INTO orgs (id, name, upstream, shadow, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        org.id,
        name,
        upstream,
        shadow,
        stamp,
        stamp,
    )
    yield from write_limits(org.id, limits)
    return org


def locked_org(d: Dialect, org_id: str) -> Step[OrgRecord | None]:
    if (yield from value(LOCK_ORG, org_id)) is None:
        return None
    return (yield from select_org(d, org_id))


def update_org(
    d: Dialect, org_id: str, changes: OrgChanges, actor: str, reason: str | None
) -> Step[OrgRecord | None]:
    current = yield from locked_org(d, org_id)
    if current is None:
        return None
    changes = changes.resolved(current.limits)
    now = datetime.now(UTC)
    yield from execute(
        UPDATE_ORG,
        changes.name,
        changes.set_upstream,
        changes.upstream,
        changes.shadow,
        changes.set_notify_url,
        changes.notify_url,
        changes.set_partial_admission,
        changes.partial_admission,
        d.stamp(now),
        org_id,
    )
    if changes.limits is not None:
        yield from write_limits(org_id, changes.limits)
    if (prices := changes.prices) is not None:
        yield from execute(
            WRITE_PRICES,
            org_id,
            prices.requests,
            prices.bytes,
            prices.items,
            prices.block_over_balance,
        )
    entries = org_audit(current, changes)
    yield from audit(d, org_id, entries, [reason] * len(entries), actor, now)
    return (yield from select_org(d, org_id))


def create_key(
    d: Dialect,
    org_id: str,
    key_hash: bytes,
    name: str,
    limits: Limits,
    actor: str,
    reason: str | None,
) -> Step[KeyRecord | None]:
    if (yield from value("SELECT id FROM orgs WHERE id = ?", org_id)) is None:
        return None
    record = KeyRecord(new_id("key"), org_id, datetime.now(UTC), name, limits)
    yield from execute(
        "INSERT INTO ingest_keys (id, org_id, key_hash, created_at, name) VALUES (?, ?, ?, ?, ?)",
        record.id,
        org_id,
        key_hash,
        d.stamp(record.created_at),
        name,
    )
    yield from _write_key_limits(record.id, limits)
    yield from audit(d, org_id, [("key", None, record.id)], [reason], actor, record.created_at)
    return record


def revoke_key(d: Dialect, key_id: str, actor: str, reason: str | None) -> Step[str | None]:
    now = datetime.now(UTC)
    org_id = yield from value(
        "UPDATE ingest_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
        " RETURNING org_id",
        d.stamp(now),
        key_id,
    )
    if org_id is None:
        return None
    yield from audit(d, org_id, [("key", key_id, None)], [reason], actor, now)
    return str(org_id)


def set_suspension(
    d: Dialect, org_id: str, suspended: bool, reason: str | None, actor: str
) -> Step[OrgRecord | None]:
    current = yield from locked_org(d, org_id)
    if current is None:
        return None
    now = datetime.now(UTC)
    yield from execute(
        "UPDATE orgs SET suspended = ?, suspension_reason = ?, updated_at = ? WHERE id = ?",
        suspended,
        reason if suspended else None,
        d.stamp(now),
        org_id,
    )
    entries = suspension_audit(current, suspended, reason)
    yield from audit(d, org_id, entries, [reason] * len(entries), actor, now)
    return (yield from select_org(d, org_id))


def set_billing_customers(
    d: Dialect, org_id: str, customers: Mapping[str, str], actor: str
) -> Step[OrgRecord | None]:
    current = yield from locked_org(d, org_id)
    if current is None:
        return None
    if d.lock_customer is not None:
        # Taken in one order, so that two links never wait for each other.
        for provider, customer in sorted(customers.items()):
            if current.billing_customers.get(provider) != customer:
                yield from execute(d.lock_customer, provider, customer)
    entries: list[AuditRow] = []
    for provider, customer in customers.items():
        old = current.billing_customers.get(provider)
        if old == customer:
            continue
        yield from execute(
            "DELETE FROM billing_customers WHERE org_id = ? AND provider = ?", org_id, provider
        )
        if (yield from value(LINK_CUSTOMER, provider, customer, org_id)) is None:
            raise CustomerTaken(provider, customer)
        entries.append((f"billing_customers.{provider}", old, customer))
    yield from audit(d, org_id, entries, [None] * len(entries), actor, datetime.now(UTC))
    return (yield from select_org(d, org_id))


def billing_orgs() -> Step[list[tuple[str, dict[str, str]]]]:
    found = yield from rows(
        "SELECT org_id, provider, customer_id FROM billing_customers ORDER BY org_id, provider"
    )
    linked: dict[str, dict[str, str]] = {}
    for org_id, provider, customer in found:
        linked.setdefault(org_id, {})[provider] = customer
    return list(linked.items())


def audit_log(d: Dialect, org_id: str | None, limit: int) -> Step[list[dict[str, object]]]:
    found = yield from rows(
        """SELECT at, entity, entity_id, field, old_value, new_value, reason, actor
        FROM audit_log
        WHERE CAST(? AS TEXT) IS NULL OR (entity = 'org' AND entity_id = ?)
        ORDER BY at DESC, id DESC LIMIT ?""",
        org_id,
        org_id,
        max(0, limit),
    )
    names = ("at", "entity", "entity_id", "field", "old", "new", "reason", "actor")
    return [{**dict(zip(names, row, strict=True)), "at": iso_of(d, row[0])} for row in found]


def iso_of(d: Dialect, stamp: Any) -> str:
    """A stored time as every backend reports it."""
    moment = d.moment(stamp)
    assert moment is not None
    return iso(moment)
