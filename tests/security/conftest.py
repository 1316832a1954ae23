"""A real upstream and a real gateway process (webhook secrets set) for the security tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Gateway, Upstream, start_gateway
from tests.security.signing import WEBHOOK_ENV


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Gateway]:
    running = start_gateway(tmp_path_factory.mktemp("security"), upstream.url, WEBHOOK_ENV)
    yield running
    running.terminate()
