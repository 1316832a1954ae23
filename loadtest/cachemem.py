"""Resident memory of the routing cache as distinct keys are seen, in process.

    python -m loadtest.cachemem [--keys 100000,1000000] [--max-keys 1000000] [--out F]

Each point runs in a child process of its own (so one point's memory is not another's):
a ``RoutingCache`` bounded by ``--max-keys`` (``GATEWAY_CACHE_MAX_KEYS``) over a store that
answers every key hash with a routing of its own (an org per ten keys, each key with a limit
of its own, as the store builds them), looked up once per key: the process's resident
memory before and after, and what each key costs. The gateway's caches are this object;
the HTTP benchmark (``loadtest.bench``) reads a whole gateway's RSS at 100,000 keys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.limits.guard import StoreGuard
from gateway.limits.routing import RoutingCache
from policies.model import Limits, OrgRouting

MB = 1024 * 1024


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class KeyedStore:
    """Every key hash is a key of org ``n // 10`` with a limit of its own."""

    async def routing_for_key(self, key_hash: bytes) -> OrgRouting:
        n = int(key_hash[4:])
        key_id = f"key_{n:012d}"
        limits = Limits.from_dict({"requests": 10**9, f"key/{key_id}/items": 10**9})
        return OrgRouting(f"org_{n // 10:012d}", "http://upstream:4318", limits, key_id=key_id)


async def fill(keys: int, max_keys: int) -> dict[str, Any]:
    cache = RoutingCache(KeyedStore(), StoreGuard(timeout=30.0), maxsize=max_keys)  # type: ignore[arg-type]
    before = rss_bytes()
    for first in range(0, keys, 1000):
        await asyncio.gather(
            *(cache.lookup(b"key-%d" % n) for n in range(first, min(first + 1000, keys)))
        )
    after = rss_bytes()
    return {
        "keys_seen": keys,
        "max_keys": max_keys,
        "cached": len(cache),
        "rss_mb": round(after / MB, 1),
        "growth_mb": round((after - before) / MB, 1),
        "bytes_per_cached_key": round((after - before) / max(len(cache), 1)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.cachemem", description=__doc__)
    parser.add_argument("--keys", default="100000,1000000", help="distinct keys seen per point")
    parser.add_argument("--max-keys", type=int, default=1_000_000, help="GATEWAY_CACHE_MAX_KEYS")
    parser.add_argument("--bounded", type=int, default=100_000, help="a second, smaller bound")
    parser.add_argument("--point", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="write the points as JSON here")
    args = parser.parse_args(argv)
    if args.point:
        print(json.dumps(asyncio.run(fill(*args.point))))
        return 0
    points = []
    for keys in (int(k) for k in args.keys.split(",") if k):
        for bound in sorted({args.max_keys, args.bounded}, reverse=True):
            command = [sys.executable, "-m", "loadtest.cachemem", "--point", str(keys), str(bound)]
            child = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
            point = json.loads(child.stdout)
            points.append(point)
            print(
                f"{point['keys_seen']:>9,} keys seen, bound {point['max_keys']:>9,}:"
                f" {point['cached']:>9,} cached, RSS {point['rss_mb']:>7.1f} MB"
                f" (+{point['growth_mb']:.1f} MB, {point['bytes_per_cached_key']} B a key)",
                flush=True,
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(points, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
