"""Quota counters and reservations in Redis, in front of a durable store that stays the truth.

Accuracy and durability: exact. A grant never lets an org over its limit, as in the truth,
but Redis answers in one round trip where PostgreSQL takes a locked transaction; what is
lost with Redis (a restart, an eviction) is rebuilt from the truth, at the price of one
snapshot read per (org, period). Limits come from the caller's routing (at most a cache TTL
old), not from the truth's org tables.

``RedisQuotaStore`` is a ``QuotaStore`` only, in front of a ``DurableQuotaStore`` (PostgreSQL
in production) that the runtime owns and uses for everything else. Quota lives in one Redis
hash per (org, period)::

    {prefix}:{<org_id>}:q:<period_start>   ready, used:<meter>, res:<holder>:<meter>, exp:<holder>
    {prefix}:{<org_id>}:b:<batch_id>       marker of a usage batch counted in that hash

The org id in braces is the Redis Cluster hash tag: every key of one org hashes to one
slot, so the scripts that read a hash and write a batch marker next to it may touch both
keys in one atomic call, and one org's quota never spans two nodes.

Redis is never the only copy of usage. Each grant is written through to the truth
(``add_reservation``) before it is returned, and each batch is committed to the truth
before Redis sees it, so the truth's used + reserved always covers what was handed out.
A hash without ``ready`` (Redis restarted, flushed or evicted it) is rebuilt on the next
reserve from one consistent ``quota_snapshot`` of the truth: usage, live reservations and
the ids of the batches that usage counts, whose markers the load sets so that a replay
does not count them again. A load only happens while ``ready`` is still absent, so
replicas rebuilding at once count the truth once, and only under the fence put up before
the snapshot was read (``fence.lua``), so it never installs a snapshot older than a write
Redis has already seen. A grant whose hash was rebuilt while it was written through is
put back into the new hash (``keep_grant.lua``).

Each atomic step is one Lua script in ``gateway/store/lua`` (package data), registered
once at ``open``; their KEYS/ARGV are documented at their tops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import replace
from importlib import resources
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from gateway.errors import StoreError
from gateway.store.base import DurableQuotaStore
from gateway.store.records import (
    Exhausted,
    Granted,
    QuotaSnapshot,
    ReserveRequest,
    ReserveResult,
    UsageBatch,
)
from policies.model import is_quota_meter, lock_order

log = logging.getLogger("gateway.store.redis_quota")

# What a script takes in ARGV.
Arg = str | int | float
# One Redis, or a Redis Cluster (every script's keys share one org's hash slot).
Client = aioredis.Redis | aioredis.RedisCluster

_SCRIPTS = "reserve fence load keep_grant apply give_back heartbeat release drop".split()
_MISSING, _EXHAUSTED, _GRANTED = 0, 1, 2
_STALE = -1
# A flush or a commit can race a rebuild; a few rounds settle it, more means Redis keeps
# losing the hash.
_REBUILD_ATTEMPTS = 3


@contextlib.contextmanager
def _redis_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError, TimeoutError) as exc:
        raise StoreError(f"redis {what} failed: {type(exc).__name__}") from exc


def _flatten(pairs: Mapping[str, Arg]) -> list[Arg]:
    return [part for pair in pairs.items() for part in pair]


def _json_deltas(deltas: Mapping[str, int]) -> str:
    # Decimal strings: Lua would read a JSON number as a double.
    return msgspec.json.encode({meter: str(n) for meter, n in deltas.items()}).decode()


def _hash_fields(snapshot: QuotaSnapshot) -> dict[str, Arg]:
    """The quota hash fields (see reserve.lua) that hold a snapshot of the truth."""
    fields: dict[str, Arg] = {
        f"used:{meter}": n for meter, n in snapshot.used.items() if n and is_quota_meter(meter)
    }
    reserved: dict[str, int] = {}
    expiry: dict[str, float] = {}
    for row in snapshot.reservations:
        if is_quota_meter(row.meter) and row.amount > 0:
            name = f"res:{row.holder}:{row.meter}"
            reserved[name] = reserved.get(name, 0) + row.amount
            # One expiry per holder in Redis: its latest, so nothing live is dropped.
            expiry[row.holder] = max(expiry.get(row.holder, 0.0), row.expires_at)
    fields.update(reserved)
    fields.update({f"exp:{holder}": repr(at) for holder, at in expiry.items()})
    return fields


class RedisQuotaStore:
    """Quota in Redis (exact, one script per step), written through to ``truth``."""

    def __init__(
        self,
        truth: DurableQuotaStore,
        redis_url: str,
        *,
        prefix: str = "gw",
        grace_seconds: int = 7 * 86400,
        marker_seconds: int = 14 * 86400,
        timeout: float = 1.0,
        cluster: bool = False,
    ) -> None:
        self.truth = truth
        self._cluster = cluster
        self._url = redis_url
        self._prefix = prefix
        self._grace = grace_seconds
        self._marker_seconds = marker_seconds
        self._timeout = timeout
        self._redis: Client | None = None
        self._scripts: dict[str, AsyncScript] = {}
        # Which hashes each holder reserved in, with their EXPIREAT: heartbeat and
        # release must find them, and a holder is one process.
        self._touched: dict[str, dict[str, int]] = {}
        self._background: set[asyncio.Task[None]] = set()
        #: Reservations the truth granted because Redis failed (read by tests and logs).
        self.fallbacks = 0
        self._fallback_logged = -1e18

    def __repr__(self) -> str:
        return f"RedisQuotaStore(truth={self.truth!r}, prefix={self._prefix!r})"

    # keys

    def quota_key(self, org_id: str, period_start: str) -> str:
        return f"{self._prefix}:{{{org_id}}}:q:{period_start}"

    def batch_key(self, org_id: str, batch_id: str) -> str:
        return f"{self._prefix}:{{{org_id}}}:b:{batch_id}"

    def counter_of(self, quota_key: str) -> tuple[str, str]:
        """(org, period) of a quota hash's key."""
        org, _, period = quota_key[len(self._prefix) + 2 :].partition("}:q:")
        return org, period

    def _expire_at(self, period_end: float) -> int:
        # Wall clock as a floor: a request without a period end (or a test's fake clock)
        # must not make Redis drop the hash at once.
        return int(max(period_end, time.time()) + self._grace)

    # lifecycle

    async def open(self) -> None:
        """Connect to Redis; the truth is opened (and closed) by its owner, the runtime."""
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
            # One quick retry replaces a pooled connection a Redis restart closed.
            "retry": Retry(NoBackoff(), 1),
        }
        if self._cluster:
            # Any node's URL finds the others; orgs on live masters go on while one is down.
            self._redis = aioredis.RedisCluster.from_url(
                self._url, require_full_coverage=False, **options
            )
        else:
            self._redis = aioredis.Redis.from_url(self._url, **options)
        for name in _SCRIPTS:
            source = resources.files("gateway.store").joinpath("lua", f"{name}.lua")
            self._scripts[name] = self._redis.register_script(source.read_text("utf-8"))
        try:
            for script in self._scripts.values():
                await self._redis.script_load(script.script)
        except (RedisError, OSError, TimeoutError) as exc:
            # Scripts load themselves on first use (NOSCRIPT); quota fails until Redis answers.
            log.warning("redis not reachable at open (%s); quota calls fail until it is", exc)

    async def close(self) -> None:
        if self._background:
            # Give-backs finish; one stuck on a store that never answers is cut short.
            _, stuck = await asyncio.wait(self._background, timeout=5.0)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def ping(self) -> None:
        with _redis_errors("ping"):
            await self._client().ping()

    def _client(self) -> Client:
        if self._redis is None:
            raise StoreError("RedisQuotaStore is not open")
        return self._redis

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        self._client()
        # Each call bounded (a cluster client retries a dead node on its own), never the
        # truth's calls between them: a grant the truth recorded must not be abandoned.
        with _redis_errors(name):
            async with asyncio.timeout(self._timeout):
                return await self._scripts[name](keys=keys, args=args)

    async def _pipelined(
        self, what: str, calls: Sequence[tuple[str, Sequence[str], Sequence[Arg]]]
    ) -> None:
        """Script calls in one pipeline (a cluster's is split by slot); a node that lost its
        scripts (restarted empty) gets them again and the pipeline runs once more."""
        if not calls:
            return
        with _redis_errors(what):
            for attempt in (1, 2):
                try:
                    async with self._client().pipeline(transaction=False) as pipe:
                        for name, keys, args in calls:
                            script = self._scripts[name]
                            # redis-py blocks the evalsha method in cluster pipelines, not
                            # the command; plain pipelines load missing scripts themselves.
                            if self._cluster:
                                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                            else:
                                await script(keys=keys, args=args, client=cast(Any, pipe))
                        await pipe.execute()
                    return
                except NoScriptError:
                    if attempt == 2:
                        raise
                    for script in self._scripts.values():
                        await self._client().script_load(script.script)

    # quota

    async def reserve(self, request: ReserveRequest) -> ReserveResult:
        grants: dict[str, int] = {}
        limited: list[str] = []
        expire_at = self._expire_at(request.period_end)
        args: list[Arg] = [
            request.holder,
            repr(request.now),
            repr(request.now + request.ttl),
            expire_at,
            int(request.policy.strict),
            request.policy.replicas,
        ]
        for meter in lock_order(request.needs):
            need = request.needs.get(meter)
            if need is None:
                continue
            limit = request.limits.usage_limit(meter)
            if limit is None:
                grants[meter] = need
                continue
            limited.append(meter)
            args += (meter, need, limit, request.policy.max_chunk(meter))
        if not limited:
            return Granted(grants)

        key = self.quota_key(request.org_id, request.period_start)
        try:
            for _ in range(_REBUILD_ATTEMPTS):
                result = await self._reserve_once(key, args, limited, grants, request, expire_at)
                if result is not None:
                    return result
            raise StoreError(f"could not load the quota hash {key} in {_REBUILD_ATTEMPTS} rebuilds")
        except StoreError as exc:
            # Redis failed (or the truth did, and then so does this): never admit unlimited
            # while the truth answers. It grants and marks the hash stale for a rebuild.
            self.fallbacks += 1
            if time.monotonic() - self._fallback_logged > 60.0:
                self._fallback_logged = time.monotonic()
                log.warning("redis quota failed (%s); reserving in the truth", exc)
            return await self.truth.reserve(replace(request, mark_stale=True))

    async def _reserve_once(
        self,
        key: str,
        args: list[Arg],
        limited: list[str],
        grants: dict[str, int],
        request: ReserveRequest,
        expire_at: int,
    ) -> ReserveResult | None:
        """One grant from the hash, or None when it had to be (re)built first."""
        # Indexed before any grant: a failing index must not leave a grant nobody holds.
        if request.holder not in self._touched or key not in self._touched[request.holder]:
            await self._index(request.holder, key, expire_at)
        self._touched.setdefault(request.holder, {})[key] = expire_at
        reply = await self._run("reserve", [key], args)
        if reply[0] == _MISSING:
            await self._rebuild(key, request)
            return None
        if reply[0] == _EXHAUSTED:
            committed = int(reply[4]) if len(reply) > 4 else None
            return Exhausted(str(reply[1]), int(reply[2]), int(reply[3]), committed)

        token = str(reply[1])
        amounts = dict(zip(limited, (int(n) for n in reply[2:]), strict=True))
        recorded = {meter: n for meter, n in amounts.items() if n > 0}
        if recorded and not await self._write_through(key, token, request, recorded):
            return None
        every = {**grants, **amounts}
        return Granted({meter: every[meter] for meter in lock_order(every)})

    async def _write_through(
        self, key: str, token: str, request: ReserveRequest, recorded: dict[str, int]
    ) -> bool:
        """The truth must hold every grant before anyone spends it; else Redis gives it back.

        Once the truth holds it, the grant stands: if Redis then fails, the hash is marked
        stale (rebuilt from the truth before anyone grants from it); else, should the hash
        have been rebuilt meanwhile from a truth without it, ``keep_grant`` adds it there.
        False when the truth marked the (org, period) stale: nothing is recorded and the
        hash is gone. A caller that gives up leaves nothing behind in either store.
        """
        give_back = [request.holder, token, *_flatten(recorded)]
        # Shielded: cancelled or not, what the truth did is known and can be undone.
        # A hash loaded before generations were named (no ":") counts as generation 0.
        generation = int(token.partition(":")[2] or 0)
        record = asyncio.ensure_future(self.truth.add_reservation(request, recorded, generation))
        try:
            stale = await asyncio.shield(record)
        except asyncio.CancelledError:
            self._later(self._abandon(key, give_back, request, recorded, record))
            raise
        except Exception as exc:
            await self._give_back(key, give_back)
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"truth could not record a reservation: {type(exc).__name__}") from exc
        if stale:
            # The hash misses a write the truth has: dropped (if no newer load replaced it),
            # rebuilt by the next call.
            await self._run("drop", [key], [token])
            return False
        args = [request.holder, token, repr(request.now), repr(request.now + request.ttl)]
        try:
            if await self._run("keep_grant", [key], [*args, *_flatten(recorded)]):
                log.info("kept a grant in %s across a rebuild", key)
        except StoreError:
            await self.truth.mark_stale([(request.org_id, request.period_start)])
        except asyncio.CancelledError:
            self._later(self._abandon(key, give_back, request, recorded, record))
            raise
        return True

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _abandon(
        self,
        key: str,
        give_back: list[Arg],
        request: ReserveRequest,
        recorded: dict[str, int],
        record: asyncio.Future[bool],
    ) -> None:
        """A grant whose caller gave up (its time budget): back in Redis, and in the truth
        if it recorded it (a batch returning the reservation, idempotent like any)."""
        await self._give_back(key, give_back)
        try:
            stale = await record
        except Exception:  # it failed: nothing was recorded
            stale = True
        if not stale:
            back = {meter: -n for meter, n in recorded.items()}
            batch = UsageBatch(secrets.token_hex(16), request.holder, request.org_id,
                               request.period_start, {}, back)  # fmt: skip
            try:
                await self.truth.commit_many([batch])
            except StoreError:
                log.warning("could not return an abandoned grant; it expires with its holder")

    async def _give_back(self, key: str, args: list[Arg]) -> None:
        try:
            await self._run("give_back", [key], args)
        except StoreError:
            log.warning("could not give back a grant in %s; it counts until released", key)

    async def _rebuild(self, key: str, request: ReserveRequest) -> None:
        """Load a snapshot of the truth for one (org, period) into its empty hash."""
        expire_at = self._expire_at(request.period_end)
        fence = await self._run("fence", [key], [secrets.token_hex(8), expire_at])
        if fence is None:
            return  # loaded by someone else meanwhile
        snapshot = await self.truth.quota_snapshot(
            request.org_id, request.period_start, request.now
        )
        markers = [self.batch_key(request.org_id, batch_id) for batch_id in snapshot.batch_ids]
        fields = _hash_fields(snapshot)
        # The ready token names the generation of stale marks the snapshot saw.
        token = f"{secrets.token_hex(8)}:{snapshot.stale}"
        args: list[Arg] = [str(fence), token, expire_at, self._marker_seconds]
        loaded = await self._run("load", [key, *markers], [*args, *_flatten(fields)])
        if loaded == _STALE:
            log.info("a rebuild of %s raced a write; reading the truth again", key)
        elif loaded:
            log.info("rebuilt %s from the truth", key)

    async def commit(self, batch: UsageBatch) -> bool:
        return (await self.commit_many([batch]))[0]

    async def commit_many(self, batches: Sequence[UsageBatch]) -> list[bool]:
        """The truth first, then Redis: one pipeline of ``apply`` calls, each once by its marker."""
        applied = await self.truth.commit_many(batches)
        calls = [(b, args) for b in batches if (args := self._apply_args(b)) is not None]
        scripts = [
            (
                "apply",
                [self.quota_key(b.org_id, b.period_start), self.batch_key(b.org_id, b.batch_id)],
                args,
            )
            for b, args in calls
        ]
        try:
            await self._pipelined("apply", scripts)
        except StoreError:
            # The truth holds the batches: Redis rebuilds these hashes from it.
            await self.truth.mark_stale([(b.org_id, b.period_start) for b, _ in calls])
        return applied

    def _apply_args(self, batch: UsageBatch) -> list[Arg] | None:
        used = {m: n for m, n in batch.used.items() if n}
        reserved = {m: n for m, n in batch.reserved.items() if n}
        if not (used or reserved):
            return None
        return [batch.holder, self._marker_seconds, _json_deltas(used), _json_deltas(reserved)]

    async def heartbeat(self, holder: str, now: float, ttl: float) -> None:
        await self.truth.heartbeat(holder, now, ttl)
        keys = self._live_keys(holder)
        if not keys:
            return
        try:
            beats = [("heartbeat", [key], [holder, repr(now), repr(now + ttl)]) for key in keys]
            await self._pipelined("heartbeat", beats)
        except StoreError:
            # Redis may let these reservations expire while the truth keeps them.
            await self.truth.mark_stale([self.counter_of(key) for key in keys])

    def _holder_key(self, holder: str) -> str:
        return f"{self._prefix}:holder:{holder}"

    async def _index(self, holder: str, key: str, expire_at: int) -> None:
        """Remember which hashes a holder reserved in, for whoever releases it (even another
        process adopting a dead holder's spool). A key of its own slot: it is never used in a
        script together with the quota hashes."""
        index = self._holder_key(holder)
        with _redis_errors("reserve"):
            async with (
                asyncio.timeout(self._timeout),
                self._client().pipeline(transaction=False) as pipe,
            ):
                pipe.sadd(index, key)
                pipe.expireat(index, expire_at)
                await pipe.execute()

    async def release(self, holder: str) -> None:
        await self.truth.release(holder)
        client = self._client()
        index = self._holder_key(holder)
        with _redis_errors("release"):
            indexed = await client.smembers(index)
            keys = set(self._live_keys(holder)) | {
                k.decode() if isinstance(k, bytes) else str(k) for k in indexed
            }
        await self._pipelined("release", [("release", [key], [holder]) for key in sorted(keys)])
        with _redis_errors("release"):
            await client.delete(index)
        self._touched.pop(holder, None)

    def _live_keys(self, holder: str) -> list[str]:
        """The hashes the holder reserved in that Redis has not expired yet."""
        touched = self._touched.get(holder, {})
        wall = time.time()
        for key in [k for k, expire_at in touched.items() if expire_at <= wall]:
            del touched[key]
        return list(touched)
