"""``serve --workers N``: forked workers share the ports and, through the store, the limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.harness import Upstream, start_gateway
from tests.multi.test_replicas import fire, settled_usage


async def test_two_workers_share_a_limit_exactly(tmp_path: Path, upstream: Upstream) -> None:
    gateway = start_gateway(
        tmp_path, upstream.url, {"GATEWAY_FLUSH_INTERVAL": "0.2"}, extra=("--workers", "2")
    )
    try:
        org_id, key = gateway.new_tenant("acme", limits={"requests": 100})
        statuses = await fire([gateway.url], key, 1000)
        assert statuses.count(200) == 100
        # 429: refused while the other worker still held quota (a retry, not final).
        assert statuses.count(402) + statuses.count(429) == 900
        assert settled_usage(gateway, org_id, 100) == 100
        await asyncio.sleep(1.0)  # unspent quota is back after two flush intervals (0.4 s)
        assert set(await fire([gateway.url], key, 100)) == {402}
        spools = list((tmp_path / "spool").glob("*.jsonl"))
        assert len(spools) == 2, "one spool per worker: two processes served"
    finally:
        assert gateway.terminate() == 0
