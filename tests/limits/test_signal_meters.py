"""Meters per signal: a request counts on the totals and on its signal's meters, and a limit
on one signal's meter refuses that signal alone. Driven through the ingest app over every
backend (memory, SQLite, PostgreSQL, PostgreSQL + Redis)."""

from __future__ import annotations

import json

from gateway.ingest.upstream import UpstreamResponse
from policies.model import Limits, Quantities
from tests.fakes import MemoryUpstream
from tests.limits.conftest import LOGS, SPANS, Rig, measured, tenant
from tests.refusals import error_of


async def test_a_logs_limit_refuses_logs_while_traces_still_pass(rig: Rig) -> None:
    org_id, key = await tenant(rig, {"logs.items": 6})
    assert [(await rig.send(key, "logs", LOGS)).status_code for _ in range(3)] == [200, 200, 402]
    refused = await rig.send(key, "logs", LOGS)
    assert refused.status_code == 402
    assert error_of(refused)[1]["meter"] == "logs.items"
    assert [(await rig.send(key, "traces", SPANS)).status_code for _ in range(5)] == [200] * 5
    usage = await rig.usage(org_id)
    meters = measured(usage["meters"])
    assert meters["logs.items"] == {"used": 6, "limit": 6}
    assert meters["traces.items"] == {"used": 10, "limit": None}
    assert meters["items"] == {"used": 16, "limit": None}
    assert meters["logs.requests"]["used"] == 2 and meters["traces.requests"]["used"] == 5
    assert usage["usage"] == {"requests": 7, "bytes": 2 * len(LOGS) + 5 * len(SPANS), "items": 16}
    assert "metrics.items" not in meters  # no usage, no limit: not shown


async def test_a_signal_limit_and_the_total_are_both_exact(rig: Rig) -> None:
    org_id, key = await tenant(rig, {"traces.items": 7, "items": 9})
    statuses = [(await rig.send(key, "traces", SPANS)).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 402, 402]  # 2 spans a batch: 6 fit under 7
    logs = [(await rig.send(key, "logs", LOGS)).status_code for _ in range(2)]
    assert logs == [200, 402]  # 6 spans + 3 records fill the total of 9
    refused = await rig.send(key, "logs", LOGS)
    assert error_of(refused)[1]["meter"] == "items"
    meters = measured((await rig.usage(org_id))["meters"])
    assert meters["traces.items"] == {"used": 6, "limit": 7}
    assert meters["items"] == {"used": 9, "limit": 9}


async def test_a_refused_batch_counts_on_no_meter_and_a_refund_returns_every_meter(
    rig: Rig,
) -> None:
    org_id, key = await tenant(rig, {"traces.items": 100})
    upstream = rig.runtime.upstream
    assert isinstance(upstream, MemoryUpstream)
    upstream.answer = UpstreamResponse(503, [], b"")
    assert (await rig.send(key, "traces", SPANS)).status_code == 503
    meters = measured((await rig.usage(org_id))["meters"])
    assert meters["traces.items"] == {"used": 0, "limit": 100}


async def test_signal_limits_are_set_lifted_and_refused_when_unknown(rig: Rig) -> None:
    org_id, _ = await tenant(rig, {"metrics.items": 5})
    lifted = {"limits": {"metrics.items": None, "logs.bytes": 10}}
    patched = await rig.admin.patch(f"/admin/orgs/{org_id}", json=lifted)
    assert patched.status_code == 200, patched.text
    assert patched.json()["limits"] == {"metrics.items": None, "logs.bytes": 10}
    assert patched.json()["effective_limits"] == {"logs.bytes": 10}
    bad = await rig.admin.patch(f"/admin/orgs/{org_id}", json={"limits": {"spans.items": 1}})
    assert (bad.status_code, bad.json()["error"]) == (400, "bad_request")


def test_quantities_count_on_the_totals_and_the_signal() -> None:
    assert Quantities(1, 10, 3, signal="logs").sent() == {
        "requests": 1, "bytes": 10, "items": 3,
        "logs.requests": 1, "logs.bytes": 10, "logs.items": 3,
    }  # fmt: skip
    assert Quantities(1, 10, 3).sent() == {"requests": 1, "bytes": 10, "items": 3}
    limits = Limits.from_dict({"items": 5, "logs.items": 2, "traces.bytes": 9})
    assert limits.metered() == (("items", 5), ("logs.items", 2), ("traces.bytes", 9))
    assert limits.as_dict() == {"items": 5, "logs.items": 2, "traces.bytes": 9}
    assert json.dumps(limits.as_dict())  # the admin API's shape
