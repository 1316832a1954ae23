"""The store side alone: what one PostgreSQL (and one Redis in front of it) carries.

    python -m loadtest.storebench [--orgs 100,1000,10000,50000] [--replicas 1,8,32]
                                  [--keys 1] [--interval 1.0] [--seconds 3] [--quick]
                                  [--out reports/storebench]

A point is (backend, active orgs, replicas, keys per org). Replicas are simulated holders:
each has its own holder id, all share ``STORE_POOLS`` store instances (a real replica has a
pool of its own; here the connections stay under PostgreSQL's default of 100). Per point:

1. Reservations: every holder asks for chunks of random active orgs, one call at a time,
   for ``--seconds``: reservations/s, p50 and p99 of one call.
2. Flushes: every holder commits one usage batch per active org at once (as each replica's
   flush does when every org sends through every replica), in two lanes of groups of
   ``FLUSH_GROUP`` as the usage gate does, twice: the first flush of a period (it inserts the
   counter and history rows) and the next (it updates them, as every flush after it does):
   the slowest holder's time against ``--interval``, and batches/s.
3. Heartbeats: every holder renews its reservations at once (the gate does so every quarter
   of the reservation TTL, 15 s by default), and at the end releases them all at once (as at
   shutdown): the slowest one's time of each.
4. The store's CPU over each phase (PostgreSQL's processes from /proc, Redis's INFO), as
   cores busy; and a check that stored usage equals what was committed.

The orgs axis runs at the fewest replicas, the replicas axis at 1,000 orgs. A flush
of one transaction per batch (what the gateway did before group commits) is timed at 1,000
orgs on PostgreSQL for comparison. A point past what the store carries (a commit over its
5 s budget) is reported as failed. Numbers go to stdout, ``<out>.json`` and the README's
Scale table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import StoreError
from gateway.limits.budgets import lanes_of
from gateway.limits.usage import FLUSH_GROUP
from gateway.store.base import QuotaStore
from gateway.store.postgres import PostgresStore
from gateway.store.records import ReserveRequest, UsageBatch
from gateway.store.redis_quota import RedisQuotaStore
from loadtest.bench import (
    PG_URL,
    REDIS_URL,
    machine_info,
    pg_redis_unreachable,
    postgres_cpu_seconds,
)
from policies.model import Limits
from policies.reservations import ChunkPolicy

STORE_POOLS = 4
PERIOD = "2026-12-01T00:00:00+00:00"
PERIOD_END = 1_798_761_600.0  # 2027-01-01: Redis keeps the hashes past the run
TTL = 60.0
# Each org: requests, bytes and items limited, and each of its keys its own items limit.
ORG_LIMITS = {"requests": 10**12, "bytes": 10**15, "items": 10**13}
CHUNK = {"requests": 100, "bytes": 200_000, "items": 3_000}
BACKENDS = ("postgresql", "postgresql+redis")


@dataclass(frozen=True)
class Point:
    backend: str
    orgs: int
    replicas: int
    keys: int


@dataclass
class Options:
    orgs: list[int]
    replicas: list[int]
    keys: int
    interval: float
    seconds: float
    backends: list[str]
    out: Path
    argv: list[str]


def _limits(keys: int) -> Limits:
    limits = dict(ORG_LIMITS)
    for k in range(keys):
        limits[f"key/k{k}/items"] = 10**13
    return Limits.from_dict(limits)


def _needs(keys: int, key: int) -> dict[str, int]:
    needs = dict(CHUNK)
    if keys:
        needs[f"key/k{key}/items"] = CHUNK["items"]
    return needs


async def redis_cpu_seconds(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Rig:
    """The stores of one point: a schema of its own, and Redis keys under its own prefix."""

    def __init__(self, point: Point) -> None:
        self.point = point
        self.schema = f"storebench_{uuid.uuid4().hex[:10]}"
        self.prefix = f"sb{uuid.uuid4().hex[:8]}"
        self.orgs = [f"org_{i:06d}" for i in range(point.orgs)]
        self.holders = [f"holder-{h:02d}" for h in range(point.replicas)]
        self.limits = _limits(point.keys)
        self.truths: list[PostgresStore] = []
        self.stores: list[QuotaStore] = []
        self.redis: Any = None
        self.committed: dict[str, int] = {}

    async def open(self) -> None:
        url = f"{PG_URL}?schema={self.schema}"
        for _ in range(min(STORE_POOLS, self.point.replicas)):
            truth = PostgresStore(url)
            await truth.open()
            self.truths.append(truth)
            quota: QuotaStore = truth
            if self.point.backend == "postgresql+redis":
                quota = RedisQuotaStore(truth, REDIS_URL, prefix=self.prefix)
                await quota.open()
            self.stores.append(quota)
        if self.point.backend == "postgresql+redis":
            import redis.asyncio as aioredis

            self.redis = aioredis.Redis.from_url(REDIS_URL)

    async def close(self) -> None:
        for store in self.stores:
            if store not in self.truths:
                await store.close()
        for truth in self.truths:
            await truth.close()
        if self.redis is not None:
            keys = [key async for key in self.redis.scan_iter(match=f"{self.prefix}:*", count=5000)]
            for first in range(0, len(keys), 5000):
                await self.redis.delete(*keys[first : first + 5000])
            await self.redis.aclose()
        import asyncpg

        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()

    async def seed_reservations(self) -> None:
        """Every holder holds a chunk in every org, as after a while of traffic: the rows a
        flush and a heartbeat touch. Written in bulk, not timed (Redis loads its hashes from
        them on the first reservation of an org)."""
        import asyncpg

        needs = _needs(self.point.keys, 0)
        rows = [(h, o, m, n) for h in self.holders for o in self.orgs for m, n in needs.items()]
        conn = await asyncpg.connect(PG_URL, server_settings={"search_path": self.schema})
        try:
            for first in range(0, len(rows), 50_000):
                part = rows[first : first + 50_000]
                await conn.execute(
                    """INSERT INTO quota_reservations
                        (holder, org_id, period_start, meter, amount, expires_at)
                    SELECT h, o, $5, m, n, $6 FROM unnest($1::text[], $2::text[], $3::text[],
                        $4::bigint[]) AS r (h, o, m, n)""",
                    *[[row[i] for row in part] for i in range(4)],
                    PERIOD,
                    time.time() + TTL,
                )
        finally:
            await conn.close()

    def store_of(self, holder: int) -> QuotaStore:
        return self.stores[holder % len(self.stores)]

    def ask(self, holder: int, org: str, key: int) -> ReserveRequest:
        return ReserveRequest(
            self.holders[holder],
            org,
            PERIOD,
            _needs(self.point.keys, key),
            ChunkPolicy(replicas=self.point.replicas),
            time.time(),
            TTL,
            limits=self.limits,
            period_end=PERIOD_END,
        )

    async def cpu(self) -> tuple[float, float]:
        return postgres_cpu_seconds(), (await redis_cpu_seconds(self.redis) if self.redis else 0.0)


async def timed(rig: Rig, work: Awaitable[Any]) -> dict[str, float]:
    """Wall time of ``work`` and the store's CPU over it, as cores busy."""
    pg0, redis0 = await rig.cpu()
    start = time.perf_counter()
    await work
    wall = time.perf_counter() - start
    pg1, redis1 = await rig.cpu()
    return {
        "seconds": wall,
        "postgres_cores": (pg1 - pg0) / wall,
        "redis_cores": (redis1 - redis0) / wall,
    }


async def reserve_phase(rig: Rig, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    keys = max(rig.point.keys, 1)

    async def holder(h: int) -> None:
        rng = random.Random(h)
        store = rig.store_of(h)
        while time.perf_counter() < deadline:
            request = rig.ask(h, rng.choice(rig.orgs), rng.randrange(keys))
            start = time.perf_counter()
            await store.reserve(request)
            latencies.append(time.perf_counter() - start)

    usage = await timed(rig, asyncio.gather(*(holder(h) for h in range(rig.point.replicas))))
    return {
        "per_s": len(latencies) / usage["seconds"],
        "p50_ms": _quantile(latencies, 0.5) * 1000,
        "p99_ms": _quantile(latencies, 0.99) * 1000,
        **usage,
    }


def _batches(rig: Rig, holder: int) -> list[UsageBatch]:
    batches = []
    for org in rig.orgs:
        used = {"requests": 10, "bytes": 20_000, "items": 300}
        if rig.point.keys:
            used["key/k0/items"] = 300
        batch = UsageBatch(uuid.uuid4().hex, rig.holders[holder], org, PERIOD, used,
                           {meter: -n for meter, n in used.items()}, at=time.time())  # fmt: skip
        batches.append(batch)
    return batches


async def flush_phase(rig: Rig) -> dict[str, Any]:
    times: list[float] = []

    async def lane(h: int, batches: list[UsageBatch]) -> None:
        for first in range(0, len(batches), FLUSH_GROUP):
            applied = await rig.store_of(h).commit_many(batches[first : first + FLUSH_GROUP])
            assert all(applied), "a new batch was refused"

    async def flush(h: int) -> None:
        # As the usage gate flushes: the batches in lanes by org, the lanes at once.
        batches = _batches(rig, h)
        start = time.perf_counter()
        await asyncio.gather(*(lane(h, part) for part in lanes_of(batches)))
        times.append(time.perf_counter() - start)
        for batch in batches:
            rig.committed[batch.org_id] = rig.committed.get(batch.org_id, 0) + batch.used["items"]

    usage = await timed(rig, asyncio.gather(*(flush(h) for h in range(rig.point.replicas))))
    batches = rig.point.orgs * rig.point.replicas
    return {"slowest_s": max(times), "batches_per_s": batches / usage["seconds"], **usage}


async def holders_phase(rig: Rig, call: str) -> dict[str, Any]:
    """Every holder's ``heartbeat`` (renew its reservations) or ``release`` (give them all
    back, as at shutdown) at once: the slowest one's time."""
    times: list[float] = []

    async def one(h: int) -> None:
        store, start = rig.store_of(h), time.perf_counter()
        if call == "heartbeat":
            await store.heartbeat(rig.holders[h], time.time(), TTL)
        else:
            await store.release(rig.holders[h])
        times.append(time.perf_counter() - start)

    usage = await timed(rig, asyncio.gather(*(one(h) for h in range(rig.point.replicas))))
    return {"slowest_s": max(times), **usage}


async def per_batch_flush(rig: Rig) -> float:
    """One holder's flush committed a batch per transaction, as before group commits."""
    batches = _batches(rig, 0)
    start = time.perf_counter()
    for batch in batches:
        await rig.store_of(0).commit(batch)
    for batch in batches:
        rig.committed[batch.org_id] = rig.committed.get(batch.org_id, 0) + batch.used["items"]
    return time.perf_counter() - start


async def exact(rig: Rig) -> bool:
    """Stored items usage equals what was committed, for a sample of orgs."""
    sample = rig.orgs[:: max(1, len(rig.orgs) // 50)]
    for org in sample:
        used = await rig.truths[0].usage(org, PERIOD)
        if used.get("items", 0) != rig.committed.get(org, 0):
            return False
    return True


async def measure(point: Point, opts: Options, *, compare: bool) -> dict[str, Any]:
    rig = Rig(point)
    await rig.open()
    try:
        row: dict[str, Any] = {"point": point.__dict__}
        await rig.seed_reservations()
        try:
            row["reserve"] = await reserve_phase(rig, opts.seconds)
            # The first flush of a period inserts each counter and history row; every later
            # one updates them in place: that one is the steady state, against the interval.
            row["first_flush"] = await flush_phase(rig)
            row["flush"] = await flush_phase(rig)
            row["flush"]["fits_interval"] = row["flush"]["slowest_s"] < opts.interval
            row["heartbeat"] = await holders_phase(rig, "heartbeat")
            if compare:
                row["per_batch_flush_s"] = await per_batch_flush(rig)
            row["release"] = await holders_phase(rig, "release")
        except StoreError as exc:
            # Past what the store carries: a call ran out of its time (the flush's budget).
            row["failed"] = str(exc)
            return row
        row["exact"] = await exact(rig)
        return row
    finally:
        await rig.close()


def points(opts: Options) -> list[Point]:
    """The orgs axis at the fewest replicas, then the replicas axis at 1,000 orgs."""
    found: list[Point] = []
    for backend in opts.backends:
        for orgs in opts.orgs:
            found.append(Point(backend, orgs, opts.replicas[0], opts.keys))
        for replicas in opts.replicas:
            point = Point(backend, 1000 if 1000 in opts.orgs else opts.orgs[0], replicas, opts.keys)
            if point not in found:
                found.append(point)
    return found


def _quantile(values: Sequence[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def render(report: dict[str, Any]) -> str:
    lines = [
        "backend            orgs  repl  reserve/s  p99 ms  1st flush  flush s  batches/s  beat s"
        "  release s  pg cores  redis cores  exact",
    ]
    for row in report["rows"]:
        p = row["point"]
        if "failed" in row:
            lines.append(f"{p['backend']:<17} {p['orgs']:>6} {p['replicas']:>5}  {row['failed']}")
            continue
        r, f, h = row["reserve"], row["flush"], row["heartbeat"]
        lines.append(
            f"{p['backend']:<17} {p['orgs']:>6} {p['replicas']:>5} {r['per_s']:>10,.0f}"
            f" {r['p99_ms']:>7.2f} {row['first_flush']['slowest_s']:>10.3f}"
            f" {f['slowest_s']:>8.3f} {f['batches_per_s']:>10,.0f}"
            f" {h['slowest_s']:>7.3f} {row['release']['slowest_s']:>10.3f}"
            f" {max(r['postgres_cores'], f['postgres_cores']):>9.2f}"
            f" {max(r['redis_cores'], f['redis_cores']):>12.2f}  {row['exact']}"
        )
        if "per_batch_flush_s" in row:
            lines.append(f"  one transaction per batch: {row['per_batch_flush_s']:.3f} s a flush")
    return "\n".join(lines)


async def run(opts: Options) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine_info(opts.argv), "config": {
        "orgs": opts.orgs, "replicas": opts.replicas, "keys": opts.keys,
        "interval": opts.interval, "seconds": opts.seconds, "flush_group": FLUSH_GROUP,
        "store_pools": STORE_POOLS}, "rows": []}  # fmt: skip
    report["machine"]["command_line"] = " ".join(["python -m loadtest.storebench", *opts.argv])
    compared = False
    for point in points(opts):
        # The flush of one transaction per batch, once: at 1,000 orgs (or the most up to it).
        at = max([n for n in opts.orgs if n <= 1000] or [min(opts.orgs)])
        compare = not compared and point.orgs == at and point.backend == "postgresql"
        row = await measure(point, opts, compare=compare)
        compared = compared or compare
        report["rows"].append(row)
        print(render({"rows": [row]}).splitlines()[-1], flush=True)
    return report


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def options(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m loadtest.storebench", description=__doc__)
    parser.add_argument("--orgs", default="100,1000,10000,50000", help="active orgs per point")
    parser.add_argument("--replicas", default="1,8,32", help="simulated holders per point")
    parser.add_argument("--keys", type=int, default=1, help="limited keys per org (0 or more)")
    parser.add_argument("--interval", type=float, default=1.0, help="flush interval, seconds")
    parser.add_argument("--seconds", type=float, default=3.0, help="reservation phase seconds")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="postgresql and/or +redis")
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 orgs, 1 and 2 holders")
    parser.add_argument("--out", type=Path, default=Path("reports/storebench"))
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backend {sorted(unknown)[0]!r}; expected {', '.join(BACKENDS)}")
    orgs, replicas, seconds = _ints(args.orgs), _ints(args.replicas), args.seconds
    if args.quick:
        orgs, replicas, seconds = [100, 1000], [1, 2], 0.5
    return Options(orgs, replicas, args.keys, args.interval, seconds, backends, args.out, argv)


def main(argv: list[str] | None = None) -> int:
    opts = options(sys.argv[1:] if argv is None else argv)
    unreachable = pg_redis_unreachable()
    if unreachable:
        print(f"storebench needs PostgreSQL and Redis: {unreachable}", file=sys.stderr)
        return 2
    report = asyncio.run(run(opts))
    print(render(report))
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{opts.out}.json").write_text(json.dumps(report, indent=2))
    return 0 if all(row.get("exact", True) for row in report["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
