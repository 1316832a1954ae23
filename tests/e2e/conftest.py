"""Fixtures of the end-to-end suite: a real upstream and real gateway processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import Gateway, Upstream, start_gateway


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _reset_upstream(upstream: Upstream) -> Iterator[None]:
    """A test that makes the upstream fail or stall leaves it healthy for the next one."""
    upstream.reset()
    yield
    upstream.reset()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Gateway]:
    running = start_gateway(tmp_path_factory.mktemp("gateway"), upstream.url)
    yield running
    running.terminate()


@pytest.fixture
def gateway_factory(tmp_path: Path, upstream: Upstream) -> Iterator[Callable[..., Gateway]]:
    """Gateways of a test's own (function scope), stopped at its end if still running."""
    started: list[Gateway] = []

    def make(**env: str) -> Gateway:
        running = start_gateway(tmp_path / f"gw{len(started)}", upstream.url, env)
        started.append(running)
        return running

    yield make
    for running in started:
        running.terminate()


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as ingest:
        yield ingest
