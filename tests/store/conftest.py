"""One ``store`` fixture runs the contract suite against every backend.

A backend is a param: its id and how to set up a place for data in a test's tmp_path,
from which any number of store instances (like processes) can be opened.
PostgreSQL tests each get a schema of their own on ``tests.services.postgres_url()``,
dropped afterwards; ``postgresql+redis`` is RedisQuotaStore in front of such a schema
(paired as the runtime pairs them, ``QuotaInFront``), with a Redis key prefix of its own,
deleted afterwards. Without a server they skip, and under
CI they fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.store import QuotaStore, Store, open_store
from gateway.store.memory import MemoryStore
from gateway.store.postgres import PostgresStore, split_url
from gateway.store.redis_quota import RedisQuotaStore
from tests.services import postgres_url, redis_cluster_url, redis_url, unique_name

NewStore = Callable[[], Store]


@dataclass(frozen=True)
class Backend:
    """Where one test's data lives: ``new()`` opens another instance on it."""

    new: NewStore
    cleanup: Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


def new_schema_url() -> str:
    """A URL on the test server whose schema no other test uses (and nothing created yet)."""
    base = postgres_url()
    return f"{base}{'&' if '?' in base else '?'}schema={unique_name('t')}"


async def drop_schema(url: str) -> None:
    dsn, schema = split_url(url)
    if schema is None:
        return
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def delete_redis_keys(prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url(), decode_responses=True)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def _memory(_: Path) -> Backend:
    shared = MemoryStore()
    return Backend(lambda: shared, _nothing)


def memory_backend(tmp_path: Path) -> Backend:
    return _memory(tmp_path)


def _sqlite(tmp_path: Path) -> Backend:
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    return Backend(lambda: open_store(url), _nothing)


def _postgresql(_: Path) -> Backend:
    url = new_schema_url()
    return Backend(lambda: PostgresStore(url), lambda: drop_schema(url))


class QuotaInFront:
    """A durable store with a quota store in front, as ``Runtime`` pairs them, as one object
    for the contract suites: quota calls go to ``quota``, everything else to ``durable``."""

    QUOTA = frozenset({"reserve", "commit", "commit_many", "heartbeat", "release"})

    def __init__(self, durable: Store, quota: QuotaStore) -> None:
        self.durable = durable
        self.quota = quota

    def __getattr__(self, name: str) -> Any:
        return getattr(self.quota if name in self.QUOTA else self.durable, name)

    async def open(self) -> None:
        await self.durable.open()
        await self.quota.open()

    async def close(self) -> None:
        await self.quota.close()
        await self.durable.close()

    async def ping(self) -> None:
        await self.durable.ping()
        await self.quota.ping()


def _in_front(durable: Store, redis: str, prefix: str, cluster: bool = False) -> Store:
    quota = RedisQuotaStore(durable, redis, prefix=prefix, cluster=cluster)
    return cast(Store, QuotaInFront(durable, quota))


async def delete_cluster_keys(url: str, prefix: str) -> None:
    client = aioredis.RedisCluster.from_url(url, decode_responses=True)
    try:
        for key in [key async for key in client.scan_iter(match=f"{prefix}:*")]:
            await client.delete(key)
    finally:
        await client.aclose()


def _postgresql_rediscluster(_: Path) -> Backend:
    """RedisQuotaStore on a real three-master Redis Cluster (``GATEWAY_REDIS_CLUSTER``)."""
    url, prefix = new_schema_url(), unique_name("gwk")
    cluster = redis_cluster_url()

    async def cleanup() -> None:
        await delete_cluster_keys(cluster, prefix)
        await drop_schema(url)

    return Backend(lambda: _in_front(PostgresStore(url), cluster, prefix, cluster=True), cleanup)


def _postgresql_redis(_: Path) -> Backend:
    url, prefix = new_schema_url(), unique_name("gwc")
    redis = redis_url()

    async def cleanup() -> None:
        await delete_redis_keys(prefix)
        await drop_schema(url)

    return Backend(lambda: _in_front(PostgresStore(url), redis, prefix), cleanup)


# Backends that keep data in a database other store instances can share.
DURABLE_BACKENDS = [
    pytest.param(_sqlite, id="sqlite"),
    pytest.param(_postgresql, id="postgresql"),
    pytest.param(_postgresql_redis, id="postgresql+redis"),
    pytest.param(_postgresql_rediscluster, id="postgresql+rediscluster"),
]
BACKENDS = [pytest.param(_memory, id="memory"), *DURABLE_BACKENDS]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    backend: Backend = request.param(tmp_path)
    try:
        instance = backend.new()
        await instance.open()
        yield instance
        await instance.close()
    finally:
        await backend.cleanup()


@pytest.fixture(params=DURABLE_BACKENDS)
async def durable(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[NewStore]:
    """Opens store instances on one database, as several processes would (not yet opened)."""
    backend: Backend = request.param(tmp_path)
    try:
        yield backend.new
    finally:
        await backend.cleanup()


# RedisQuotaStore: Redis counters in front of a truth

MakeStore = Callable[..., Awaitable[RedisQuotaStore]]
TRUTHS = [
    pytest.param(_memory, id="memory"),
    pytest.param(_sqlite, id="sqlite"),
    pytest.param(_postgresql, id="postgresql"),
]


@pytest.fixture(params=TRUTHS)
async def new_truth(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[NewStore]:
    """Handles on one truth: the same MemoryStore, or new connections to one database."""
    backend: Backend = request.param(tmp_path)
    try:
        yield backend.new
    finally:
        await backend.cleanup()


@pytest.fixture
async def truth(new_truth: NewStore) -> AsyncIterator[Store]:
    handle = new_truth()
    await handle.open()
    yield handle
    await handle.close()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    name = unique_name("gwtest")
    yield name
    await delete_redis_keys(name)


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url(), decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def make_store(new_truth: NewStore, prefix: str) -> AsyncIterator[MakeStore]:
    """Opens RedisQuotaStores on one Redis prefix, over ``truth`` or a new handle on it (opened
    here, as the runtime opens its durable store before the quota store in front of it)."""
    opened: list[tuple[RedisQuotaStore, Store]] = []

    async def make(url: str | None = None, truth: Store | None = None) -> RedisQuotaStore:
        durable = truth or new_truth()
        await durable.open()
        store = RedisQuotaStore(durable, url or redis_url(), prefix=prefix)
        await store.open()
        opened.append((store, durable))
        return store

    yield make
    for store, durable in opened:
        await store.close()
        await durable.close()


@pytest.fixture
def org() -> str:
    return unique_name("org")
