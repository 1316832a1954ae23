"""Routing invalidation reaches other replicas through Redis or PostgreSQL, and survives outages."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from gateway.limits.invalidation import (
    Invalidation,
    LocalInvalidation,
    PostgresInvalidation,
    RedisInvalidation,
    open_invalidation,
)
from tests.services import ThrowawayRedis, postgres_url, redis_url, unavailable, unique_name

Factory = Callable[[], Invalidation]
# Connect and subscribe budgets far above any scheduling delay: start() waits up to twice this
# for the subscription, and a publish before it is lost by design.
TIMEOUT = 10.0


class Inbox:
    """An on_org callback that remembers what it was told."""

    def __init__(self) -> None:
        self.orgs: asyncio.Queue[str] = asyncio.Queue()

    async def __call__(self, org_id: str) -> None:
        await self.orgs.put(org_id)

    async def next(self, seconds: float = 10.0) -> str:
        return await asyncio.wait_for(self.orgs.get(), seconds)

    async def publish_until_heard(self, publisher: Invalidation, org_id: str) -> None:
        """Messages sent while a listener is away are lost by design: keep sending."""
        deadline = time.monotonic() + 30
        while self.orgs.empty():
            assert time.monotonic() < deadline, f"{org_id} never arrived"
            await publisher.publish(org_id)
            await asyncio.sleep(0.1)


def _redis() -> Factory:
    url, channel = redis_url(), unique_name("gw:invalidate")
    return lambda: RedisInvalidation(url, channel, timeout=TIMEOUT)


def _postgres() -> Factory:
    url, channel = postgres_url(), unique_name("gateway_invalidate")
    return lambda: PostgresInvalidation(url, channel, timeout=TIMEOUT)


@pytest.fixture(params=[pytest.param(_redis, id="redis"), pytest.param(_postgres, id="postgres")])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Invalidation, Invalidation]]:
    """A listening replica and a publishing one, on a channel no other test uses."""
    make: Factory = request.param()
    listener, publisher = make(), make()
    yield listener, publisher
    await listener.close()
    await publisher.close()


async def test_published_orgs_reach_another_replica_in_order(
    pair: tuple[Invalidation, Invalidation],
) -> None:
    listener, publisher = pair
    inbox = Inbox()
    await listener.start(inbox)
    await publisher.publish("org_1")
    await publisher.publish("org_2")
    assert [await inbox.next(), await inbox.next()] == ["org_1", "org_2"]


async def test_a_failing_callback_does_not_stop_the_listener(
    pair: tuple[Invalidation, Invalidation],
) -> None:
    listener, publisher = pair
    inbox = Inbox()

    async def flaky(org_id: str) -> None:
        if org_id == "org_bad":
            raise RuntimeError("cache exploded")
        await inbox(org_id)

    await listener.start(flaky)
    await publisher.publish("org_bad")
    await publisher.publish("org_good")
    assert await inbox.next() == "org_good"


async def test_redis_listener_resubscribes_after_a_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "gateway.limits.invalidation")
    try:
        server = ThrowawayRedis.create()
    except (RuntimeError, OSError):
        unavailable("redis-server")
    listener = RedisInvalidation(server.url, "gw:invalidate", timeout=TIMEOUT, max_backoff=0.2)
    publisher = RedisInvalidation(server.url, "gw:invalidate", timeout=TIMEOUT)
    try:
        inbox = Inbox()
        await listener.start(inbox)
        server.stop()
        await asyncio.sleep(0.3)
        server.start()
        await inbox.publish_until_heard(publisher, "org_1")
        assert await inbox.next() == "org_1"
        assert "redis invalidation resubscribed" in caplog.messages
    finally:
        await listener.close()
        await publisher.close()
        server.destroy()


async def test_postgres_listener_reconnects_when_its_connection_is_killed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "gateway.limits.invalidation")
    url, channel = postgres_url(), unique_name("gateway_invalidate")
    listener = PostgresInvalidation(url, channel, timeout=TIMEOUT, max_backoff=0.2)
    publisher = PostgresInvalidation(url, channel, timeout=TIMEOUT)
    admin = await asyncpg.connect(url)
    try:
        inbox = Inbox()
        await listener.start(inbox)
        killed = await admin.fetchval(
            """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
            WHERE pid <> pg_backend_pid() AND query LIKE '%' || $1 || '%'""",
            channel,
        )
        assert killed == 1
        await inbox.publish_until_heard(publisher, "org_1")
        assert await inbox.next() == "org_1"
        assert "postgres invalidation resubscribed" in caplog.messages
    finally:
        await admin.close()
        await listener.close()
        await publisher.close()


async def test_local_publish_tells_no_one() -> None:
    local = LocalInvalidation()
    inbox = Inbox()
    await local.start(inbox)
    await local.publish("org_1")
    await asyncio.sleep(0)
    assert inbox.orgs.empty()
    await local.close()


def test_open_invalidation_picks_redis_then_postgres_then_local() -> None:
    assert isinstance(
        open_invalidation("postgresql://db/gw", "redis://cache:6379/0"), RedisInvalidation
    )
    assert isinstance(open_invalidation("postgresql://db/gw", None), PostgresInvalidation)
    assert isinstance(open_invalidation("sqlite:///gw.db", None), LocalInvalidation)
    assert isinstance(open_invalidation("memory://", ""), LocalInvalidation)
