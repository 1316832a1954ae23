"""One ``store`` fixture runs the contract suite against every backend.

A backend is a param: its id and how to build a store URL in a test's tmp_path.
PostgreSQL tests each get a schema of their own on ``tests.services.postgres_url()``,
dropped afterwards; without a server they skip, and under CI they fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from gateway.store import Store, open_store
from gateway.store.postgres import split_url
from tests.services import postgres_url, unique_name

StoreURL = Callable[[Path], str]


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


def new_schema_url() -> str:
    """A URL on the test server whose schema no other test uses (and nothing created yet)."""
    base = postgres_url()
    return f"{base}{'&' if '?' in base else '?'}schema={unique_name('t')}"


async def drop_schema(url: str) -> None:
    dsn, schema = split_url(url)
    if schema is None:
        return
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def _postgres_url(_: Path) -> str:
    return new_schema_url()


# Backends that keep data in a database other store instances can share.
DURABLE_BACKENDS = [
    pytest.param(_sqlite_url, id="sqlite"),
    pytest.param(_postgres_url, id="postgresql"),
]
BACKENDS = [
    pytest.param(lambda _: "memory://", id="memory"),
    *DURABLE_BACKENDS,
]


async def _cleanup(url: str) -> None:
    if url.startswith(("postgresql://", "postgres://")):
        await drop_schema(url)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    make_url: StoreURL = request.param
    url = make_url(tmp_path)
    backend = open_store(url)
    try:
        await backend.open()
        yield backend
        await backend.close()
    finally:
        await _cleanup(url)


@pytest.fixture(params=DURABLE_BACKENDS)
async def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL that several store instances (like several processes) can open at once."""
    make_url: StoreURL = request.param
    url = make_url(tmp_path)
    yield url
    await _cleanup(url)
