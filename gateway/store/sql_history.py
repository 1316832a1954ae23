"""Usage history: hourly buckets per (org, meter), written with the usage batches.

A batch adds its ``used`` deltas (refunds are negative) to the bucket of the hour it was
taken in (``UsageBatch.at``), in the same transaction that claims its id: a replayed batch
is refused whole, so the history never counts twice and always sums to the counters of the
batches it holds. Key meters (``key/<id>/<meter>``) and signal meters are buckets like any.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from gateway.store.records import UsageBatch
from gateway.store.seam import Step, execute, rows

HOUR = 3600

# SQLite's batch commit runs on its own connection; PostgreSQL's takes arrays.
ADD_SQLITE = """INSERT INTO usage_history (org_id, meter, bucket, value) VALUES (?, ?, ?, ?)
    ON CONFLICT (org_id, meter, bucket) DO UPDATE SET value = value + excluded.value"""
# Rows (org, meter, bucket, delta) of many batches, summed per bucket, in one statement.
ADD_POSTGRES = """INSERT INTO usage_history (org_id, meter, bucket, value)
    SELECT o, m, b, sum(d)::bigint
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS t (o, m, b, d)
    GROUP BY o, m, b ORDER BY o, m, b
    ON CONFLICT (org_id, meter, bucket)
    DO UPDATE SET value = usage_history.value + excluded.value"""


def bucket_of(at: float) -> int:
    """The start of the hour ``at`` (epoch seconds) falls in."""
    return int(at // HOUR * HOUR)


def batch_bucket(batch: UsageBatch) -> int:
    """The hour a batch's usage goes to: when it was taken (now, for one without a time)."""
    return bucket_of(batch.at or time.time())


def history_rows(batch: UsageBatch) -> list[tuple[str, str, int, int]]:
    bucket = batch_bucket(batch)
    return [(batch.org_id, meter, bucket, delta) for meter, delta in batch.used.items() if delta]


def read(org_id: str, meter: str, start: float, end: float) -> Step[list[tuple[int, int]]]:
    found: Sequence[Sequence[int]] = yield from rows(
        "SELECT bucket, value FROM usage_history"
        " WHERE org_id = ? AND meter = ? AND bucket >= ? AND bucket < ? ORDER BY bucket",
        org_id,
        meter,
        bucket_of(start),
        int(end),
    )
    return [(int(bucket), int(amount)) for bucket, amount in found]


def prune(before: float) -> Step[int]:
    return (yield from execute("DELETE FROM usage_history WHERE bucket < ?", bucket_of(before)))
