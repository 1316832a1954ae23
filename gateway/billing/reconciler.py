"""The reconciler: applies the suspension policy to every org that may need it.

One replica at a time runs it on a schedule (a lease in the store); ``ingest-gateway
reconcile --now`` runs it once with a given clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from gateway.errors import StoreError
from gateway.store.base import BillingStore, LeaseStore
from policies.billing import suspension_change

log = logging.getLogger("gateway.billing.reconciler")
LEASE = "reconciler"


class ReconcilerStore(BillingStore, LeaseStore, Protocol):
    """What the reconciler needs of a store: billing state, and a lease to run alone."""


async def reconcile(
    store: BillingStore,
    now: datetime,
    grace: timedelta,
    on_change: Callable[[str], Awaitable[None]],
) -> list[dict[str, str]]:
    """One pass; returns what changed: ``[{"org_id", "action"}]``."""
    changed = []
    for org_id in await store.orgs_to_reconcile():
        change = await store.update_billing(
            org_id, lambda state: suspension_change(state, now, grace), actor="reconciler", now=now
        )
        if change is None or not change.changed:
            continue
        action = "suspended" if change.state.suspended_at is not None else "cleared"
        log.info("billing suspension of %s %s", org_id, action, extra={"org_id": org_id})
        changed.append({"org_id": org_id, "action": action})
        await on_change(org_id)
    return changed


async def run_forever(
    store: ReconcilerStore,
    holder: str,
    interval: float,
    grace: timedelta,
    on_change: Callable[[str], Awaitable[None]],
) -> None:
    """Every ``interval`` seconds, on whichever replica holds the lease."""
    while True:
        try:
            if await store.acquire_lease(LEASE, holder, time.time(), ttl=3 * interval):
                await reconcile(store, datetime.now(UTC), grace, on_change)
        except StoreError:
            log.warning("reconcile skipped: store unavailable")
        except Exception:
            log.exception("reconcile failed")
        await asyncio.sleep(interval)
