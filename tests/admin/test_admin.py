"""The admin API contract, exactly as the data-plane issue fixes it."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.admin.app import build_admin_app
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.memory import MemoryStore

TOKEN = "admin-token-for-tests"


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    runtime = Runtime(
        Settings(
            data_dir=tmp_path,
            key_secret="k" * 32,
            admin_token=TOKEN,
            upstream_url="http://collector:4318",
            upstream_allowlist="10.0.0.1, *.ingest.example, https://backend.example:8443",
        ),
        store=MemoryStore(),
        spool_dir=None,
    )
    await runtime.start()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_admin_app(runtime)),
        base_url="http://admin",
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    yield runtime, client
    await client.aclose()
    await runtime.close()


async def create_org(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await client.post("/admin/orgs", json={"name": "acme", **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_create_org_returns_id_name_and_limits(admin: Any) -> None:
    _, client = admin
    org = await create_org(client, limits={"requests": 10, "bytes": 5000}, upstream=None)
    assert org["id"].startswith("org_")
    assert org["name"] == "acme"
    assert org["limits"] == {"requests": 10, "bytes": 5000}


async def test_patch_is_partial_null_lifts_a_limit_and_plan_drops_the_override(admin: Any) -> None:
    _, client = admin
    org = await create_org(client, limits={"requests": 10, "items": 3})
    r = await client.patch(f"/admin/orgs/{org['id']}", json={"limits": {"items": None, "bytes": 9}})
    assert r.status_code == 200
    assert r.json()["limits"] == {"requests": 10, "items": None, "bytes": 9}
    assert r.json()["effective_limits"] == {"requests": 10, "bytes": 9}
    assert r.json()["name"] == "acme"
    r = await client.patch(f"/admin/orgs/{org['id']}", json={"upstream": "http://10.0.0.1:4318/"})
    assert r.json()["upstream"] == "http://10.0.0.1:4318"
    assert r.json()["limits"] == {"requests": 10, "items": None, "bytes": 9}
    r = await client.patch(f"/admin/orgs/{org['id']}", json={"limits": {"items": "plan"}})
    assert r.json()["limits"] == {"requests": 10, "bytes": 9}
    for bad in ("plans", "10", 1.5, -1, True):
        r = await client.patch(f"/admin/orgs/{org['id']}", json={"limits": {"items": bad}})
        assert (r.status_code, r.json()["error"]) == (400, "bad_request"), bad


async def test_keys_are_shown_once_and_revocation_takes_effect_at_once(admin: Any) -> None:
    runtime, client = admin
    org = await create_org(client)
    r = await client.post(f"/admin/orgs/{org['id']}/keys")
    assert r.status_code == 201
    key_id, key = r.json()["id"], r.json()["key"]
    assert key_id.startswith("key_") and key.startswith("igk_")
    assert key not in str(runtime.store.keys)  # only the keyed hash is kept
    assert (await runtime.routing.lookup(runtime.hasher(key))) is not None
    assert (await client.delete(f"/admin/keys/{key_id}")).status_code == 204
    assert (await runtime.routing.lookup(runtime.hasher(key))) is None
    assert (await client.delete(f"/admin/keys/{key_id}")).status_code == 404


async def test_usage_reports_the_period_the_counters_and_the_limits(admin: Any) -> None:
    _, client = admin
    org = await create_org(client, limits={"items": 100})
    r = await client.get(f"/admin/orgs/{org['id']}/usage")
    assert r.status_code == 200
    body = r.json()
    assert body["usage"] == {"requests": 0, "bytes": 0, "items": 0}
    assert body["limits"] == {"items": 100}
    assert body["period_start"].endswith("-01T00:00:00Z")
    assert body["period_start"] < body["period_end"]


async def test_suspension_is_set_and_lifted(admin: Any) -> None:
    runtime, client = admin
    org = await create_org(client)
    r = await client.put(
        f"/admin/orgs/{org['id']}/suspension", json={"suspended": True, "reason": "fraud"}
    )
    assert r.status_code == 200
    assert (r.json()["suspended"], r.json()["suspension_reason"]) == (True, "fraud")
    stored = await runtime.store.get_org(org["id"])
    assert stored.suspended
    r = await client.put(
        f"/admin/orgs/{org['id']}/suspension", json={"suspended": False, "reason": ""}
    )
    assert r.json()["suspended"] is False


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
async def test_every_route_needs_the_admin_token(admin: Any, header: str | None) -> None:
    _, client = admin
    headers = {"authorization": header} if header else {}
    client.headers.pop("authorization")
    for method, path in [
        ("GET", "/metrics"),
        ("POST", "/admin/orgs"),
        ("GET", "/admin/orgs/x/usage"),
    ]:
        r = await client.request(method, path, headers=headers)
        assert (r.status_code, r.json()) == (401, {"error": "unauthorized"})


async def test_metrics_are_prometheus_text(admin: Any) -> None:
    _, client = admin
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert "gateway_fail_open_admissions_total" in r.text


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "a", "limits": {"requests": -1}},
        {"name": "a", "limits": {"requests": 1.5}},
        {"name": "a", "limits": {"requests": True}},
        {"name": "a", "limits": {"cpu": 1}},
        {"name": "a", "limits": []},
        {"name": "a", "upstream": "file:///etc/passwd"},
        {"name": "a", "upstream": 3},
        {"name": "a", "color": "red"},
        [],
    ],
)
async def test_bad_org_bodies_get_400_bad_request(admin: Any, body: Any) -> None:
    _, client = admin
    r = await client.post("/admin/orgs", json=body)
    assert r.status_code == 400
    assert r.json()["error"] == "bad_request"


async def test_malformed_json_and_unknown_orgs(admin: Any) -> None:
    _, client = admin
    r = await client.post(
        "/admin/orgs", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert (r.status_code, r.json()["error"]) == (400, "bad_request")
    assert (await client.get("/admin/orgs/org_missing/usage")).status_code == 404
    assert (await client.post("/admin/orgs/org_missing/keys")).status_code == 404
    r = await client.put("/admin/orgs/org_missing/suspension", json={"suspended": True})
    assert r.status_code == 404


async def test_billing_view_of_a_new_org(admin: Any) -> None:
    _, client = admin
    org = await create_org(client)
    r = await client.get(f"/admin/orgs/{org['id']}/billing")
    assert r.status_code == 200
    assert r.json() == {
        "payment_status": "ok",
        "plan": "free",
        "period_start": None,
        "period_end": None,
        "cancel_at_period_end": False,
        "overdue_since": None,
        "suspended_at": None,
        "suspension_reason": None,
        "never_paid": True,
        "balance_minor": 0,
    }
    assert (await client.get("/admin/orgs/org_missing/billing")).status_code == 404


async def test_admin_changes_are_audited_with_their_reason(admin: Any) -> None:
    _, client = admin
    org = await create_org(client, limits={"requests": 5})
    await client.patch(f"/admin/orgs/{org['id']}", json={"limits": {"requests": 9}})
    await client.put(
        f"/admin/orgs/{org['id']}/suspension", json={"suspended": True, "reason": "abuse"}
    )
    await client.put(
        f"/admin/orgs/{org['id']}/suspension", json={"suspended": False, "reason": "cleared"}
    )
    entries = (await client.get(f"/admin/audit?org_id={org['id']}")).json()["entries"]
    fields = [(e["field"], e["reason"], e["actor"]) for e in entries]
    assert ("suspended", "abuse", "admin") in fields
    assert ("suspended", "cleared", "admin") in fields
    assert any(field.startswith("limits") for field, _, _ in fields)
    assert (await client.get("/admin/webhooks/events")).json() == {"events": []}


async def test_billing_customers_are_unique_and_prices_validated(admin: Any) -> None:
    _, client = admin
    first, second = await create_org(client), await create_org(client)
    body = {"billing_customers": {"stripe": "cus_1"}}
    r = await client.patch(f"/admin/orgs/{first['id']}", json=body)
    assert r.json()["billing_customers"] == {"stripe": "cus_1"}
    r = await client.patch(f"/admin/orgs/{second['id']}", json=body)
    assert (r.status_code, r.json()["error"]) == (409, "conflict")
    for bad in (
        {"billing_customers": {"braintree": "x"}},
        {"prices": {"items": -1}},
        {"prices": {"items": 0.5}},
        {"prices": {"gpu": 1}},
        {"block_over_balance": "yes"},
    ):
        r = await client.patch(f"/admin/orgs/{first['id']}", json=bad)
        assert (r.status_code, r.json()["error"]) == (400, "bad_request"), bad
    assert (await client.get("/admin/audit?limit=0")).status_code == 400


@pytest.mark.parametrize(
    "upstream",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://127.0.0.1:8081",
        "http://localhost:8081",
        "http://evil.example",
        "http://ingest.example.evil.com",
        "https://backend.example:9999",
        "http://user:pass@10.0.0.1",
        "gopher://10.0.0.1",
        "http://10.0.0.1:notaport",
    ],
)
async def test_org_upstreams_outside_the_allowlist_are_refused(admin: Any, upstream: str) -> None:
    """No SSRF through the admin API: an org's upstream must be allowlisted."""
    _, client = admin
    r = await client.post("/admin/orgs", json={"name": "a", "upstream": upstream})
    assert (r.status_code, r.json()["error"]) == (400, "bad_request")


@pytest.mark.parametrize(
    "upstream",
    [
        "http://10.0.0.1:4318",
        "https://eu.ingest.example",
        "https://backend.example:8443",
        "http://collector:4318/",
    ],
)
async def test_allowlisted_org_upstreams_and_the_default_origin_pass(
    admin: Any, upstream: str
) -> None:
    _, client = admin
    r = await client.post("/admin/orgs", json={"name": "a", "upstream": upstream})
    assert r.status_code == 201, r.text


async def test_unknown_routes_and_methods_answer_in_the_error_shape(admin: Any) -> None:
    _, client = admin
    missing = await client.get("/admin/nope")
    assert (missing.status_code, missing.json()) == (404, {"error": "not_found"})
    wrong = await client.delete("/admin/orgs")
    assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")
    assert wrong.headers["content-type"] == "application/json"


async def test_orgs_are_listed_and_searched_by_name_or_id(admin: Any) -> None:
    _, client = admin
    made = [await create_org(client, name=name) for name in ("acme-prod", "acme-dev", "globex")]
    listed = (await client.get("/admin/orgs")).json()["orgs"]
    assert [o["name"] for o in listed] == ["acme-dev", "acme-prod", "globex"]
    found = (await client.get("/admin/orgs", params={"q": "ACME", "limit": 1})).json()["orgs"]
    assert [o["name"] for o in found] == ["acme-dev"]
    by_id = (await client.get("/admin/orgs", params={"q": made[2]["id"]})).json()["orgs"]
    assert [o["id"] for o in by_id] == [made[2]["id"]]
    assert (await client.get("/admin/orgs", params={"limit": "0"})).status_code == 400
