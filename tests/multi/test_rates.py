"""An org's rate holds across workers and replicas: each process enforces its share.

Regression: at rate 50/s, ``serve --workers 2`` admitted 342 requests in 2.4 s, since each
worker ran a whole bucket of its own (one bucket allows about 172).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.harness import FLUSH_INTERVAL, GATEWAY_BIN, Upstream, start_gateway
from tests.services import postgres_url, unique_name
from tests.store.conftest import drop_schema

RATE = 50
SECONDS = 2.5
BODY = b'{"resourceSpans":[]}'


async def hammer(urls: list[str], key: str, concurrency: int = 32) -> tuple[list[int], float]:
    """Clients post for SECONDS without pause; their statuses and how long it took.

    A new connection per request, so that the kernel spreads them over the workers: a
    keep-alive connection would stay with whichever worker accepted it.
    """
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=True)
    statuses: list[int] = []
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=10)
    ) as session:
        start = time.monotonic()
        deadline = start + SECONDS

        async def client(i: int) -> None:
            url = f"{urls[i % len(urls)]}/v1/traces"
            while time.monotonic() < deadline:
                try:
                    async with session.post(url, data=BODY, headers=headers) as response:
                        await response.read()
                        statuses.append(response.status)
                except (aiohttp.ClientError, TimeoutError):
                    statuses.append(0)

        await asyncio.gather(*(client(i) for i in range(concurrency)))
        return statuses, time.monotonic() - start


def assert_one_buckets_allowance(statuses: list[int], seconds: float) -> None:
    allowance = RATE + RATE * seconds  # a full bucket (the burst), then the refill
    admitted = statuses.count(200)
    assert set(statuses) <= {200, 429}, f"only admitted or rate limited: {set(statuses)}"
    assert 0.8 * allowance <= admitted <= 1.2 * allowance, (
        f"admitted {admitted} in {seconds:.2f} s; one bucket allows {allowance:.0f}"
    )


async def until(condition: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def create_sqlite_store(folder: Path) -> None:
    """The store start_gateway uses, created ahead: workers creating one SQLite file at once
    race ("database is locked" switching it to WAL), and one of them may exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    command = [str(GATEWAY_BIN), "migrate", "--store", f"sqlite:///{folder / 'gw.db'}"]
    subprocess.run(
        [*command, "--data-dir", str(folder)], env=env, check=True, timeout=30, capture_output=True
    )


async def test_two_workers_hold_an_orgs_rate_together(tmp_path: Path, upstream: Upstream) -> None:
    create_sqlite_store(tmp_path)
    gateway = start_gateway(tmp_path, upstream.url, extra=("--workers", "2"))
    try:
        _, key = gateway.new_tenant("acme", limits={"rate_requests": RATE})
        # Both workers up (a spool each), then a few flush ticks for each to count the other.
        await until(lambda: len(list((tmp_path / "spool").glob("*.jsonl"))) == 2)
        await asyncio.sleep(5 * FLUSH_INTERVAL)
        statuses, seconds = await hammer([gateway.url], key)
        assert_one_buckets_allowance(statuses, seconds)
    finally:
        assert gateway.terminate() == 0


async def test_two_replicas_on_postgresql_hold_an_orgs_rate_together(
    tmp_path: Path, upstream: Upstream
) -> None:
    url = f"{postgres_url()}?schema={unique_name('rate')}"
    env = {"GATEWAY_KEY_SECRET": "replicas-share-this-key-secret"}
    replicas = []
    try:
        for name in ("a", "b"):
            replicas.append(start_gateway(tmp_path / name, upstream.url, env, store_url=url))
        _, key = replicas[0].new_tenant("acme", limits={"rate_requests": RATE})
        await asyncio.sleep(5 * FLUSH_INTERVAL)  # b counted at start; a counts b at a tick
        statuses, seconds = await hammer([r.url for r in replicas], key)
        assert_one_buckets_allowance(statuses, seconds)
    finally:
        for replica in replicas:
            replica.terminate()
        await drop_schema(url)
