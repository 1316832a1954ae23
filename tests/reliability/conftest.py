"""Fixtures of the reliability suite: a fault upstream and gateway processes of a test's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import Gateway, start_gateway
from tests.reliability.drivers import FAULT_ENV, FaultUpstream


@pytest.fixture
def fault_upstream() -> Iterator[FaultUpstream]:
    server = FaultUpstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Gateway processes of this test; ``start(url, folder=..., **env)``, all stopped at its end."""
    started: list[Gateway] = []

    def start(upstream_url: str, folder: str = "gw", **env: str) -> Gateway:
        running = start_gateway(tmp_path / folder, upstream_url, {**FAULT_ENV, **env})
        started.append(running)
        return running

    yield start
    for running in started:
        running.terminate(timeout=5)
