"""Plans carry limits: an org on a plan gets the plan's limits under its own, a plan change
applies at once to every org on it, and a provider's subscription event moves an org to a
plan of the catalog. Through the ingest and admin apps over every backend."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.limits.conftest import LOGS, SPANS, Rig, measured, tenant
from tests.refusals import error_of
from tests.security.signing import stripe_headers


async def put_plan(rig: Rig, name: str, **body: Any) -> dict[str, Any]:
    response = await rig.admin.put(f"/admin/plans/{name}", json=body)
    assert response.status_code == 200, response.text
    plan: dict[str, Any] = response.json()
    return plan


async def patch_org(rig: Rig, org_id: str, **body: Any) -> dict[str, Any]:
    response = await rig.admin.patch(f"/admin/orgs/{org_id}", json=body)
    assert response.status_code == 200, response.text
    org: dict[str, Any] = response.json()
    return org


async def statuses(rig: Rig, key: str, n: int, signal: str = "traces") -> list[int]:
    body = SPANS if signal == "traces" else LOGS
    return [(await rig.send(key, signal, body)).status_code for _ in range(n)]


async def test_an_org_on_a_plan_gets_its_limits_and_its_own_override_them(rig: Rig) -> None:
    plan = await put_plan(rig, "pro", limits={"traces.items": 4, "logs.items": 3})
    assert plan["limits"] == {"traces.items": 4, "logs.items": 3}
    org_id, key = await tenant(rig, {})
    org = await patch_org(rig, org_id, plan="pro")
    assert (org["plan"], org["limits"]) == ("pro", {})
    assert org["effective_limits"] == {"traces.items": 4, "logs.items": 3}
    assert await statuses(rig, key, 3) == [200, 200, 402]  # 2 spans a batch
    code, detail = error_of(await rig.send(key, "traces", SPANS))
    assert (code, detail["meter"]) == ("usage_limit_exceeded", "traces.items")
    assert str(detail["limit"]) == "4"  # OTLP/JSON metadata carries strings
    org = await patch_org(rig, org_id, limits={"traces.items": 6})
    assert org["effective_limits"] == {"traces.items": 6, "logs.items": 3}
    assert await statuses(rig, key, 2) == [200, 402]
    assert await statuses(rig, key, 2, "logs") == [200, 402]  # the plan's logs limit stays


async def test_a_null_override_is_unlimited_over_the_plan_and_plan_restores_it(rig: Rig) -> None:
    await put_plan(rig, "pro", limits={"traces.items": 4, "logs.items": 3})
    org_id, key = await tenant(rig, {})
    await patch_org(rig, org_id, plan="pro")
    org = await patch_org(rig, org_id, limits={"traces.items": None})
    assert org["limits"] == {"traces.items": None}
    assert org["effective_limits"] == {"logs.items": 3}
    assert await statuses(rig, key, 5) == [200] * 5  # 10 spans past the plan's 4
    assert await statuses(rig, key, 2, "logs") == [200, 402]  # the plan's logs limit stays
    org = await patch_org(rig, org_id, limits={"traces.items": "plan"})
    assert (org["limits"], org["effective_limits"]["traces.items"]) == ({}, 4)
    assert await statuses(rig, key, 1) == [402]  # 10 spans counted, over the plan's 4 again


async def test_a_plan_change_applies_at_once_to_every_org_on_it(rig: Rig) -> None:
    await put_plan(rig, "team", limits={"items": 100})
    tenants = [await tenant(rig, {}) for _ in range(2)]
    for org_id, _ in tenants:
        await patch_org(rig, org_id, plan="team")
    for _, key in tenants:
        assert await statuses(rig, key, 2) == [200, 200]
    await put_plan(rig, "team", limits={"items": 4})  # a downgrade to what each has used
    for _, key in tenants:
        assert await statuses(rig, key, 1) == [402]  # refused until the period ends
    await put_plan(rig, "team", limits={"items": 6})
    for _, key in tenants:
        assert await statuses(rig, key, 2) == [200, 402]


async def test_plans_are_listed_refused_when_unknown_and_kept_while_in_use(rig: Rig) -> None:
    await put_plan(rig, "basic", limits={"requests": 10}, rate_requests=5, grant_minor=100)
    listed = (await rig.admin.get("/admin/plans")).json()["plans"]
    assert {"basic", "free"} <= {p["name"] for p in listed}  # "free" is seeded at start
    basic = (await rig.admin.get("/admin/plans/basic")).json()
    assert (basic["rate_requests"], basic["grant_minor"]) == (5, 100)
    assert (await rig.admin.get("/admin/plans/nope")).status_code == 404
    org_id, _ = await tenant(rig, {})
    unknown = await rig.admin.patch(f"/admin/orgs/{org_id}", json={"plan": "nope"})
    assert (unknown.status_code, unknown.json()["error"]) == (400, "bad_request")
    await patch_org(rig, org_id, plan="basic")
    in_use = await rig.admin.delete("/admin/plans/basic")
    assert (in_use.status_code, in_use.json()["error"]) == (409, "conflict")
    await patch_org(rig, org_id, plan="free")
    assert (await rig.admin.delete("/admin/plans/basic")).status_code == 204
    for body in ({"limits": {"spans": 1}}, {"limits": {"items": -1}}, {"plan": "x"},
                 {"rate_bytes": 0}):  # fmt: skip
        bad = await rig.admin.put("/admin/plans/x", json=body)
        assert (bad.status_code, bad.json()["error"]) == (400, "bad_request"), body


async def test_a_stripe_subscription_moves_the_org_to_a_plan_of_the_catalog(rig: Rig) -> None:
    await put_plan(rig, "pro", limits={"traces.items": 2})
    await put_plan(rig, "scale", limits={"traces.items": 8})
    org_id, key = await tenant(rig, {})
    await patch_org(rig, org_id, billing_customers={"stripe": "cus_plans"})
    start = int(time.time()) - 86_400  # one period for both events: a moved start is a new one

    async def subscribe(event_id: str, plan: str, created: int) -> None:
        item = {"price": {"lookup_key": plan}, "current_period_start": start,
                "current_period_end": start + 30 * 86_400}  # fmt: skip
        obj = {"id": "sub_p", "customer": "cus_plans", "status": "active",
               "items": {"data": [item]}}  # fmt: skip
        body = json.dumps({"id": event_id, "type": "customer.subscription.updated",
                           "created": created, "data": {"object": obj}}).encode()  # fmt: skip
        headers = stripe_headers(body)
        answer = await rig.ingest.post("/webhooks/stripe", content=body, headers=headers)
        assert answer.status_code == 200 and answer.json()["status"] == "applied", answer.text

    now = int(time.time())
    await subscribe("evt_pro", "pro", now - 10)
    assert await statuses(rig, key, 2) == [200, 402]
    await subscribe("evt_scale", "scale", now - 5)  # an upgrade: higher limits at once
    assert await statuses(rig, key, 4) == [200, 200, 200, 402]
    org = (await rig.admin.get(f"/admin/orgs/{org_id}")).json()
    assert (org["plan"], org["effective_limits"]) == ("scale", {"traces.items": 8})


async def test_overage_admits_exactly_up_to_the_cap_and_the_refusal_names_both(rig: Rig) -> None:
    await put_plan(rig, "metered", limits={"traces.items": 4}, overage={"traces.items": 2})
    org_id, key = await tenant(rig, {})
    await patch_org(rig, org_id, plan="metered")
    assert await statuses(rig, key, 4) == [200, 200, 200, 402]  # 4 included + 2 overage
    code, detail = error_of(await rig.send(key, "traces", SPANS))
    assert (code, detail["meter"], str(detail["limit"]), str(detail["overage"])) == (
        "usage_limit_exceeded", "traces.items", "4", "2"
    )  # fmt: skip
    await rig.runtime.usage.flush()
    meters = measured((await rig.admin.get(f"/admin/orgs/{org_id}/usage")).json()["meters"])
    assert meters["traces.items"] == {"used": 6, "limit": 4, "overage": 2, "overage_used": 2}


async def test_an_uncapped_overage_admits_past_the_limit_and_counts_it(rig: Rig) -> None:
    await put_plan(rig, "open", limits={"items": 2}, overage={"items": None})
    org_id, key = await tenant(rig, {})
    await patch_org(rig, org_id, plan="open")
    assert await statuses(rig, key, 5) == [200] * 5
    await rig.runtime.usage.flush()
    meters = measured((await rig.admin.get(f"/admin/orgs/{org_id}/usage")).json()["meters"])
    assert meters["items"] == {"used": 10, "limit": 2, "overage": None, "overage_used": 8}


async def test_a_refused_patch_writes_nothing_of_itself(rig: Rig) -> None:
    await put_plan(rig, "big", limits={"items": 1_000})
    org_id, key = await tenant(rig, {"items": 1_000})
    other_id, _ = await tenant(rig, {})
    linked = {"billing_customers": {"stripe": "cus_taken"}}
    assert (await rig.admin.patch(f"/admin/orgs/{other_id}", json=linked)).status_code == 200
    before = (await rig.admin.get(f"/admin/orgs/{org_id}")).json()
    unknown = {"limits": {"items": 6, "logs.items": 5}, "plan": "nope"}
    refused = await rig.admin.patch(f"/admin/orgs/{org_id}", json=unknown)
    assert (refused.status_code, refused.json()["error"]) == (400, "bad_request")
    taken = {"limits": {"items": 77}, "plan": "big", "billing_customers": {"stripe": "cus_taken"}}
    conflict = await rig.admin.patch(f"/admin/orgs/{org_id}", json=taken)
    assert (conflict.status_code, conflict.json()["error"]) == (409, "conflict")
    after = (await rig.admin.get(f"/admin/orgs/{org_id}")).json()
    assert after == before  # neither PATCH left a limit, a plan or a link behind
    assert await statuses(rig, key, 4) == [200] * 4  # 8 spans: the old limit of 1,000 holds
