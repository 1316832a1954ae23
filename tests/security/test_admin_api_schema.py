"""schemathesis against the admin API's own OpenAPI document: no input gets a 5xx.

The admin app is built in process (``build_admin_app``) over a SQLite store in a temporary
folder and reached through schemathesis' ASGI transport with the admin token. Each operation
gets a bounded number of generated requests; every answer must be a non-5xx that conforms to
the documented response schema.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from gateway.admin.app import build_admin_app
from gateway.admin.openapi import SPEC
from gateway.runtime import Runtime
from gateway.settings import Settings

TOKEN = "schema-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class StartedOnce:
    """The admin app with the runtime started by the first ASGI lifespan and kept running.

    schemathesis ends the lifespan after every test; the runtime must outlive those, so a
    shutdown is answered without closing it. ``close()`` stops it on its own event loop.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.app = build_admin_app(runtime)
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.loop is None:
                    self.loop = asyncio.get_running_loop()
                    await self.runtime.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def close(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self.runtime.close(), self.loop)
            try:
                future.result(timeout=10)
            except concurrent.futures.TimeoutError:
                future.cancel()


@pytest.fixture(scope="module")
def admin_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartedOnce]:
    folder: Path = tmp_path_factory.mktemp("admin-schema")
    runtime = Runtime(
        Settings(
            data_dir=folder,
            store_url=f"sqlite:///{folder / 'gw.db'}",
            admin_token=TOKEN,
            flush_interval=3600,
            upstream_allowlist="127.0.0.1",
        ),
        spool_dir=None,
    )
    app = StartedOnce(runtime)
    yield app
    app.close()


@pytest.fixture(scope="module")
def admin_schema(admin_app: StartedOnce) -> Any:
    return schemathesis.openapi.from_asgi("/admin/openapi.json", admin_app, headers=AUTH)


INT64_MAX = 2**63 - 1


def fits_int64(value: object) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) <= INT64_MAX
    if isinstance(value, dict):
        return all(fits_int64(v) for v in value.values())
    if isinstance(value, list):
        return all(fits_int64(v) for v in value)
    return True


# One test per documented operation, listed from the document itself at collection time.
OPERATIONS = [
    (method.upper(), path)
    for path, item in SPEC["paths"].items()
    for method in item
    if method in {"get", "post", "put", "patch", "delete"}
]


@pytest.fixture(scope="module")
def known_ids(admin_schema: Any) -> dict[str, str]:
    """A real org and key, so generated requests also reach past the 404 of unknown ids."""
    created = admin_schema["/admin/orgs"]["POST"].Case(body={"name": "seed"}).call(headers=AUTH)
    assert created.status_code == 201, created.text
    org_id = created.json()["id"]
    keys = admin_schema["/admin/orgs/{org_id}/keys"]["POST"]
    key = keys.Case(path_parameters={"org_id": org_id}).call(headers=AUTH)
    assert key.status_code == 201, key.text
    return {"org_id": org_id, "key_id": key.json()["id"], "name": "free"}  # a seeded plan


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_admin_request_gets_a_server_error(
    admin_schema: Any, known_ids: dict[str, str], method: str, path: str
) -> None:
    operation = admin_schema[path][method]
    seen: set[int] = set()

    @given(case=operation.as_strategy(), known=st.booleans())
    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any, known: bool) -> None:
        if known and case.path_parameters:
            for name in case.path_parameters:
                case.path_parameters[name] = known_ids[name]
        response = case.call_and_validate(
            headers=AUTH,
            checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
        )
        seen.add(response.status_code)

    check()
    assert 401 not in seen  # the token was sent: the generated requests reached the routes


def test_the_document_lists_every_admin_route(admin_app: StartedOnce) -> None:
    served = {
        (method, route.path)
        for route in admin_app.app.api.app.routes
        for method in route.methods - {"HEAD"}
        if route.path != "/admin/openapi.json"
    }
    assert served == set(OPERATIONS)


async def _admin_call(
    tmp_path: Path, method: str, path: str, body: dict[str, Any], org: bool = False
) -> httpx.Response:
    runtime = Runtime(
        Settings(
            data_dir=tmp_path,
            store_url=f"sqlite:///{tmp_path / 'gw.db'}",
            admin_token=TOKEN,
            flush_interval=3600,
        ),
        spool_dir=None,
    )
    await runtime.start()
    try:
        transport = httpx.ASGITransport(app=build_admin_app(runtime), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            if org:
                created = await client.post("/admin/orgs", json={"name": "o"}, headers=AUTH)
                path = path.format(org_id=created.json()["id"])
            return await client.request(method, path, json=body, headers=AUTH)
    finally:
        await runtime.close()


async def test_a_limit_beyond_int64_is_refused_with_400(tmp_path: Path) -> None:
    body = {"name": "big", "limits": {"rate_bytes": 2**63}}
    response = await _admin_call(tmp_path, "POST", "/admin/orgs", body)
    assert response.status_code == 400, response.status_code


async def test_a_price_beyond_int64_is_refused_with_400(tmp_path: Path) -> None:
    body = {"prices": {"items": 2**63}}
    response = await _admin_call(tmp_path, "PATCH", "/admin/orgs/{org_id}", body, org=True)
    assert response.status_code == 400, response.status_code


async def test_a_limit_of_int64_max_is_stored(tmp_path: Path) -> None:
    body = {"name": "max", "limits": {"requests": INT64_MAX}}
    response = await _admin_call(tmp_path, "POST", "/admin/orgs", body)
    assert response.status_code == 201, response.text
