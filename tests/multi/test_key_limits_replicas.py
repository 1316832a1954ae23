"""Key limits and signal meters on two replicas (PostgreSQL + Redis): 1,000 concurrent requests
over 10 keys of one org (each key's limit, the org's total and its traces.items limit exact;
stored and received equal admitted), a replica SIGKILLed mid-load, and Redis lost mid-load."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness import Upstream
from tests.multi.test_replicas import Cluster, cluster  # noqa: F401 (the fixture)
from tests.services import ThrowawayRedis, postgres_url, unique_name

SPANS = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{},{}]}]}]}'  # 2 spans a request
KEYS, PER_KEY, KEY_ITEMS, ORG_ITEMS = 10, 100, 80, 650


async def send_all(urls: list[str], keys: list[str]) -> Counter[str]:
    """Every key's requests, spread over the replicas; a 429 is retried as an SDK would."""
    admitted: Counter[str] = Counter()
    gate = asyncio.Semaphore(64)

    async def one(session: aiohttp.ClientSession, key: str, n: int) -> None:
        headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
        for _attempt in range(20):
            async with (
                gate,
                session.post(
                    f"{urls[n % len(urls)]}/v1/traces", data=SPANS, headers=headers
                ) as response,
            ):
                status = response.status
                await response.read()
            if status != 429:
                break
            await asyncio.sleep(0.5)
        assert status in (200, 402), status
        if status == 200:
            admitted[key] += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, key, n) for n in range(PER_KEY) for key in keys))
    return admitted


def settled(read: Any, expect: int, seconds: float = 10) -> int:
    deadline = time.monotonic() + seconds
    while (value := read()) != expect and time.monotonic() < deadline:
        time.sleep(0.1)
    result: int = value
    return result


async def test_key_org_and_signal_limits_are_exact_across_two_replicas(
    cluster: Cluster,  # noqa: F811
) -> None:
    a, b = cluster.start(), cluster.start()
    org_id = a.create_org("keys", limits={"traces.items": ORG_ITEMS, "items": 10_000})
    keys: dict[str, str] = {}
    for n in range(KEYS):
        made = a.admin("POST", f"/admin/orgs/{org_id}/keys",
                       {"name": f"k{n}", "limits": {"items": KEY_ITEMS}})  # fmt: skip
        assert made.status_code == 201, made.text
        keys[made.json()["key"]] = made.json()["id"]

    admitted = await send_all([a.url, b.url], list(keys))

    total = sum(admitted.values())
    assert 2 * total == ORG_ITEMS, admitted  # the org's traces.items, to the span
    assert all(2 * n <= KEY_ITEMS for n in admitted.values()), admitted
    stored = settled(lambda: a.usage(org_id)["items"], ORG_ITEMS)
    assert stored == ORG_ITEMS
    assert len(cluster.upstream.received(org_id)) == total
    for key, key_id in keys.items():
        usage = a.admin("GET", f"/admin/keys/{key_id}/usage").json()
        assert usage["usage"]["items"] == 2 * admitted[key], (key_id, usage)
        assert usage["meters"]["items"]["limit"] == KEY_ITEMS


def meter_used(replica: Any, path: str, meter: str) -> int:
    """``used`` of one meter in an org's or a key's usage view."""
    response = replica.admin("GET", path)
    assert response.status_code == 200, response.text
    meters: dict[str, dict[str, int]] = response.json()["meters"]
    return meters.get(meter, {}).get("used", 0)


async def fire_keys(urls: list[str], keys: list[str], count: int) -> list[int]:
    """``count`` requests of each key at once, spread over the replicas (0: no answer)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(key: str, n: int) -> int:
            headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
            try:
                url = f"{urls[n % len(urls)]}/v1/traces"
                async with session.post(url, data=SPANS, headers=headers) as response:
                    await response.read()
                    return response.status
            except (aiohttp.ClientError, TimeoutError):
                return 0

        return list(await asyncio.gather(*(one(k, n) for n in range(count) for k in keys)))


async def test_a_killed_replica_exceeds_no_key_or_signal_limit_and_its_quota_comes_back(
    cluster: Cluster,  # noqa: F811
) -> None:
    a, b = cluster.start(), cluster.start()
    org_id = a.create_org("killed", limits={"traces.items": 500})
    made = [
        a.admin("POST", f"/admin/orgs/{org_id}/keys", body).json()
        for body in ({"name": "capped", "limits": {"items": 300}}, {"name": "free"})
    ]
    capped, free = made[0], made[1]
    load = asyncio.create_task(fire_keys([a.url, b.url], [capped["key"], free["key"]], 200))
    await asyncio.sleep(0.3)
    a.process.send_signal(signal.SIGKILL)  # mid-run: some of its requests are in flight
    await load
    # What a held comes back once b adopts its spool: send until the org's spans are used up.
    org_path, key_path = f"/admin/orgs/{org_id}/usage", f"/admin/keys/{capped['id']}/usage"
    deadline = time.monotonic() + 30
    while meter_used(b, org_path, "traces.items") < 500:
        assert time.monotonic() < deadline, "a's reservations never came back"
        await fire_keys([b.url], [capped["key"], free["key"]], 20)
        await asyncio.sleep(0.2)
    assert settled(lambda: meter_used(b, org_path, "traces.items"), 500) == 500
    assert meter_used(b, key_path, "items") <= 300  # the key's limit held through the kill
    received = cluster.upstream.received(org_id)
    assert 2 * len(received) <= 500


async def test_redis_lost_mid_load_keeps_key_and_signal_usage_exact(
    tmp_path: Path,
    upstream: Upstream,
) -> None:
    redis = ThrowawayRedis.create()
    group = Cluster(tmp_path, upstream, f"{postgres_url()}?schema={unique_name('kr')}", redis.url)
    try:
        a, b = group.start(), group.start()
        org_id = a.create_org("redis-lost", limits={"traces.items": 1_000_000})
        made = a.admin(
            "POST", f"/admin/orgs/{org_id}/keys", {"name": "k", "limits": {"items": 10_000}}
        ).json()
        statuses: list[int] = []
        restarted = asyncio.Event()

        async def load() -> None:
            while not restarted.is_set():
                statuses.extend(await fire_keys([a.url, b.url], [made["key"]], 20))
            for _ in range(10):
                statuses.extend(await fire_keys([a.url, b.url], [made["key"]], 20))

        running = asyncio.create_task(load())
        await asyncio.sleep(0.7)
        await asyncio.to_thread(redis.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(redis.start)
        restarted.set()
        await running
        admitted = statuses.count(200)
        assert admitted > 0
        assert not [s for s in statuses if s >= 500 or s == 0], "no 5xx caused by the store"
        org_path, key_path = f"/admin/orgs/{org_id}/usage", f"/admin/keys/{made['id']}/usage"
        spans = settled(lambda: meter_used(a, org_path, "traces.items"), 2 * admitted, 20)
        assert spans == 2 * admitted
        assert meter_used(a, key_path, "items") == 2 * admitted
        assert meter_used(a, key_path, "requests") == admitted
    finally:
        group.stop()
        redis.destroy()
