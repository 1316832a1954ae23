"""Token buckets for per-org rates (requests/s, bytes/s), and one holder's share of a rate.

An org's rate is a limit of the org, not of a process: each of ``holders`` live gateway
processes enforces ``rate / holders`` (refill and capacity alike), so the sum over
processes that each get a fair part of the org's traffic is one bucket's allowance.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket's state: ``tokens`` available at time ``at`` (seconds, monotonic)."""

    tokens: float
    at: float


@dataclass(frozen=True, slots=True)
class BucketResult:
    admitted: bool
    bucket: Bucket
    wait: float = 0.0


def share(rate: int, holders: int) -> float:
    """One holder's part of an org's ``rate`` among ``holders`` live ones (at least one)."""
    return rate / max(1, holders)


def take(bucket: Bucket | None, rate: float, cost: int, now: float) -> BucketResult:
    """Take ``cost`` tokens from a bucket refilled at ``rate`` per second, capacity ``rate``.

    A cost above the capacity passes on a full bucket (leaving a debt), so one large
    batch is never refused forever, while the long-run rate still holds.
    """
    if rate <= 0:
        return BucketResult(False, bucket or Bucket(0.0, now), wait=1.0)
    capacity = float(rate)
    if bucket is None:
        tokens = capacity
    else:
        tokens = min(capacity, bucket.tokens + (now - bucket.at) * rate)
    need = min(float(cost), capacity)
    if tokens >= need:
        return BucketResult(True, Bucket(tokens - cost, now))
    return BucketResult(False, Bucket(tokens, now), wait=(need - tokens) / rate)
