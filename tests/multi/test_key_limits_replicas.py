"""1,000 concurrent requests over 10 keys of one org on two replicas (PostgreSQL + Redis):
each key's limit, the org's total and its traces.items limit are all exact, and what is stored
and what the backend received equal what was admitted."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp

from tests.multi.test_replicas import Cluster, cluster  # noqa: F401 (the fixture)

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
