"""The notifications outbox over SQL, written once (``NotificationStore``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.store.records import Notification
from gateway.store.seam import Step, execute, rows


def claim(
    event_id: str, claim_key: str, org_id: str, kind: str, url: str, body: str, now: float
) -> Step[bool]:
    """The event added, or False when its claim was someone's already."""
    count = yield from execute(
        "INSERT INTO notifications"
        " (id, claim, org_id, type, url, body, created_at, next_attempt_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (claim) DO NOTHING",
        event_id,
        claim_key,
        org_id,
        kind,
        url,
        body,
        now,
        now,
    )
    return bool(count)


def due(now: float, lease: float, limit: int) -> Step[list[Notification]]:
    """Events due for an attempt, leased to the caller for ``lease`` seconds. Rows another
    replica is leasing are skipped, and the outer check of ``next_attempt_at`` is re-read
    under the row lock: two replicas never lease one row."""
    found = yield from rows(
        "UPDATE notifications SET next_attempt_at = ?"
        " WHERE next_attempt_at <= ? AND delivered_at IS NULL AND failed_at IS NULL"
        " AND id IN (SELECT id FROM notifications WHERE delivered_at IS NULL"
        " AND failed_at IS NULL AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?"
        " FOR UPDATE SKIP LOCKED)"
        " RETURNING id, org_id, type, url, body, created_at, attempts",
        now + lease,
        now,
        now,
        limit,
    )
    return [_notification(row) for row in found]


def attempted(event_id: str, now: float, error: str | None, next_at: float | None) -> Step[None]:
    """One attempt: delivered (no error), retried at ``next_at``, or given up (neither)."""
    if error is None:
        yield from execute(
            "UPDATE notifications SET attempts = attempts + 1, delivered_at = ?,"
            " last_error = NULL WHERE id = ?",
            now,
            event_id,
        )
    elif next_at is not None:
        yield from execute(
            "UPDATE notifications SET attempts = attempts + 1, next_attempt_at = ?,"
            " last_error = ? WHERE id = ?",
            next_at,
            error,
            event_id,
        )
    else:
        yield from execute(
            "UPDATE notifications SET attempts = attempts + 1, failed_at = ?, last_error = ?"
            " WHERE id = ?",
            now,
            error,
            event_id,
        )


def listed(org_id: str | None, limit: int) -> Step[list[dict[str, Any]]]:
    columns = """SELECT id, org_id, type, body, created_at, attempts, delivered_at, failed_at,
        last_error, next_attempt_at FROM notifications"""
    if org_id is None:
        found = yield from rows(f"{columns} ORDER BY created_at DESC, id LIMIT ?", limit)
    else:
        found = yield from rows(
            f"{columns} WHERE org_id = ? ORDER BY created_at DESC, id LIMIT ?", org_id, limit
        )
    return [_listed(row) for row in found]


def _notification(row: Sequence[Any]) -> Notification:
    return Notification(
        str(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]), float(row[5]), int(row[6])
    )


def _listed(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "id": row[0],
        "org_id": row[1],
        "type": row[2],
        "body": row[3],
        "created_at": float(row[4]),
        "attempts": int(row[5]),
        "delivered_at": None if row[6] is None else float(row[6]),
        "failed_at": None if row[7] is None else float(row[7]),
        "last_error": row[8],
        "next_attempt_at": float(row[9]),
    }
