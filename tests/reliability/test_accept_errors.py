"""Out of file descriptors: accept() errors are one log line a second, with a count, and the
retries do not multiply.

Regression: asyncio's default handler logged every failed accept with a traceback, and its
selector loop (3.11) kept accepting after EMFILE up to the backlog, one retry timer per
failure, so the failures (and the memory of their timers) grew every second.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.server import AcceptErrorLog
from tests.harness import Gateway
from tests.reliability.drivers import FaultUpstream, open_fds, rss_bytes

ACCEPT = "socket.accept() out of system resource"
LINE = re.compile(
    r"socket\.accept\(\) out of system resource: \[Errno 24\] [^\n]*?"
    r"(?: \((\d+) more in the last 1 s\))?$"
)


def accept_context(listener: socket.socket, code: int = errno.EMFILE) -> dict[str, Any]:
    """What asyncio's selector loop hands its exception handler when accept() fails."""
    return {
        "message": ACCEPT,
        "exception": OSError(code, "Too many open files"),
        "socket": listener,
    }


async def test_a_burst_of_accept_errors_is_one_line_then_one_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    handler = AcceptErrorLog(interval=0.2)
    with socket.socket() as listener, caplog.at_level(logging.ERROR, logger="gateway"):
        for i in range(500):
            handler(loop, accept_context(listener, errno.ENFILE if i % 2 else errno.EMFILE))
        assert len(caplog.records) == 1
        assert caplog.records[0].exc_info is None  # no traceback
        await asyncio.sleep(0.5)
        assert len(caplog.records) == 2
        assert "(499 more in the last 0.2 s)" in caplog.records[1].getMessage()
        await asyncio.sleep(0.5)  # nothing more failed: nothing more is said
        assert len(caplog.records) == 2
        handler(loop, accept_context(listener))
        assert len(caplog.records) == 3


async def test_other_loop_errors_go_to_the_handler_that_was_there() -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    handler = AcceptErrorLog(lambda _loop, context: seen.append(context))
    with socket.socket() as listener:
        other = {"message": "Task exception was never retrieved", "exception": ValueError()}
        not_accept = {"message": "socket.send() failed", "exception": OSError(errno.EMFILE, "")}
        refused = accept_context(listener, errno.ECONNREFUSED)
        for context in (other, not_accept, refused):
            handler(loop, context)
    assert seen == [other, not_accept, refused]


async def test_without_a_previous_handler_other_errors_reach_asyncios_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        AcceptErrorLog()(loop, {"message": "something else broke"})
    assert "something else broke" in caplog.text


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_gateway_out_of_descriptors_logs_once_a_second_and_recovers(
    gateways: Callable[..., Gateway], fault_upstream: FaultUpstream, loop: str
) -> None:
    """On uvloop (the default) libuv accepts and closes what it has no descriptor for, and
    says nothing; on asyncio's loop each failure is an error, logged once a second."""
    gateway = gateways(fault_upstream.url, GATEWAY_FLUSH_INTERVAL="3600", GATEWAY_LOOP=loop)
    pid = gateway.process.pid
    ports = (int(gateway.url.rsplit(":", 1)[1]), gateway.admin_port)
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    rss_before = rss_bytes(pid)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_fds(pid) + 4, hard))
    clients = []
    try:
        for _ in range(100):
            for port in ports:
                client = socket.socket()
                client.setblocking(False)
                try:
                    client.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                clients.append(client)
        held = 5.0
        time.sleep(held)
    finally:
        for client in clients:
            client.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    rss_after = rss_bytes(pid)
    with httpx.Client(timeout=10) as probe:
        assert probe.get(f"{gateway.url}/healthz").status_code == 200

    assert rss_after - rss_before < 8 * 1024 * 1024
    logs = gateway.logs()
    lines = [line for line in logs.splitlines() if ACCEPT in line]
    assert "_accept_connection" not in logs  # no traceback of a failed accept
    if loop == "uvloop":
        assert not lines, lines
        return
    assert lines, logs[-3000:]
    matches = [LINE.search(line) for line in lines]
    assert all(matches), lines
    assert len(lines) <= held + 2
    # Each listener retries about once a second; asyncio's own loop had made it thousands.
    failures = sum(int(m.group(1) or 1) for m in matches if m)
    assert failures <= len(ports) * (held + 2)
