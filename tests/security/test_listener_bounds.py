"""No unauthenticated request holds a worker or memory: request heads are bounded on both
listeners (431, 414), and admin bodies get the ingest body deadline (408) and a size (413).

The protocol class is driven directly with a hand-written transport for the exact bounds;
a real ``ingest-gateway serve`` shows both listeners answer and close.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from gateway.ingest.header_deadlines import guarded
from tests.badinput.rawhttp import Answer, head, parse, request
from tests.harness import ADMIN_TOKEN, Gateway, Upstream, start_gateway

MAX_HEAD = 1024
MAX_LINE = 256


class Transport(asyncio.Transport):
    """What the protocol wrote, and whether it closed."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.eof = False

    def write(self, data: Any) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


class Connection:
    """One connection to a guarded protocol in front of an app that answers 200 ``ok``."""

    def __init__(self) -> None:
        self.requests = 0

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            self.requests += 1
            while (await receive()).get("more_body"):
                pass
            headers = [(b"content-length", b"2")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"ok"})

        protocol_class = guarded(10.0, MAX_HEAD, MAX_LINE)
        config = uvicorn.Config(app, http=protocol_class, lifespan="off", log_level="warning")
        config.load()
        self.transport = Transport()
        self.protocol = protocol_class(config, ServerState(), {})
        self.protocol.connection_made(self.transport)

    async def send(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.protocol.data_received(chunk)
        for _ in range(100):  # let the app's tasks answer
            await asyncio.sleep(0)

    def statuses(self) -> list[int]:
        return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", self.transport.written)]

    def close(self) -> None:
        self.protocol.connection_lost(None)


@pytest.fixture
async def connection() -> AsyncIterator[Connection]:
    opened = Connection()
    yield opened
    opened.close()


def sized_head(total: int, *, target: bytes = b"/", line: int | None = None) -> bytes:
    """A GET head whose target and header lines (with ": " and CRLF) count ``total`` bytes,
    the last header line ``line`` long (name, ": ", value) if given."""
    fixed = [b"Host: gw"]
    counted = len(target) + sum(len(x) + 2 for x in fixed)
    rest = total - counted
    lines = []
    if line is not None:
        lines.append(b"X-Last: " + b"v" * (line - len(b"X-Last: ")))
        rest -= line + 2
    while rest > 0:
        size = min(rest, MAX_LINE + 2)
        lines.insert(0, b"X-F%03d: " % len(lines) + b"f" * (size - 2 - len(b"X-F000: ")))
        rest -= size
    assert rest == 0, "pick a total the filler lines can reach"
    return b"GET " + target + b" HTTP/1.1\r\n" + b"\r\n".join(fixed + lines) + b"\r\n\r\n"


async def test_a_head_at_both_bounds_is_served(connection: Connection) -> None:
    await connection.send(sized_head(MAX_HEAD, line=MAX_LINE))
    assert connection.statuses() == [200]
    assert not connection.transport.closed


async def test_one_byte_over_the_total_is_431_and_the_connection_closes(
    connection: Connection,
) -> None:
    await connection.send(sized_head(MAX_HEAD + 1, line=MAX_LINE))
    assert connection.statuses() == [431]
    assert connection.transport.written.endswith(b'{"error":"header_fields_too_large"}')
    assert b"connection: close\r\n" in connection.transport.written
    assert connection.transport.eof
    assert connection.requests == 0


async def test_one_header_line_over_its_bound_is_431(connection: Connection) -> None:
    await connection.send(sized_head(MAX_LINE * 2, line=MAX_LINE + 1))
    assert connection.statuses() == [431]
    assert connection.requests == 0


async def test_a_target_over_the_line_bound_is_414(connection: Connection) -> None:
    await connection.send(b"GET /" + b"a" * MAX_LINE + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert connection.statuses() == [414]
    assert connection.transport.written.endswith(b'{"error":"uri_too_long"}')


async def test_a_head_sent_a_byte_at_a_time_is_refused_once_over(connection: Connection) -> None:
    lines = b"".join(b"X-%04d: %s\r\n" % (i, b"v" * 50) for i in range(60))
    data = b"GET / HTTP/1.1\r\n" + lines + b"\r\n"
    sent = 0
    for byte in range(len(data)):
        connection.protocol.data_received(data[byte : byte + 1])
        sent += 1
        if connection.transport.closed or connection.transport.eof:
            break
    await connection.send()
    assert connection.statuses() == [431]
    assert sent <= MAX_HEAD + 100  # refused as soon as it was over, not at the head's end
    assert connection.requests == 0


async def test_an_endless_header_line_is_refused_before_it_ends(connection: Connection) -> None:
    """httptools keeps an unfinished header to itself: the raw bytes of the head are bounded."""
    await connection.send(b"GET / HTTP/1.1\r\nHost: gw\r\nX-Endless: ")
    for _ in range(100):
        await connection.send(b"x" * 100)
        if connection.statuses():
            break
    assert connection.statuses() == [431]
    assert connection.requests == 0


async def test_data_after_a_refusal_is_dropped(connection: Connection) -> None:
    await connection.send(sized_head(MAX_HEAD + 1), b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert connection.statuses() == [431]
    assert connection.requests == 0


async def test_every_request_on_a_connection_gets_the_whole_bound(connection: Connection) -> None:
    near = sized_head(MAX_HEAD - 2)
    await connection.send(near, near, near)
    assert connection.statuses() == [200, 200, 200]


async def test_a_large_body_before_the_next_head_is_not_counted_as_head(
    connection: Connection,
) -> None:
    body = b"b" * (MAX_HEAD * 4)
    post = b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(body)
    nxt = sized_head(MAX_HEAD - 2)
    # The body's end and the next head's start arrive in one chunk, the rest of the head after.
    await connection.send(post + body[:10], body[10:] + nxt[:20], nxt[20:])
    assert connection.statuses() == [200, 200]


# --- a real gateway -------------------------------------------------------------------------

REAL_MAX_HEAD = 8192
REAL_MAX_LINE = 2048


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Gateway]:
    env = {
        "GATEWAY_MAX_HEADER_BYTES": str(REAL_MAX_HEAD),
        "GATEWAY_MAX_HEADER_LINE": str(REAL_MAX_LINE),
        "GATEWAY_BODY_TIMEOUT": "1",
    }
    running = start_gateway(tmp_path_factory.mktemp("bounds"), upstream.url, env)
    yield running
    running.terminate()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def exchange(port: int, data: bytes, *, wait: float = 10.0) -> tuple[Answer, bool]:
    """Send ``data``, read the first answer; ``True`` if the gateway then closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = b""
        closed = False
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                closed = True
                break
            received += chunk
    return parse(received), closed


@pytest.mark.parametrize("listener", ["ingest", "admin"])
def test_both_listeners_refuse_large_heads_and_close(bounded: Gateway, listener: str) -> None:
    port = port_of(bounded.url) if listener == "ingest" else bounded.admin_port
    many = [(f"X-Filler-{i}", "f" * 1000) for i in range(10)]
    cases = {
        "total": (head("GET", b"/healthz", many), 431),
        "line": (head("GET", b"/healthz", [("X-Long", "l" * REAL_MAX_LINE)]), 431),
        "target": (head("GET", b"/" + b"t" * REAL_MAX_LINE, []), 414),
        "endless": (b"GET /healthz HTTP/1.1\r\nX-Endless: " + b"e" * 2_000_000, 431),
    }
    for name, (data, status) in cases.items():
        answer, closed = exchange(port, data.replace(b"Connection: close\r\n", b""))
        assert answer.status == status, (name, answer.describe())
        assert answer.headers.get("connection") == "close", name
        assert closed, name
    small = head("GET", b"/healthz", [("X-Small", "s" * 100)])
    assert request("127.0.0.1", port, small).status == (200 if listener == "ingest" else 401)


def admin_post(length: int, body: bytes) -> bytes:
    headers = [
        ("Authorization", f"Bearer {ADMIN_TOKEN}"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(length)),
    ]
    return head("POST", b"/admin/orgs", headers).replace(b"Connection: close\r\n", b"") + body


def test_a_stalled_admin_body_gets_408_and_the_connection_closes(bounded: Gateway) -> None:
    started = time.monotonic()
    answer, closed = exchange(bounded.admin_port, admin_post(100, b'{"name":'), wait=15)
    took = time.monotonic() - started
    assert answer.status == 408, answer.describe()
    assert answer.body == b'{"error":"request_timeout"}'
    assert answer.headers.get("connection") == "close"
    assert closed
    assert 1.0 <= took < 8.0  # GATEWAY_BODY_TIMEOUT=1, checked once a second


def test_an_admin_body_over_1_mib_gets_413(bounded: Gateway) -> None:
    answer, closed = exchange(bounded.admin_port, admin_post(2 * 1024 * 1024, b"{"))
    assert (answer.status, answer.headers.get("connection")) == (413, "close")
    assert closed
    chunked_head = head(
        "POST",
        b"/admin/orgs",
        [
            ("Authorization", f"Bearer {ADMIN_TOKEN}"),
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
    )
    chunk = b"x" * 65536
    body = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 17 + b"0\r\n\r\n"
    answer = request("127.0.0.1", bounded.admin_port, chunked_head + body)
    assert (answer.status, answer.body) == (413, b'{"error":"payload_too_large"}')


def test_an_admin_body_under_the_limit_still_works(bounded: Gateway) -> None:
    assert bounded.admin("POST", "/admin/orgs", {"name": "bounded"}).status_code == 201


@pytest.mark.parametrize("token", ["", "wrong-token-for-the-body-test"])
def test_a_refused_admin_body_is_not_read_and_its_connection_closes(
    bounded: Gateway, token: str
) -> None:
    """A refused client that keeps sending its body would otherwise hold the connection."""
    headers = [("Content-Type", "application/json"), ("Content-Length", "1000000")]
    if token:
        headers.append(("Authorization", f"Bearer {token}"))
    data = head("POST", b"/admin/orgs", headers).replace(b"Connection: close\r\n", b"")
    answer, closed = exchange(bounded.admin_port, data + b'{"name":', wait=5)
    assert answer.status in {401, 429}, answer.describe()
    assert answer.headers.get("connection") == "close"
    assert closed
