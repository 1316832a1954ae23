"""``serve`` start-up: the admin token rule, binding the listeners, the event loop runner."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.server import GC_YOUNG_THRESHOLD, _run, check_admin_token, serve
from gateway.settings import Settings
from tests.harness import GATEWAY_BIN

SHORT = "fifteen-chars-x"  # 15


def test_an_admin_token_shorter_than_16_characters_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as refused:
        check_admin_token(Settings(admin_token=SHORT))
    assert "at least 16 characters" in str(refused.value)
    assert SHORT not in str(refused.value)


def test_a_16_character_admin_token_is_accepted() -> None:
    check_admin_token(Settings(admin_token=SHORT + "y"))


def test_an_unset_admin_token_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway"):
        check_admin_token(Settings(admin_token=None))
    assert "GATEWAY_ADMIN_TOKEN is not set" in caplog.text


async def test_serve_refuses_a_short_admin_token_before_opening_anything(tmp_path: Path) -> None:
    settings = Settings(admin_token=SHORT, data_dir=tmp_path, store_url="memory://")
    with pytest.raises(ConfigError, match="GATEWAY_ADMIN_TOKEN"):
        await serve(settings)
    assert not (tmp_path / "spool").exists()


@pytest.mark.parametrize("command", ["serve", "quickstart"])
def test_the_cli_exits_2_with_the_rule_for_a_short_admin_token(
    tmp_path: Path, command: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_ADMIN_TOKEN"] = SHORT
    done = subprocess.run(
        [str(GATEWAY_BIN), command, "--store", "memory://", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert b"GATEWAY_ADMIN_TOKEN must be at least 16 characters" in done.stderr
    assert SHORT.encode() not in done.stdout + done.stderr
    assert b"demo org" not in done.stdout  # quickstart refused before creating anything


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_an_error_from_the_server_is_not_chained_to_a_start_up_import_error(loop: str) -> None:
    """Regression: ``_run`` ran the server inside ``except ImportError:``, so every traceback
    said "During handling of the above exception ... ImportError"."""

    async def main() -> None:
        raise RuntimeError("from inside the server")

    with pytest.raises(RuntimeError) as raised:
        _run(main(), loop)
    assert raised.value.__context__ is None


async def test_a_port_in_use_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(
            admin_token="a" * 32, data_dir=tmp_path, store_url="memory://", host="127.0.0.1"
        )
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            await serve(settings.with_(port=port, admin_port=port + 1 if port < 65535 else 1))


async def test_a_serving_gateway_keeps_its_start_up_heap_out_of_the_collectors_scans(
    tmp_path: Path,
) -> None:
    """Full collections walked everything start-up built every few hundred requests: about
    a quarter of a gated request's time in process, and the p99 of the benchmark."""
    before = gc.get_threshold()
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    settings = Settings(
        admin_token="a" * 32,
        data_dir=tmp_path,
        store_url="memory://",
        host="127.0.0.1",
        port=ports[0],
        admin_port=ports[1],
    )
    ready = asyncio.Event()
    task = asyncio.create_task(serve(settings, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # serve's own handler: a graceful stop
        await asyncio.wait_for(task, 10)
        gc.unfreeze()
        gc.set_threshold(*before)
