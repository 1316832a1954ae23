"""Two replicas crossing a billing period boundary: exactly one claims the reset."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from gateway.limits.budgets import Admission
from gateway.limits.guard import StoreGuard
from gateway.limits.spool import Spool
from gateway.limits.usage import UsageGate
from gateway.store.postgres import PostgresStore
from policies.model import Limits, Period, Quantities
from tests.services import postgres_url, unique_name

BOUNDARY = datetime(2026, 12, 1, tzinfo=UTC).timestamp()


async def test_two_replicas_crossing_a_boundary_claim_exactly_one_reset() -> None:
    url = f"{postgres_url()}?schema={unique_name('period')}"
    stores = [PostgresStore(url), PostgresStore(url)]
    for store in stores:
        await store.open()
    org = await stores[0].create_org("acme", Limits(requests=5), None)
    now = [BOUNDARY - 0.5]
    claims: list[tuple[int, str]] = []
    pending: list[asyncio.Task[None]] = []

    def replica(i: int) -> UsageGate:
        def on_new_period(org_id: str, period: Period) -> None:
            async def claim() -> None:
                if await stores[i].claim_period(org_id, period.key):
                    claims.append((i, period.key))

            pending.append(asyncio.get_running_loop().create_task(claim()))

        return UsageGate(
            stores[i],
            StoreGuard(timeout=5),
            Spool(None, f"h{i}"),
            holder=f"h{i}",
            clock=lambda: now[0],
            on_new_period=on_new_period,
        )

    gates = [replica(0), replica(1)]
    routing = org.routing()
    before = await asyncio.gather(
        *(g.admit(routing, Quantities()) for g in gates for _ in range(4))
    )
    now[0] = BOUNDARY + 0.5
    after = await asyncio.gather(*(g.admit(routing, Quantities()) for g in gates for _ in range(4)))
    await asyncio.gather(*pending)

    # The old month was already at its limit; the new one starts from zero at once.
    assert sum(isinstance(o, Admission) for o in before) == 5
    assert sum(isinstance(o, Admission) for o in after) == 5
    december = datetime(2026, 12, 1, tzinfo=UTC).isoformat()
    assert [key for _, key in claims].count(december) == 1
    for gate in gates:
        await gate.close()
    assert (await stores[0].usage(org.id, december))["requests"] == 5
    for store in stores:
        await store.close()
