"""GET /v1/usage: a key holder's own budget, over every backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from gateway.ingest.app import IngestApp
from gateway.ingest.keys import generate_key
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.memory import MemoryStore
from policies.model import Limits
from tests.fakes import FlakyStore, MemoryUpstream
from tests.limits.conftest import LOGS, SPANS, Rig, tenant


async def own_usage(rig: Rig, key: str) -> dict[str, Any]:
    response = await rig.ingest.get("/v1/usage", headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_key_sees_its_org_and_its_own_limits_and_nothing_of_another(rig: Rig) -> None:
    org_id, _ = await tenant(rig, {"items": 100, "traces.items": 50})
    keys = []
    for limit in (20, 30):
        made = await rig.admin.post(
            f"/admin/orgs/{org_id}/keys", json={"name": f"k{limit}", "limits": {"items": limit}}
        )
        keys.append(made.json())
    other_id, other_key = await tenant(rig, {"items": 7})
    for _ in range(3):
        assert (await rig.send(keys[0]["key"], "traces", SPANS)).status_code == 200
    assert (await rig.send(keys[1]["key"], "logs", LOGS)).status_code == 200
    assert (await rig.send(other_key, "traces", SPANS)).status_code == 200

    seen = await own_usage(rig, keys[0]["key"])
    assert (seen["org_id"], seen["key_id"], seen["plan"]) == (org_id, keys[0]["id"], "free")
    items, spans = seen["meters"]["items"], seen["meters"]["traces.items"]
    assert (items["used"], items["limit"], items["remaining"]) == (9, 100, 91)
    assert (spans["used"], spans["limit"], spans["remaining"]) == (6, 50, 44)
    assert items["overage_used"] == 0 and items["resets_at"] == seen["period_end"]
    assert "forecast_exhausted_at" in items
    assert set(seen["meters"]) == {"items", "traces.items"}  # limited meters only
    own = seen["key"]["meters"]
    assert set(own) == {"items"} and (own["items"]["used"], own["items"]["limit"]) == (6, 20)
    text = str(seen)
    assert other_id not in text and keys[1]["id"] not in text  # no other org, no other key

    theirs = await own_usage(rig, other_key)
    assert theirs["org_id"] == other_id and theirs["meters"]["items"]["used"] == 2
    assert theirs["key"] == {"meters": {}} and org_id not in str(theirs)


async def test_bad_keys_and_methods_are_refused(rig: Rig) -> None:
    missing = await rig.ingest.get("/v1/usage")
    assert (missing.status_code, missing.json()["error"]) == (401, "invalid_ingest_key")
    wrong = await rig.ingest.get("/v1/usage", headers={"authorization": "Bearer igk_nope"})
    assert wrong.status_code == 401
    _, key = await tenant(rig, {})
    posted = await rig.ingest.post("/v1/usage", headers={"authorization": f"Bearer {key}"})
    assert posted.status_code == 405


async def test_calls_share_one_store_read_a_second_and_each_key_is_rate_limited(
    tmp_path: Path,
) -> None:
    store = FlakyStore(MemoryStore())
    settings = Settings(data_dir=tmp_path, key_secret="s" * 32, upstream_url="http://up.test")
    runtime = Runtime(settings, store=store, upstream=MemoryUpstream(), spool_dir=None)
    await runtime.start()
    try:
        org = await store.create_org("acme", Limits(items=10), None)
        keys = [generate_key() for _ in range(2)]
        for key in keys:
            await store.create_key(org.id, runtime.hasher(key))
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=IngestApp(runtime)), base_url="http://gw"
        )
        async with client:
            before = store.calls.get("usage", 0)
            answers = [
                (await client.get("/v1/usage", headers={"x-ingest-key": key})).status_code
                for key in keys
                for _ in range(5)
            ]
            assert answers == [200] * 10  # 5 a second for each key
            assert store.calls.get("usage", 0) - before == 1  # one read for both keys, 10 calls
            limited = await client.get("/v1/usage", headers={"x-ingest-key": keys[0]})
            assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
            assert limited.headers["retry-after"] == "1"
    finally:
        await runtime.close()
