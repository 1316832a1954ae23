"""The ingest and admin apps of one runtime over every backend, for the limits tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.admin.app import build_admin_app
from gateway.ingest.app import IngestApp
from gateway.runtime import Runtime
from gateway.settings import Settings
from tests.fakes import MemoryUpstream
from tests.security.signing import STRIPE_SECRET
from tests.store.conftest import BACKENDS, Backend

TOKEN = "signal-meters-admin-token"
SPANS = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{},{}]}]}]}'
LOGS = b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{},{},{}]}]}]}'


class Rig:
    def __init__(self, runtime: Runtime, ingest: httpx.AsyncClient, admin: httpx.AsyncClient):
        self.runtime, self.ingest, self.admin = runtime, ingest, admin

    async def send(self, key: str, signal: str, body: bytes) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        return await self.ingest.post(f"/v1/{signal}", content=body, headers=headers)

    async def usage(self, org_id: str) -> dict[str, object]:
        await self.runtime.usage.flush()
        response = await self.admin.get(f"/admin/orgs/{org_id}/usage")
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body


@pytest.fixture(params=BACKENDS)
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    async with running(request.param(tmp_path), tmp_path) as started:
        yield started


@contextlib.asynccontextmanager
async def running(backend: Backend, tmp_path: Path, **changes: object) -> AsyncIterator[Rig]:
    """A rig over ``backend`` with these settings changed."""
    settings = Settings(
        data_dir=tmp_path,
        key_secret="s" * 32,
        admin_token=TOKEN,
        upstream_url="http://upstream.test",
        flush_interval=3600,
        stripe_webhook_secret=STRIPE_SECRET,
        # Exact limits are what these tests check: a store slowed by a loaded machine must not
        # turn a reservation into a fail-open admission (tests/limits/test_usage.py tests that).
        gate_timeout=10.0,
    ).with_(**changes)
    runtime = Runtime(settings, store=backend.new(), upstream=MemoryUpstream(), spool_dir=None)
    try:
        await runtime.start()
        ingest = httpx.AsyncClient(transport=httpx.ASGITransport(app=IngestApp(runtime)),
                                   base_url="http://gw")  # fmt: skip
        admin = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=build_admin_app(runtime)),
            base_url="http://admin",
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        async with ingest, admin:
            yield Rig(runtime, ingest, admin)
        await runtime.close()
    finally:
        await backend.cleanup()


def measured(meters: object) -> dict[str, dict[str, object]]:
    """The usage API's meters without their forecasts (``test_usage_history`` checks those)."""
    assert isinstance(meters, dict)
    return {m: {k: v for k, v in entry.items() if k != "forecast"} for m, entry in meters.items()}


async def tenant(rig: Rig, limits: dict[str, int | None]) -> tuple[str, str]:
    """An org with ``limits`` and one key: (org id, plaintext key)."""
    created = await rig.admin.post("/admin/orgs", json={"name": "acme", "limits": limits})
    assert created.status_code == 201, created.text
    org_id = created.json()["id"]
    key = (await rig.admin.post(f"/admin/orgs/{org_id}/keys")).json()["key"]
    return org_id, key
