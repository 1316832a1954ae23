"""The notifications outbox over a dict, for the in-memory fake (``NotificationStore``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gateway.store.records import Notification


class MemoryNotifications:
    """Every method runs without awaiting, so each is atomic."""

    def __init__(self) -> None:
        self.outbox: dict[str, dict[str, Any]] = {}  # id -> row
        self.claims: set[str] = set()

    async def claim_notification(
        self, event_id: str, claim: str, org_id: str, kind: str, url: str, body: str, now: float
    ) -> bool:
        return self._claim(event_id, claim, org_id, kind, url, body, now)

    def _claim(
        self, event_id: str, claim: str, org_id: str, kind: str, url: str, body: str, now: float
    ) -> bool:
        if claim in self.claims:
            return False
        self.claims.add(claim)
        self.outbox[event_id] = {
            "event": Notification(event_id, org_id, kind, url, body, now, 0),
            "next_attempt_at": now,
            "delivered_at": None,
            "failed_at": None,
            "last_error": None,
        }
        return True

    async def due_notifications(self, now: float, lease: float, limit: int) -> list[Notification]:
        open_rows = [
            row
            for row in self.outbox.values()
            if row["delivered_at"] is None
            and row["failed_at"] is None
            and row["next_attempt_at"] <= now
        ]
        open_rows.sort(key=lambda row: row["next_attempt_at"])
        due = open_rows[:limit]
        for row in due:
            row["next_attempt_at"] = now + lease
        return [row["event"] for row in due]

    async def notification_attempted(
        self, event_id: str, now: float, error: str | None, next_at: float | None
    ) -> None:
        row = self.outbox[event_id]
        row["event"] = replace(row["event"], attempts=row["event"].attempts + 1)
        row["last_error"] = error
        if error is None:
            row["delivered_at"] = now
        elif next_at is not None:
            row["next_attempt_at"] = next_at
        else:
            row["failed_at"] = now

    async def notifications(self, org_id: str | None, limit: int) -> list[dict[str, Any]]:
        rows = [r for r in self.outbox.values() if org_id is None or r["event"].org_id == org_id]
        rows.sort(key=lambda r: (-r["event"].created_at, r["event"].id))
        return [
            {
                "id": r["event"].id,
                "org_id": r["event"].org_id,
                "type": r["event"].type,
                "body": r["event"].body,
                "created_at": r["event"].created_at,
                "attempts": r["event"].attempts,
                "delivered_at": r["delivered_at"],
                "failed_at": r["failed_at"],
                "last_error": r["last_error"],
                "next_attempt_at": r["next_attempt_at"],
            }
            for r in rows[:limit]
        ]
