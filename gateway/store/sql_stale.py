"""Stale marks: the (org, period) whose Redis counters missed a write, in both SQL backends.

A fallback grant (Redis failed, the truth granted) marks its (org, period) in the same
transaction; so does a commit or heartbeat Redis did not take, after the truth did. Each
mark is a new generation, never reset; a Redis hash built from a snapshot of generation G
grants nothing the truth records once a mark past G exists: the hash is rebuilt first.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.store.seam import Step, execute, value

# Keys a statement marks at once: two parameters each, under SQLite's limit of 32,766.
_MARK_AT_ONCE = 500


def mark(keys: Sequence[tuple[str, str]]) -> Step[None]:
    """A new generation of each (org, period)'s mark, in the global order (org, period)."""
    ordered = sorted(set(keys))
    for first in range(0, len(ordered), _MARK_AT_ONCE):
        part = ordered[first : first + _MARK_AT_ONCE]
        rows = ", ".join(["(?, ?, 1)"] * len(part))
        yield from execute(
            # Only placeholders are built into the statement, never a value.
            "INSERT INTO quota_stale (org_id, period_start, generation) VALUES "  # noqa: S608
            + rows
            + " ON CONFLICT (org_id, period_start)"
            " DO UPDATE SET generation = quota_stale.generation + 1",
            *(part for key in part for part in key),
        )


def generation(org_id: str, period_start: str) -> Step[int]:
    """The generation of the (org, period)'s mark, 0 when it has none."""
    found = yield from value(
        "SELECT generation FROM quota_stale WHERE org_id = ? AND period_start = ?",
        org_id,
        period_start,
    )
    return int(found or 0)
