"""The plan catalog in SQL, written once (steps; see ``seam``)."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.errors import Conflict
from gateway.store.seam import Dialect, Step, execute, rows, value
from policies.entitlements import Plan, plan_from_json, plan_json

PUT_PLAN = """INSERT INTO plans (name, body, updated_at) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at"""


def put_plan(d: Dialect, plan: Plan) -> Step[None]:
    yield from execute(PUT_PLAN, plan.name, plan_json(plan), d.stamp(datetime.now(UTC)))


def get_plan(name: str) -> Step[Plan | None]:
    body = yield from value("SELECT body FROM plans WHERE name = ?", name)
    return None if body is None else plan_from_json(name, str(body))


def list_plans() -> Step[list[Plan]]:
    found = yield from rows("SELECT name, body FROM plans ORDER BY name")
    return [plan_from_json(str(name), str(body)) for name, body in found]


def delete_plan(name: str) -> Step[bool]:
    """False for an unknown plan; ``Conflict`` while an org is on it. The plan's row is locked
    first: a move of an org onto it (``sql_billing``) either commits before this looks, or
    finds the plan gone."""
    if (yield from value("SELECT name FROM plans WHERE name = ? FOR UPDATE", name)) is None:
        return False
    if (yield from value("SELECT 1 FROM billing_state WHERE plan = ? LIMIT 1", name)) is not None:
        raise Conflict(f"an org is on plan {name!r}")
    deleted = yield from value("DELETE FROM plans WHERE name = ? RETURNING name", name)
    return deleted is not None
