"""Per-org rates (requests/s, bytes/s) as token buckets: this process's share of each.

A rate is the org's, over every live gateway process (worker or replica): each enforces
``rate / holders``, where ``holders`` is how many the store saw live at the last flush tick
(``Store.live_holders``), never asked per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from policies.decisions import Refusal, rate_limited
from policies.model import OrgRouting, Quantities
from policies.rate import Bucket, share, take


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self.holders = 1

    def share_among(self, holders: int) -> None:
        """From now on each org's rate is shared among ``holders`` live processes."""
        self.holders = max(1, holders)

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
            bucket = self._buckets.get((routing.org_id, meter))
            result = take(bucket, share(rate, self.holders), cost, now)
            if not result.admitted:
                return rate_limited(meter, result.wait)
            results.append(((routing.org_id, meter), result.bucket))
        # Both rates fit: only now take from either bucket.
        self._buckets.update(results)
        return None
