"""A client that goes away mid-request costs at most one debug line, never a traceback.

Regression: an admin client that closed while the gateway read its body raised Starlette's
ClientDisconnect out of the app, and uvicorn logged "Exception in ASGI application" with the
whole traceback (chained, at the time, to an ImportError from server start-up).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

from tests.harness import ADMIN_TOKEN, Gateway
from tests.reliability.drivers import BODY, Answer, FaultUpstream

ADMIN_LINE = "admin client disconnected before its body arrived"


def hang_up(port: int, data: bytes, *, reset: bool, after: float = 0.2) -> None:
    """Send ``data``, wait, then close (with an RST if ``reset``) without reading."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        time.sleep(after)
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def post(target: str, token: str, length: int, content_type: str = "application/json") -> bytes:
    return (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_clients_that_hang_up_mid_request_leave_no_traceback(
    gateways: Callable[..., Gateway], fault_upstream: FaultUpstream
) -> None:
    gateway = gateways(fault_upstream.url, GATEWAY_LOG_LEVEL="debug")
    org, key = gateway.new_tenant("hangs-up")
    fault_upstream.answers[org] = Answer(delay=0.5)
    ingest = int(gateway.url.rsplit(":", 1)[1])

    for reset in (False, True):
        # While the admin listener reads the body.
        hang_up(gateway.admin_port, post("/admin/orgs", ADMIN_TOKEN, 100) + b'{"na', reset=reset)
        # While the ingest listener reads the body.
        hang_up(ingest, post("/v1/traces", key, len(BODY)) + BODY[:10], reset=reset)
        # While the gateway forwards upstream; it answers after the client is gone.
        hang_up(ingest, post("/v1/traces", key, len(BODY)) + BODY, reset=reset)
    time.sleep(1.5)  # the upstream's answers arrive and are sent to no one

    assert gateway.admin("GET", "/metrics").status_code == 200  # still serving
    logs = gateway.logs()
    assert "Traceback" not in logs, logs[-4000:]
    assert "Exception in ASGI application" not in logs
    assert logs.count(ADMIN_LINE) == 2
