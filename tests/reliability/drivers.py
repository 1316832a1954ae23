"""Fault tools: an upstream that fails on demand, a load driver, and /proc probes.

Every server listens on 127.0.0.1 only. ``FaultUpstream`` is a raw asyncio HTTP/1.1
server in a thread of its own, so it can answer any status with any header, stall until
the gateway gives up, or reset every connection (SO_LINGER 0). ``Load`` is an aiohttp
driver that records one outcome per request it sends, bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import os
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness import Gateway

SCALE = float(os.environ.get("RELIABILITY_SCALE", "1"))

# Small timeouts so that a fault shows within a test's few seconds.
FAULT_ENV = {
    "GATEWAY_UPSTREAM_TIMEOUT": "0.5",
    "GATEWAY_FLUSH_INTERVAL": "0.2",
    "GATEWAY_BODY_TIMEOUT": "1",
    "GATEWAY_HEADER_TIMEOUT": "1",
}
SPANS = 2


def trace_body(spans: int = SPANS) -> bytes:
    """OTLP/JSON with ``spans`` spans: one request, ``spans`` items, ``len(body)`` bytes."""
    items = [
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": f"eee19b7ec3c1b1{i:02d}"}
        for i in range(spans)
    ]
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": items}]}]}).encode()


BODY = trace_body()


def closed_port() -> int:
    """A loopback port that nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the upstream ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """How the upstream answers one org: a status and headers, after ``delay`` seconds.

    ``hang`` > 0 answers nothing and holds the connection until the peer closes it (at
    most ``hang`` seconds).
    """

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    hang: float = 0.0


class FaultUpstream:
    """An HTTP/1.1 upstream on 127.0.0.1: counts what it receives per org, fails on demand."""

    def __init__(self) -> None:
        self.port = 0
        self.reset_all = False
        self.default = Answer()
        self.answers: dict[str, Answer] = {}
        self.connections = 0
        self._received: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-upstream")
        self._thread.daemon = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def received(self, org_id: str | None = None) -> int:
        """Complete requests received so far, for one org or in all."""
        with self._lock:
            return self._received[org_id] if org_id else sum(self._received.values())

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            if self.reset_all:
                # SO_LINGER 0: close() sends a RST instead of a FIN.
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(100_000):  # requests on one keep-alive connection
            head = await reader.readuntil(b"\r\n\r\n")
            headers = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            await reader.readexactly(int(headers.get("content-length", "0")))
            org = headers.get("x-gateway-org-id", "")
            answer = self.answers.get(org, self.default)
            with self._lock:
                self._received[org] += 1
            if answer.hang:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(), answer.hang)
                return
            if answer.delay:
                await asyncio.sleep(answer.delay)
            body = b"{}" if answer.status < 300 else b'{"error":"upstream says no"}'
            lines = [
                f"HTTP/1.1 {answer.status} {http.HTTPStatus(answer.status).phrase}",
                "Content-Type: application/json",
                f"Content-Length: {len(body)}",
                *(f"{name}: {value}" for name, value in answer.headers),
            ]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()


# --- the load driver ------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One request as its client saw it: a response, or the error that ended it."""

    started: float
    ended: float
    status: int | None = None
    code: str | None = None
    retry_after: str | None = None
    error: str | None = None

    @property
    def refused(self) -> bool:
        return self.error == "ConnectionRefusedError"


@dataclass
class Load:
    """Sends ``BODY`` with ``key`` to ``url`` + ``path`` from ``concurrency`` workers.

    Stops after ``requests`` requests, after ``seconds``, when ``stop`` is set, or (with
    ``until_refused``) for each worker at its first refused connection.
    """

    url: str
    key: str
    concurrency: int = 30
    requests: int = 2000
    seconds: float = 5.0
    path: str = "/v1/traces"
    body: bytes = BODY
    force_close: bool = False
    until_refused: bool = False
    request_timeout: float = 10.0
    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _issued: int = field(default=0, init=False)

    async def run(self) -> Load:
        # RELIABILITY_SCALE=10 runs every fault under ten times the load and time (RELIABILITY.md).
        self.requests = int(self.requests * SCALE)
        connector = aiohttp.TCPConnector(limit=self.concurrency, force_close=self.force_close)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            deadline = time.monotonic() + self.seconds * SCALE
            workers = [self._worker(session, deadline) for _ in range(self.concurrency)]
            await asyncio.gather(*workers)
        return self

    async def _worker(self, session: aiohttp.ClientSession, deadline: float) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        while self._issued < self.requests and time.monotonic() < deadline:
            if self.stop.is_set():
                return
            self._issued += 1
            started = time.monotonic()
            try:
                async with session.post(self.url + self.path, data=self.body, headers=headers) as r:
                    raw = await r.read()
                    outcome = Outcome(
                        started,
                        time.monotonic(),
                        status=r.status,
                        code=_error_code(raw),
                        retry_after=r.headers.get("Retry-After"),
                    )
            except aiohttp.ClientConnectorError as exc:
                cause = exc.os_error
                outcome = Outcome(started, time.monotonic(), error=type(cause).__name__)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                outcome = Outcome(started, time.monotonic(), error=type(exc).__name__)
            self.outcomes.append(outcome)
            if outcome.refused and self.until_refused:
                return

    def statuses(self) -> Counter[int | str]:
        """Responses by status, and requests without one by the error that ended them."""
        return Counter(o.status if o.status is not None else str(o.error) for o in self.outcomes)

    def count(self, status: int) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    def ok(self) -> int:
        return sum(1 for o in self.outcomes if o.status is not None and 200 <= o.status < 300)


def _error_code(raw: bytes) -> str | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if "error" in data:
        return str(data["error"])
    # OTLP/JSON refusals are a google.rpc.Status; the code is its ErrorInfo reason.
    for detail in data.get("details", []):
        if isinstance(detail, dict) and "reason" in detail:
            return str(detail["reason"])
    return None


def drive(url: str, key: str, **options: Any) -> Load:
    """Run one load to completion from this (synchronous) test."""
    return asyncio.run(Load(url, key, **options).run())


# --- /proc probes ---------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass(frozen=True)
class Footprint:
    rss: int
    fds: int

    @classmethod
    def of(cls, gateway: Gateway) -> Footprint:
        return cls(rss_bytes(gateway.process.pid), open_fds(gateway.process.pid))


def settled_footprint(gateway: Gateway, before: Footprint, fd_bound: int) -> Footprint:
    """The footprint once client connections are closed (polled for at most 15 s)."""
    deadline = time.monotonic() + 15.0
    now = Footprint.of(gateway)
    while now.fds - before.fds >= fd_bound and time.monotonic() < deadline:
        time.sleep(0.1)
        now = Footprint.of(gateway)
    return now


def usage(gateway: Gateway, org_id: str) -> dict[str, int]:
    counters = gateway.usage(org_id)
    return {m: counters.get(m, 0) for m in ("requests", "bytes", "items")}


NOTHING = {"requests": 0, "bytes": 0, "items": 0}


def counted(requests: int, body: bytes = BODY, spans: int = SPANS) -> dict[str, int]:
    """What ``requests`` accepted requests of ``body`` should cost."""
    return {"requests": requests, "bytes": requests * len(body), "items": requests * spans}
