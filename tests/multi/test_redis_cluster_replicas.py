"""Two gateway processes on PostgreSQL with a real three-master Redis Cluster in front
(``GATEWAY_REDIS_CLUSTER``): exact limits, and a master killed under load."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from tests.harness import Upstream
from tests.multi.test_replicas import (
    Cluster,
    fire,
    settled_usage,
)
from tests.services import (
    ThrowawayRedisCluster,
    postgres_url,
    redis_cluster_url,
    unavailable,
    unique_name,
)

CLUSTER_ENV = {"GATEWAY_REDIS_CLUSTER": "true"}


@pytest.fixture
def replicas(tmp_path: Path, upstream: Upstream) -> Iterator[Cluster]:
    url = f"{postgres_url()}?schema={unique_name('rc')}"
    group = Cluster(tmp_path, upstream, url, redis_cluster_url())
    yield group
    group.stop()


async def test_two_replicas_on_a_redis_cluster_admit_exactly_the_limit(replicas: Cluster) -> None:
    a, b = replicas.start(**CLUSTER_ENV), replicas.start(**CLUSTER_ENV)
    org_id, key = a.new_tenant("acme", limits={"requests": 100})
    statuses = await fire([a.url, b.url], key, 1000)
    assert statuses.count(200) == 100 and set(statuses) <= {200, 402, 429}
    assert settled_usage(a, org_id, 100) == 100


def master_of(cluster: ThrowawayRedisCluster, org_id: str) -> int:
    """The port of the master that holds the org's quota hashes (its hash tag's slot)."""
    client = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    try:
        return int(client.get_node_from_key(f"{{{org_id}}}").port)  # type: ignore[no-untyped-call]
    finally:
        client.close()


async def test_a_master_killed_under_load_lifts_no_limit_and_loses_no_usage(
    tmp_path: Path, upstream: Upstream
) -> None:
    try:
        cluster = ThrowawayRedisCluster.create()
    except (RuntimeError, OSError, subprocess.SubprocessError):
        unavailable("a Redis Cluster (redis-server --cluster-enabled)")
    group = Cluster(tmp_path, upstream, f"{postgres_url()}?schema={unique_name('rk')}", cluster.url)
    try:
        a, b = group.start(**CLUSTER_ENV), group.start(**CLUSTER_ENV)
        limit = 120
        tenants = [a.new_tenant(f"org{n}", limits={"requests": limit}) for n in range(6)]
        victim = master_of(cluster, tenants[0][0])
        admitted = {org_id: 0 for org_id, _ in tenants}
        statuses: list[int] = []

        async def round_of_load() -> None:
            answers = await asyncio.gather(
                *(fire([a.url, b.url], key, 15, concurrency=15) for _, key in tenants)
            )
            for (org_id, _), got in zip(tenants, answers, strict=True):
                admitted[org_id] += got.count(200)
                statuses.extend(got)

        for _ in range(3):
            await round_of_load()
        await asyncio.to_thread(cluster.kill, victim)
        for _ in range(4):
            await round_of_load()
        await asyncio.to_thread(cluster.start, victim)  # empty: rebuilt from PostgreSQL
        await asyncio.to_thread(cluster.wait_ok)
        for _ in range(4):
            await round_of_load()

        assert not [s for s in statuses if s >= 500 or s == 0], "no 5xx caused by the store"
        assert all(n <= limit for n in admitted.values()), admitted
        # Orgs on the live masters kept being served (most reach their limit; in about one
        # run in three one stops up to 15 short, answered 429 to retry: quota a grant in
        # flight at the kill still holds, an open gap). The victim's org was served too.
        live = [org_id for org_id, _ in tenants if master_of(cluster, org_id) != victim]
        assert live and all(admitted[org_id] >= limit // 2 for org_id in live), admitted
        assert set(statuses) <= {200, 402, 429}
        assert admitted[tenants[0][0]] > 0
        for org_id, n in admitted.items():
            assert settled_usage(a, org_id, n, seconds=20) == n
    finally:
        group.stop()
        cluster.destroy()
