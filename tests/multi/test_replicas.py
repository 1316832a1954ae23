"""Several gateway processes sharing PostgreSQL (the truth) and Redis (the counters)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from tests.harness import Gateway, Upstream, start_gateway
from tests.refusals import code_of
from tests.services import ThrowawayPostgres, ThrowawayRedis, postgres_url, redis_url, unique_name

KEY_SECRET = "replicas-share-this-key-secret"
SCALE = float(os.environ.get("RELIABILITY_SCALE", "1"))  # longer outages: RELIABILITY.md
BODY = b'{"resourceSpans":[]}'
# How long an invalidation may take to reach another replica here: far under the 30 s cache
# TTL the tests set (so only the message explains a change), far over any scheduling delay.
INVALIDATED = 10.0


class Cluster:
    """Replicas that share a store URL, a Redis, a key secret and one spool folder."""

    def __init__(self, root: Path, upstream: Upstream, store_url: str, redis: str | None) -> None:
        self.root = root
        self.upstream = upstream
        self.store_url = store_url
        self.redis = redis
        self.spool = root / "shared-spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.replicas: list[Gateway] = []

    def start(self, **env: str) -> Gateway:
        folder = self.root / f"replica-{len(self.replicas)}"
        folder.mkdir()
        (folder / "spool").symlink_to(self.spool)
        environment = {"GATEWAY_KEY_SECRET": KEY_SECRET, "GATEWAY_FLUSH_INTERVAL": "0.2", **env}
        extra = ("--redis", self.redis) if self.redis else ()
        replica = start_gateway(
            folder, self.upstream.url, environment, store_url=self.store_url, extra=extra
        )
        self.replicas.append(replica)
        return replica

    def stop(self) -> None:
        for replica in self.replicas:
            replica.terminate(timeout=10)


@pytest.fixture
def cluster(tmp_path: Path, upstream: Upstream) -> Iterator[Cluster]:
    url = f"{postgres_url()}?schema={unique_name('mp')}"
    group = Cluster(tmp_path, upstream, url, redis_url())
    yield group
    group.stop()


def post(key: str) -> dict[str, Any]:
    return {
        "content": BODY,
        "headers": {"content-type": "application/json", "authorization": f"Bearer {key}"},
    }


async def fire(urls: list[str], key: str, count: int, concurrency: int = 100) -> list[int]:
    """``count`` concurrent requests spread over the replicas; their status codes (0: no answer).

    aiohttp drives the load: httpx's pool slows down sharply with many waiting requests.
    """
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> int:
            try:
                url = f"{urls[i % len(urls)]}/v1/traces"
                async with session.post(url, data=BODY, headers=headers) as response:
                    await response.read()
                    return response.status
            except (aiohttp.ClientError, TimeoutError):
                return 0

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def settled_usage(replica: Gateway, org_id: str, expect: int, seconds: float = 10) -> int:
    """Requests counted once the replicas' flushes have landed (polls up to ``seconds``)."""
    deadline = time.monotonic() + seconds
    while True:
        used = replica.usage(org_id)["requests"]
        if used == expect or time.monotonic() > deadline:
            return used
        time.sleep(0.1)


async def test_two_replicas_admit_exactly_the_remaining_budget(cluster: Cluster) -> None:
    a, b = cluster.start(), cluster.start()
    org_id, key = a.new_tenant("acme", limits={"requests": 100})
    statuses = await fire([a.url, b.url], key, 1000)
    assert statuses.count(200) == 100
    # 429: refused while the other replica still held quota (a retry, not final); 402: final.
    assert statuses.count(402) + statuses.count(429) == 900
    assert settled_usage(b, org_id, 100) == 100
    await asyncio.sleep(2.5)  # both replicas' unspent quota is back (two flush intervals)
    assert set(await fire([a.url, b.url], key, 100)) == {402}
    assert len(cluster.upstream.received(org_id)) == 100


async def test_a_killed_replica_admits_nobody_over_and_its_quota_comes_back(
    cluster: Cluster,
) -> None:
    a, b = cluster.start(), cluster.start()
    org_id, key = a.new_tenant("acme", limits={"requests": 300})
    load = asyncio.create_task(fire([a.url, b.url], key, 400, concurrency=20))
    await asyncio.sleep(0.3)
    a.process.send_signal(signal.SIGKILL)  # mid-run: some of its requests are in flight
    statuses = await load
    # Everything a held comes back once b adopts a's spool at one of its flushes: ask until
    # the limit is used up, never beyond it (a fixed sleep was a race on a loaded machine).
    more: list[int] = []
    deadline = time.monotonic() + 30
    while b.usage(org_id)["requests"] < 300:
        assert time.monotonic() < deadline, "a's reservations never came back"
        more += await fire([b.url], key, 50, concurrency=20)
        await asyncio.sleep(0.2)
    received = len(cluster.upstream.received(org_id))
    assert received <= 300
    assert settled_usage(b, org_id, 300) == 300
    assert statuses.count(200) + more.count(200) <= 300
    # A refusal while a's quota was still held ("retry", 429) is remembered for a second.
    await asyncio.sleep(1.5)
    assert set(await fire([b.url], key, 20, concurrency=20)) == {402}


async def until_status(client: httpx.AsyncClient, url: str, key: str, status: int) -> None:
    """Ask ``url`` until it answers ``status``: well within INVALIDATED, or fail."""
    deadline = time.monotonic() + INVALIDATED
    while (await client.post(f"{url}/v1/traces", **post(key))).status_code != status:
        assert time.monotonic() < deadline, f"still not {status} after {INVALIDATED} s"
        await asyncio.sleep(0.05)


async def test_revocation_and_suspension_reach_every_replica_at_once(cluster: Cluster) -> None:
    # A 30 s cache: only the invalidation message can explain a change within INVALIDATED.
    a, b = cluster.start(GATEWAY_CACHE_TTL="30"), cluster.start(GATEWAY_CACHE_TTL="30")
    org_id = a.create_org("acme")
    key_id, key = a.create_key(org_id)
    async with httpx.AsyncClient() as client:
        assert (await client.post(f"{b.url}/v1/traces", **post(key))).status_code == 200
        a.admin("PUT", f"/admin/orgs/{org_id}/suspension", {"suspended": True, "reason": "t"})
        await until_status(client, b.url, key, 402)
        r = await client.post(f"{b.url}/v1/traces", **post(key))
        assert (r.status_code, code_of(r)) == (402, "billing_suspended")
        a.admin("PUT", f"/admin/orgs/{org_id}/suspension", {"suspended": False, "reason": ""})
        await until_status(client, b.url, key, 200)
        assert a.admin("DELETE", f"/admin/keys/{key_id}").status_code == 204
        await until_status(client, b.url, key, 401)


async def test_a_lowered_limit_reaches_every_replica_at_once(cluster: Cluster) -> None:
    a, b = cluster.start(GATEWAY_CACHE_TTL="30"), cluster.start(GATEWAY_CACHE_TTL="30")
    org_id, key = a.new_tenant("acme", limits={"requests": 1000})
    assert (await fire([b.url], key, 5)).count(200) == 5
    a.admin("PATCH", f"/admin/orgs/{org_id}", {"limits": {"requests": 8}})
    # Nothing on b shows the message's arrival without spending quota: wait a margin instead.
    await asyncio.sleep(INVALIDATED / 2)
    statuses = await fire([b.url], key, 10, concurrency=1)
    assert statuses.count(200) == 3


async def test_a_flushed_redis_never_resets_usage(tmp_path: Path, upstream: Upstream) -> None:
    redis = ThrowawayRedis.create()
    group = Cluster(tmp_path, upstream, f"{postgres_url()}?schema={unique_name('mp')}", redis.url)
    try:
        a = group.start()
        org_id, key = a.new_tenant("acme", limits={"requests": 10})
        assert (await fire([a.url], key, 6, concurrency=1)).count(200) == 6
        assert settled_usage(a, org_id, 6) == 6
        subprocess.run(["redis-cli", "-p", str(redis.port), "FLUSHALL"], check=True)
        statuses = await fire([a.url], key, 10, concurrency=1)
        assert statuses.count(200) == 4
        assert settled_usage(a, org_id, 10) == 10
    finally:
        group.stop()
        redis.destroy()


async def test_postgres_stopped_mid_load_fails_open_and_replays_usage_exactly(
    tmp_path: Path, upstream: Upstream
) -> None:
    pg = ThrowawayPostgres.create()
    group = Cluster(tmp_path, upstream, pg.url, None)
    try:
        a = group.start()
        org_id, key = a.new_tenant("acme", limits={"requests": 1_000_000})
        statuses: list[int] = []
        restarted = asyncio.Event()

        async def load() -> None:
            # Until a while after the restart, however long stopping and starting took.
            while not restarted.is_set():
                statuses.extend(await fire([a.url], key, 20, concurrency=20))
            deadline = time.monotonic() + 1.3 * SCALE
            while time.monotonic() < deadline:
                statuses.extend(await fire([a.url], key, 20, concurrency=20))

        running = asyncio.create_task(load())
        await asyncio.sleep(0.7)
        await asyncio.to_thread(pg.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(pg.start)
        restarted.set()
        await running
        admitted = statuses.count(200)
        assert admitted > 0
        assert set(statuses) == {200}, "a store outage must not reach clients"
        assert settled_usage(a, org_id, admitted, seconds=20) == admitted
        assert fail_open_admissions(a) > 0
    finally:
        group.stop()
        pg.destroy()
    assert os.path.exists(tmp_path / "shared-spool")


async def test_redis_stopped_mid_load_falls_back_to_postgres_and_usage_stays_exact(
    tmp_path: Path, upstream: Upstream
) -> None:
    redis = ThrowawayRedis.create()
    group = Cluster(tmp_path, upstream, f"{postgres_url()}?schema={unique_name('mp')}", redis.url)
    try:
        a, b = group.start(), group.start()
        # Small chunks: the replicas must go back to Redis while it is down.
        org_id, key = a.new_tenant("acme", limits={"requests": 1_000_000, "items": 40})
        statuses: list[int] = []
        restarted = asyncio.Event()

        async def load() -> None:
            # Until a while after the restart, however long stopping and starting took.
            while not restarted.is_set():
                statuses.extend(await fire([a.url, b.url], key, 20, concurrency=20))
            deadline = time.monotonic() + 1.3 * SCALE
            while time.monotonic() < deadline:
                statuses.extend(await fire([a.url, b.url], key, 20, concurrency=20))

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
        assert settled_usage(a, org_id, admitted, seconds=20) == admitted
    finally:
        group.stop()
        redis.destroy()


def fail_open_admissions(replica: Gateway) -> float:
    metrics = replica.admin("GET", "/metrics").text
    return next(
        float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("gateway_fail_open_admissions_total ")
    )


async def test_a_redis_outage_never_lifts_a_limit_while_postgres_answers(
    tmp_path: Path, upstream: Upstream
) -> None:
    # Before: with Redis down every reserve failed, and both replicas admitted fail-open.
    redis = ThrowawayRedis.create()
    group = Cluster(tmp_path, upstream, f"{postgres_url()}?schema={unique_name('mp')}", redis.url)
    try:
        a, b = group.start(), group.start()
        org_id, key = a.new_tenant("acme", limits={"requests": 60})
        assert await fire([a.url, b.url], key, 10, concurrency=10) == [200] * 10
        await asyncio.to_thread(redis.stop)
        statuses = await fire([a.url, b.url], key, 150, concurrency=20)
        # Refused 402, or 429 while the other replica still holds part of the rest.
        assert statuses.count(200) == 50 and set(statuses) <= {200, 402, 429}, statuses
        await asyncio.to_thread(redis.start)  # empty: rebuilt from PostgreSQL
        assert set(await fire([a.url, b.url], key, 20, concurrency=10)) <= {402, 429}
        assert settled_usage(a, org_id, 60, seconds=20) == 60
        assert fail_open_admissions(a) == fail_open_admissions(b) == 0
    finally:
        group.stop()
        redis.destroy()
