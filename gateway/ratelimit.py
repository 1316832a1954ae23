"""Per-org rates (requests/s, bytes/s) as token buckets held in this process."""

from __future__ import annotations

import time
from collections.abc import Callable

from policies.decisions import Refusal, rate_limited
from policies.model import OrgRouting, Quantities
from policies.rate import Bucket, take


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], Bucket] = {}

    def check(self, routing: OrgRouting, q: Quantities) -> Refusal | None:
        limits = routing.limits
        if limits.rate_requests is None and limits.rate_bytes is None:
            return None
        now = self._clock()
        checks = (
            ("requests", limits.rate_requests, q.requests),
            ("bytes", limits.rate_bytes, q.bytes),
        )
        results = []
        for meter, rate, cost in checks:
            if rate is None:
                continue
            result = take(self._buckets.get((routing.org_id, meter)), rate, cost, now)
            if not result.admitted:
                return rate_limited(meter, result.wait)
            results.append(((routing.org_id, meter), result.bucket))
        # Both rates fit: only now take from either bucket.
        self._buckets.update(results)
        return None
