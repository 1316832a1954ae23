"""A real upstream and one real gateway process (small body limits) for the raw-socket tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Gateway, Upstream, start_gateway

MAX_BODY = 16 * 1024
MAX_DECOMPRESSED = 256 * 1024
BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Gateway]:
    env = {
        "GATEWAY_MAX_BODY": str(MAX_BODY),
        "GATEWAY_MAX_DECOMPRESSED": str(MAX_DECOMPRESSED),
        "GATEWAY_BODY_TIMEOUT": str(BODY_TIMEOUT),
    }
    running = start_gateway(tmp_path_factory.mktemp("badinput"), upstream.url, env)
    yield running
    running.terminate()
