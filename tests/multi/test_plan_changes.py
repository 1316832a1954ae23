"""A plan change reaches every replica at once: two replicas on PostgreSQL + Redis with a 30 s
cache, so only the invalidation can explain a change seen within seconds."""

from __future__ import annotations

import time

import httpx

from tests.multi.test_replicas import INVALIDATED, Cluster, cluster  # noqa: F401 (the fixture)

SPANS = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{},{}]}]}]}'  # 2 spans a request


def send(client: httpx.Client, url: str, key: str) -> int:
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    return client.post(f"{url}/v1/traces", content=SPANS, headers=headers).status_code


def test_a_plan_change_applies_on_every_replica_at_once(cluster: Cluster) -> None:  # noqa: F811
    a, b = cluster.start(GATEWAY_CACHE_TTL="30"), cluster.start(GATEWAY_CACHE_TTL="30")
    assert a.admin("PUT", "/admin/plans/pro", {"limits": {"traces.items": 100}}).status_code == 200
    org_id, key = a.new_tenant("planned")
    assert a.admin("PATCH", f"/admin/orgs/{org_id}", {"plan": "pro"}).status_code == 200
    with httpx.Client(timeout=10) as client:
        assert send(client, b.url, key) == 200  # b caches the routing for 30 s
        lowered = a.admin("PUT", "/admin/plans/pro", {"limits": {"traces.items": 2}})
        assert lowered.status_code == 200
        started = time.monotonic()
        while send(client, b.url, key) != 402:
            assert time.monotonic() - started < INVALIDATED, "b never saw the plan change"
            time.sleep(0.05)
        seen_after = time.monotonic() - started
    assert seen_after < INVALIDATED
    assert a.admin("GET", f"/admin/orgs/{org_id}").json()["effective_limits"] == {"traces.items": 2}
