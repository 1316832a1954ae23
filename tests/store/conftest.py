"""One ``store`` fixture runs the contract suite against every backend.

A backend is a param: its id and how to build a store URL in a test's tmp_path.
Adding a backend (PostgreSQL next) means adding one param here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.store import Store, open_store

StoreURL = Callable[[Path], str]


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


# Backends that keep data in a database other store instances can share.
DURABLE_BACKENDS = [
    pytest.param(_sqlite_url, id="sqlite"),
]
BACKENDS = [
    pytest.param(lambda _: "memory://", id="memory"),
    *DURABLE_BACKENDS,
]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    make_url: StoreURL = request.param
    backend = open_store(make_url(tmp_path))
    await backend.open()
    yield backend
    await backend.close()


@pytest.fixture(params=DURABLE_BACKENDS)
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL that several store instances (like several processes) can open at once."""
    make_url: StoreURL = request.param
    return make_url(tmp_path)
