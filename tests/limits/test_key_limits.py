"""Limits per ingest key: a request fits its key's limits and its org's, both reserved at once;
a refusal says which. Through the ingest and admin apps over every backend."""

from __future__ import annotations

from typing import Any

from tests.limits.conftest import SPANS, Rig, measured, tenant
from tests.refusals import error_of


async def new_key(rig: Rig, org_id: str, **body: Any) -> dict[str, Any]:
    created = await rig.admin.post(f"/admin/orgs/{org_id}/keys", json=body)
    assert created.status_code == 201, created.text
    answer: dict[str, Any] = created.json()
    return answer


async def statuses(rig: Rig, key: str, n: int) -> list[int]:
    return [(await rig.send(key, "traces", SPANS)).status_code for _ in range(n)]


async def key_usage(rig: Rig, key_id: str) -> dict[str, Any]:
    await rig.runtime.usage.flush()
    response = await rig.admin.get(f"/admin/keys/{key_id}/usage")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_key_at_its_limit_is_refused_while_another_key_of_the_org_is_served(
    rig: Rig,
) -> None:
    org_id, _ = await tenant(rig, {})
    small = await new_key(rig, org_id, name="ci", limits={"traces.items": 4})
    big = await new_key(rig, org_id, name="prod")
    assert (small["name"], small["limits"]) == ("ci", {"traces.items": 4})
    assert await statuses(rig, small["key"], 3) == [200, 200, 402]  # 2 spans a batch
    refused = await rig.send(small["key"], "traces", SPANS)
    code, detail = error_of(refused)
    assert (code, detail["scope"], detail["meter"], detail["key_id"]) == (
        "usage_limit_exceeded", "key", "traces.items", small["id"]
    )  # fmt: skip
    assert await statuses(rig, big["key"], 5) == [200] * 5
    usage = await key_usage(rig, small["id"])
    assert measured(usage["meters"])["traces.items"] == {"used": 4, "limit": 4}
    assert usage["usage"] == {"requests": 2, "bytes": 2 * len(SPANS), "items": 4}
    assert (await key_usage(rig, big["id"]))["usage"]["items"] == 10


async def test_the_org_s_limit_holds_over_all_its_keys(rig: Rig) -> None:
    org_id, _ = await tenant(rig, {"items": 10})
    one = await new_key(rig, org_id, limits={"items": 8})
    two = await new_key(rig, org_id, limits={"items": 8})
    seen = await statuses(rig, one["key"], 3) + await statuses(rig, two["key"], 3)
    assert seen == [200, 200, 200, 200, 200, 402]  # 5 batches of 2 fill the org's 10
    code, detail = error_of(await rig.send(two["key"], "traces", SPANS))
    assert (code, detail["scope"], detail["meter"]) == ("usage_limit_exceeded", "org", "items")
    assert "key_id" not in detail
    one_used = (await key_usage(rig, one["id"]))["usage"]["items"]
    two_used = (await key_usage(rig, two["id"]))["usage"]["items"]
    assert (one_used, two_used) == (6, 4)


async def test_a_key_s_limits_change_at_once_and_null_lifts_one(rig: Rig) -> None:
    org_id, _ = await tenant(rig, {})
    key = await new_key(rig, org_id, limits={"requests": 1})
    assert await statuses(rig, key["key"], 2) == [200, 402]
    raised = await rig.admin.patch(f"/admin/keys/{key['id']}", json={"limits": {"requests": 3}})
    assert raised.status_code == 200 and raised.json()["limits"] == {"requests": 3}
    assert await statuses(rig, key["key"], 3) == [200, 200, 402]
    lifted = await rig.admin.patch(
        f"/admin/keys/{key['id']}", json={"name": "renamed", "limits": {"requests": None}}
    )
    assert (lifted.json()["name"], lifted.json()["limits"]) == ("renamed", {})
    assert await statuses(rig, key["key"], 2) == [200, 200]


async def test_keys_are_listed_without_their_plaintext_and_bad_bodies_are_refused(
    rig: Rig,
) -> None:
    org_id, first = await tenant(rig, {})
    second = await new_key(rig, org_id, name="second")
    await rig.admin.delete(f"/admin/keys/{second['id']}")
    listed = (await rig.admin.get(f"/admin/orgs/{org_id}/keys")).json()["keys"]
    assert [(k["name"], k["revoked"]) for k in listed] == [("", False), ("second", True)]
    assert all("key" not in k and first not in str(k) for k in listed)
    for body in ({"limits": {"rate_requests": 5}}, {"limits": {"items": -1}}, {"name": 7},
                 {"limits": {"spans": 1}}, {"scope": "x"}):  # fmt: skip
        refused = await rig.admin.post(f"/admin/orgs/{org_id}/keys", json=body)
        assert (refused.status_code, refused.json()["error"]) == (400, "bad_request"), body
    assert (await rig.admin.get("/admin/keys/key_missing/usage")).status_code == 404
    missing = await rig.admin.patch("/admin/keys/key_missing", json={"name": "x"})
    assert missing.status_code == 404
    assert (await rig.admin.get("/admin/orgs/org_missing/keys")).status_code == 404


async def test_a_refused_batch_costs_the_key_nothing(rig: Rig) -> None:
    from gateway.ingest.upstream import UpstreamResponse
    from tests.fakes import MemoryUpstream

    org_id, _ = await tenant(rig, {})
    key = await new_key(rig, org_id, limits={"items": 2})
    upstream = rig.runtime.upstream
    assert isinstance(upstream, MemoryUpstream)
    upstream.answer = UpstreamResponse(503, [], b"")
    assert await statuses(rig, key["key"], 3) == [503, 503, 503]  # refunded each time
    assert (await key_usage(rig, key["id"]))["usage"]["items"] == 0


async def test_a_limit_lifted_and_set_again_counts_what_was_sent_meanwhile(rig: Rig) -> None:
    """Regression: a meter lifted and later limited again looked unchanged, and the
    reservation taken before the lift was spent again: 1,350 admitted against 1,000."""
    org_id, _ = await tenant(rig, {"traces.items": 10})
    key = await new_key(rig, org_id, limits={"items": 10})
    assert await statuses(rig, key["key"], 2) == [200, 200]  # 4 items of both limits

    async def limit_both(value: int | None) -> None:
        for path, meter in ((f"/admin/keys/{key['id']}", "items"),
                            (f"/admin/orgs/{org_id}", "traces.items")):  # fmt: skip
            patched = await rig.admin.patch(path, json={"limits": {meter: value}})
            assert patched.status_code == 200, patched.text

    await limit_both(None)
    assert await statuses(rig, key["key"], 3) == [200, 200, 200]  # 10 items, unlimited
    await limit_both(10)
    assert await statuses(rig, key["key"], 3) == [402, 402, 402]
    assert (await key_usage(rig, key["id"]))["usage"]["items"] == 10


async def test_ids_and_names_no_store_could_hold_are_refused_not_retried(rig: Rig) -> None:
    """Regression: a NUL in an id or an org name got 503 store_unavailable with Retry-After on
    PostgreSQL (a retry that can never succeed); a deeply nested body got 500."""
    for path in ("/admin/keys/key%00x/usage", "/admin/orgs/org%00x", "/admin/orgs/org%00x/keys"):
        response = await rig.admin.get(path)
        assert (response.status_code, response.json()["error"]) == (404, "not_found"), path
    named = await rig.admin.post("/admin/orgs", json={"name": "a\u0000b"})
    assert (named.status_code, named.json()["error"]) == (400, "bad_request")
    nested = b'{"name": "x", "limits": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    deep = await rig.admin.post(
        "/admin/orgs", content=nested, headers={"content-type": "application/json"}
    )
    assert (deep.status_code, deep.json()["error"]) == (400, "bad_request")


async def test_concurrent_changes_of_different_meters_all_stay(rig: Rig) -> None:
    """Regression: limits were read, merged and written back outside the store's transaction;
    of four admins each setting a meter at once, one change survived."""
    import asyncio

    org_id, _ = await tenant(rig, {})
    key = await new_key(rig, org_id)
    meters = ["items", "logs.items", "traces.items", "bytes"]
    for path in (f"/admin/keys/{key['id']}", f"/admin/orgs/{org_id}"):
        answers = await asyncio.gather(
            *(rig.admin.patch(path, json={"limits": {m: 100 + n}}) for n, m in enumerate(meters))
        )
        assert {a.status_code for a in answers} == {200}
    expected = {m: 100 + n for n, m in enumerate(meters)}
    assert (await rig.admin.get(f"/admin/orgs/{org_id}")).json()["limits"] == expected
    listed = (await rig.admin.get(f"/admin/orgs/{org_id}/keys")).json()["keys"]
    assert [k["limits"] for k in listed if k["id"] == key["id"]] == [expected]


async def test_a_revoked_key_cannot_be_changed(rig: Rig) -> None:
    org_id, _ = await tenant(rig, {})
    made = await new_key(rig, org_id, limits={"items": 8})
    assert (await rig.admin.delete(f"/admin/keys/{made['id']}")).status_code == 204
    changed = await rig.admin.patch(f"/admin/keys/{made['id']}", json={"limits": {"items": 9}})
    assert (changed.status_code, changed.json()["error"]) == (409, "conflict")
    keys = (await rig.admin.get(f"/admin/orgs/{org_id}/keys")).json()["keys"]
    (kept,) = [key for key in keys if key["id"] == made["id"]]
    assert (kept["revoked"], kept["limits"]) == (True, {"items": 8})
