"""Create load-test tenants (orgs with one ingest key each) through the admin API.

    python -m loadtest.seed --admin-url http://127.0.0.1:8081 --token T --orgs 1000 \\
        --out loadtest/tenants.json

The mix: about 5% ``over`` orgs (a limit of 50 requests, so they go over during the run), 2%
``suspended`` orgs, and ``normal`` orgs for the rest, unlimited or with limits no run reaches.
Shares round up, so a small seed still holds each kind. The file holds the plaintext keys:
``{"orgs": [{"id", "key", "kind"}]}``; ``loadtest/locustfile.py`` reads it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import secrets
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

KINDS = ("normal", "over", "suspended")
OVER_SHARE = 0.05
SUSPENDED_SHARE = 0.02
LIMITED_SHARE = 0.4  # of the normal orgs: large limits instead of none
OVER_LIMITS = {"requests": 50}
LARGE_LIMITS = {"requests": 100_000_000, "bytes": 10**13, "items": 10**11}
CONCURRENCY = 32
TIMEOUT_S = 30.0
DEFAULT_OUT = Path("loadtest/tenants.json")


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    key: str
    kind: str


@dataclass(frozen=True, slots=True)
class OrgPlan:
    """What to create for one tenant, before any I/O."""

    name: str
    kind: str
    limits: dict[str, int]


class SeedError(RuntimeError):
    """The admin API refused a request; the message carries its status and body."""


def plan_orgs(orgs: int, rng: random.Random, run: str) -> list[OrgPlan]:
    if orgs < 1:
        raise ValueError("orgs must be at least 1")
    over = math.ceil(orgs * OVER_SHARE) if orgs >= 3 else 0
    suspended = math.ceil(orgs * SUSPENDED_SHARE) if orgs >= 3 else 0
    kinds = ["over"] * over + ["suspended"] * suspended + ["normal"] * (orgs - over - suspended)
    rng.shuffle(kinds)
    plans = []
    for index, kind in enumerate(kinds):
        if kind == "over":
            limits = OVER_LIMITS
        elif kind == "normal" and rng.random() < LIMITED_SHARE:
            limits = LARGE_LIMITS
        else:
            limits = {}
        plans.append(OrgPlan(f"loadtest-{run}-{index:05d}-{kind}", kind, dict(limits)))
    return plans


async def _call(
    session: aiohttp.ClientSession, method: str, path: str, body: Any, expected: int
) -> Any:
    async with session.request(method, path, json=body) as response:
        text = await response.text()
        if response.status != expected:
            raise SeedError(f"{method} {path}: {response.status} {text[:300]}")
        return json.loads(text)


async def _create(session: aiohttp.ClientSession, plan: OrgPlan) -> Tenant:
    org = await _call(
        session, "POST", "/admin/orgs", {"name": plan.name, "limits": plan.limits}, 201
    )
    key = await _call(session, "POST", f"/admin/orgs/{org['id']}/keys", None, 201)
    if plan.kind == "suspended":
        body = {"suspended": True, "reason": "load test: suspended tenant"}
        await _call(session, "PUT", f"/admin/orgs/{org['id']}/suspension", body, 200)
    return Tenant(id=org["id"], key=key["key"], kind=plan.kind)


async def seed_async(
    admin_url: str, token: str, orgs: int, *, concurrency: int = CONCURRENCY, rng_seed: int = 0
) -> list[Tenant]:
    """Create ``orgs`` tenants, ``concurrency`` at a time; the first refusal stops the rest."""
    plans = plan_orgs(orgs, random.Random(rng_seed), secrets.token_hex(3))
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(
        base_url=admin_url, headers=headers, connector=connector, timeout=timeout
    ) as session:
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(_create(session, plan)) for plan in plans]
        except ExceptionGroup as failed:
            refused, rest = failed.split((SeedError, aiohttp.ClientError, TimeoutError))
            if refused is None or rest is not None:
                raise
            first = refused.exceptions[0]
            count = len(refused.exceptions)
            raise SeedError(f"{count} admin request(s) failed, first: {first}") from failed
    return [task.result() for task in tasks]


def seed(admin_url: str, token: str, orgs: int, **options: int) -> list[Tenant]:
    """:func:`seed_async` for callers without an event loop."""
    return asyncio.run(seed_async(admin_url, token, orgs, **options))


def write_tenants(tenants: Sequence[Tenant], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"orgs": [asdict(t) for t in tenants]}, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.seed", description=__doc__)
    parser.add_argument("--admin-url", default="http://127.0.0.1:8081")
    parser.add_argument(
        "--token", default=os.environ.get("GATEWAY_ADMIN_TOKEN"), help="GATEWAY_ADMIN_TOKEN"
    )
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kind mix")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token (or GATEWAY_ADMIN_TOKEN) is required")
    try:
        tenants = seed(
            args.admin_url, args.token, args.orgs, concurrency=args.concurrency, rng_seed=args.seed
        )
    except SeedError as error:
        print(f"seed failed: {error}", file=sys.stderr)
        return 1
    write_tenants(tenants, args.out)
    counts = {kind: sum(t.kind == kind for t in tenants) for kind in KINDS}
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    print(f"{len(tenants)} tenants ({summary}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
