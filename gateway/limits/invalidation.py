"""Telling every replica that an org's routing changed, so cached copies drop at once.

Without a message, replicas still converge within the routing cache TTL; a message
only makes it immediate. So a lost message, or a listener that is reconnecting, costs
at most one TTL of staleness: listeners log, back off and reconnect, and never crash
the process. The payload is just the org id.

- ``LocalInvalidation``: one process (SQLite, memory); nobody else to tell.
- ``RedisInvalidation``: Redis pub/sub, used whenever a Redis URL is configured.
- ``PostgresInvalidation``: LISTEN/NOTIFY on the PostgreSQL store itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.errors import StoreError

log = logging.getLogger("gateway.limits.invalidation")

OnOrg = Callable[[str], Awaitable[None]]

_FIRST_BACKOFF = 0.1


class Invalidation(Protocol):
    async def start(self, on_org: OnOrg) -> None:
        """Call ``on_org`` for each org id another replica publishes, until closed."""

    async def publish(self, org_id: str) -> None:
        """Tell every replica (this one included, where supported); StoreError if it fails."""

    async def close(self) -> None: ...


class LocalInvalidation:
    """A single process drops its own cache directly: publishing tells no one."""

    async def start(self, on_org: OnOrg) -> None:
        return None

    async def publish(self, org_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


class _Listener:
    """A background task that keeps one subscription alive, reconnecting with backoff."""

    def __init__(self, name: str, max_backoff: float) -> None:
        self._name = name
        self._max_backoff = max_backoff
        self._on_org: OnOrg | None = None
        self._task: asyncio.Task[None] | None = None
        self._tried = asyncio.Event()
        self._deliveries: set[asyncio.Task[None]] = set()

    async def start(self, on_org: OnOrg, wait: float) -> None:
        self._on_org = on_org
        self._task = asyncio.create_task(self._run(), name=f"{self._name} invalidation")
        # A publish right after start should reach us; a dead server must not stall start-up.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._tried.wait(), wait)

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._deliveries) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    async def _run(self) -> None:
        backoff = _FIRST_BACKOFF
        subscribed_before = False
        while True:
            try:
                async for _ in self._subscription():
                    if subscribed_before:
                        # Messages sent meanwhile are lost; caches expire within their TTL.
                        log.info("%s invalidation resubscribed", self._name)
                    subscribed_before = True
                    backoff = _FIRST_BACKOFF
                    self._tried.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "%s invalidation lost (%s: %s); retrying in %.1f s",
                    self._name,
                    type(exc).__name__,
                    exc,
                    backoff,
                )
            self._tried.set()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    def _subscription(self) -> AsyncIterator[None]:
        """Yields once subscribed, then listens until the link drops (by raising)."""
        raise NotImplementedError

    async def deliver(self, org_id: str) -> None:
        if self._on_org is None or not org_id:
            return
        try:
            await self._on_org(org_id)
        except Exception:
            log.exception("invalidating org %s failed", org_id)

    def deliver_soon(self, org_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self.deliver(org_id))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)


class RedisInvalidation:
    """Redis pub/sub on one channel: one subscriber connection, one publisher client."""

    def __init__(
        self,
        redis_url: str,
        channel: str = "gw:invalidate",
        *,
        timeout: float = 1.0,
        max_backoff: float = 5.0,
    ) -> None:
        self.channel = channel
        self._url = redis_url
        self._timeout = timeout
        self._listener = _RedisListener(self, max_backoff)
        self._publisher: aioredis.Redis | None = None

    def __repr__(self) -> str:
        return f"RedisInvalidation(channel={self.channel!r})"

    def client(self, *, subscriber: bool = False) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self._url,
            decode_responses=True,
            socket_connect_timeout=self._timeout,
            # A subscriber waits for messages as long as it likes; health checks find dead links.
            socket_timeout=None if subscriber else self._timeout,
            health_check_interval=5 if subscriber else 0,
            # Reconnects are ours (logged, backed off), not hidden inside the client.
            retry=Retry(NoBackoff(), 0 if subscriber else 1),
        )

    async def start(self, on_org: OnOrg) -> None:
        await self._listener.start(on_org, wait=2 * self._timeout)

    async def publish(self, org_id: str) -> None:
        if self._publisher is None:
            self._publisher = self.client()
        try:
            await self._publisher.publish(self.channel, org_id)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis publish failed: {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self._listener.stop()
        if self._publisher is not None:
            await self._publisher.aclose()
            self._publisher = None


class _RedisListener(_Listener):
    def __init__(self, owner: RedisInvalidation, max_backoff: float) -> None:
        super().__init__("redis", max_backoff)
        self._owner = owner

    async def _subscription(self) -> AsyncIterator[None]:
        client = self._owner.client(subscriber=True)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._owner.channel)
            yield
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None and message.get("type") == "message":
                    await self.deliver(str(message["data"]))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                await client.aclose()


class PostgresInvalidation:
    """LISTEN/NOTIFY: one listening connection, one publishing connection, opened on demand."""

    def __init__(
        self,
        url: str,
        channel: str = "gateway_invalidate",
        *,
        timeout: float = 2.0,
        max_backoff: float = 5.0,
        check_interval: float = 5.0,
    ) -> None:
        from gateway.store.postgres import split_url

        self.channel = channel
        self.url = split_url(url)[0]  # asyncpg would pass ``schema=`` on as a server setting
        self.timeout = timeout
        self.check_interval = check_interval
        self._listener = _PostgresListener(self, max_backoff)
        self._publisher: Any = None
        self._publish_lock = asyncio.Lock()

    def __repr__(self) -> str:
        # The URL may hold a password.
        return f"PostgresInvalidation(channel={self.channel!r})"

    async def start(self, on_org: OnOrg) -> None:
        await self._listener.start(on_org, wait=2 * self.timeout)

    async def publish(self, org_id: str) -> None:
        async with self._publish_lock:
            try:
                if self._publisher is None or self._publisher.is_closed():
                    self._publisher = await asyncpg.connect(self.url, timeout=self.timeout)
                await self._publisher.execute(
                    "SELECT pg_notify($1, $2)", self.channel, org_id, timeout=self.timeout
                )
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                await self._drop_publisher()
                raise StoreError(f"postgres notify failed: {type(exc).__name__}") from exc

    async def _drop_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.terminate()

    async def close(self) -> None:
        await self._listener.stop()
        async with self._publish_lock:
            if self._publisher is not None:
                with contextlib.suppress(Exception):
                    await self._publisher.close(timeout=self.timeout)
                self._publisher = None


class _PostgresListener(_Listener):
    def __init__(self, owner: PostgresInvalidation, max_backoff: float) -> None:
        super().__init__("postgres", max_backoff)
        self._owner = owner

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.deliver_soon(payload)

    async def _subscription(self) -> AsyncIterator[None]:
        owner = self._owner
        conn = await asyncpg.connect(owner.url, timeout=owner.timeout)
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(owner.channel, self._notified)
            yield
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), owner.check_interval)
                if not lost.is_set():
                    # A half-open link stays silent; a query notices it.
                    await conn.execute("SELECT 1", timeout=owner.timeout)
            raise ConnectionError("postgres listening connection closed")
        finally:
            conn.terminate()


def open_invalidation(store_url: str, redis_url: str | None) -> Invalidation:
    """Redis when configured, else the PostgreSQL store's own NOTIFY, else nothing to tell."""
    if redis_url:
        return RedisInvalidation(redis_url)
    if store_url.startswith(("postgresql://", "postgres://")):
        return PostgresInvalidation(store_url)
    return LocalInvalidation()
