"""The reconciler inside the gateway: one replica at a time, suspensions seen at once."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.billing.reconciler import reconcile
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.sqlite import SQLiteStore
from policies.billing import BillingChange
from policies.model import Limits


async def test_two_replicas_run_the_schedule_and_suspend_an_overdue_org_once(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "gw.db")
    settings = Settings(data_dir=tmp_path, key_secret="k" * 32, reconcile_interval=0.2)
    replicas = [Runtime(settings, store=SQLiteStore(db), spool_dir=None) for _ in range(2)]
    store = replicas[0].store
    for runtime in replicas:
        await runtime.start()
    try:
        org = await store.create_org("late", Limits(), None)
        key = "igk_late"
        await store.create_key(org.id, replicas[0].hasher(key))
        four_days_ago = datetime.now(UTC) - timedelta(days=4)

        def overdue(state):  # type: ignore[no-untyped-def]
            late = replace(state, payment_status="past_due", overdue_since=four_days_ago)
            return BillingChange(late, audit=())

        await store.update_billing(org.id, overdue, actor="test", now=four_days_ago)
        # Polled, not slept: the 0.2 s schedule may run late on a loaded machine.
        deadline = time.monotonic() + 30
        while True:
            routing = await store.routing_for_key(replicas[1].hasher(key))
            assert routing is not None
            if routing.suspended:
                break
            assert time.monotonic() < deadline, "no replica suspended the overdue org"
            await asyncio.sleep(0.05)
        # More passes of both replicas (awaited, not slept for): none suspends it again.
        grace = timedelta(seconds=settings.suspension_grace)
        for _ in range(3):
            for runtime in replicas:
                now = datetime.now(UTC)
                assert await reconcile(runtime.store, now, grace, runtime.invalidate_org) == []
        suspensions = [
            e for e in await store.audit_log(org.id) if e["field"] == "suspended_at" and e["new"]
        ]
        assert len(suspensions) == 1 and suspensions[0]["actor"] == "reconciler"
    finally:
        for runtime in replicas:
            await runtime.close()
