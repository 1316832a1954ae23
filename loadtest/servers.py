"""The servers the benchmarks measure, and the child processes that run them (127.0.0.1 only).

* ``upstream`` - a raw ``asyncio.Protocol`` HTTP/1.1 server answering ``200`` with an empty body
  (keep-alive, Content-Length bodies); ``python -m loadtest.servers upstream --port P``;
* nginx, when it is on PATH: a fast upstream (``return 200``) or a reverse proxy, one worker;
* pass-through proxies served by uvicorn ``--factory loadtest.servers:create_proxy_app``,
  chosen by ``LOADTEST_PROXY`` (``starlette-httpx``, ``starlette-aiohttp``, ``asgi-aiohttp``)
  and forwarding ``POST /v1/...`` to ``LOADTEST_UPSTREAM_URL`` + path through one shared client.

``Children`` starts every process in a session of its own (Ctrl-C reaches only the parent),
asks Linux to SIGTERM it if the parent dies, and stops it (then its process group) on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HOST = "127.0.0.1"  # the only address anything in this package binds or connects to
ROUTE = "/v1/traces"
STATS_PATH = "/__stats"
REPO_ROOT = Path(__file__).resolve().parents[1]
POOL_LIMIT = 100
UPSTREAM_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 20.0
CHILD_MAX_LIFETIME_S = 1800.0
STOP_GRACE_S = 5.0
PROXY_KINDS = ("starlette-httpx", "starlette-aiohttp", "asgi-aiohttp")

# --------------------------------------------------------------------------------------------
# Upstream: raw asyncio.Protocol HTTP/1.1 server
# --------------------------------------------------------------------------------------------

_OK_EMPTY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_MAX_HEAD = 64 * 1024


class UpstreamProtocol(asyncio.Protocol):
    """Minimal keep-alive HTTP/1.1 server: Content-Length bodies only, empty 200 replies."""

    def __init__(self, stats: dict[str, int]) -> None:
        self._stats = stats
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._used = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._stats["open"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._stats["open"] -= 1
        self._transport = None

    def _fail(self, status: bytes) -> None:
        if self._transport is not None:
            self._transport.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self._transport.close()
        self._buf.clear()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while self._transport is not None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._fail(b"431 Request Header Fields Too Large")
                return
            head = bytes(buf[:end]).lower()
            request_line, _, header_block = head.partition(b"\r\n")
            length = 0
            close = request_line.endswith(b"http/1.0")
            for line in header_block.split(b"\r\n"):
                name, _, value = line.partition(b":")
                name = name.strip()
                if name == b"content-length":
                    try:
                        length = int(value.strip())
                    except ValueError:
                        length = -1
                    if length < 0:
                        self._fail(b"400 Bad Request")
                        return
                elif name == b"transfer-encoding":
                    self._fail(b"501 Not Implemented")
                    return
                elif name == b"connection":
                    close = b"close" in value
            total = end + 4 + length
            if len(buf) < total:
                return
            del buf[:total]
            if request_line.startswith(b"get " + STATS_PATH.encode()):
                body = json.dumps(self._stats).encode()
                self._transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
            else:
                self._stats["requests"] += 1
                if not self._used:
                    self._used = True
                    self._stats["connections"] += 1
                self._transport.write(_OK_EMPTY)
            if close:
                self._transport.close()
                return


async def upstream_main(port: int, max_lifetime: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stats = {"connections": 0, "requests": 0, "open": 0}
    server = await loop.create_server(
        lambda: UpstreamProtocol(stats), HOST, port, backlog=1024, reuse_address=True
    )
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max_lifetime)


# --------------------------------------------------------------------------------------------
# Pass-through proxies (uvicorn --factory)
# --------------------------------------------------------------------------------------------


def _forward_headers(content_type: str | None) -> dict[str, str]:
    return {"content-type": content_type or "application/x-protobuf"}


def _httpx_proxy(base: str) -> Any:
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        limits = httpx.Limits(
            max_connections=POOL_LIMIT, max_keepalive_connections=POOL_LIMIT, keepalive_expiry=60
        )
        async with httpx.AsyncClient(
            limits=limits, timeout=httpx.Timeout(UPSTREAM_TIMEOUT_S), trust_env=False
        ) as client:
            yield {"client": client}

    async def forward(request: Request) -> Response:
        body = await request.body()
        client: httpx.AsyncClient = request.state.client
        try:
            upstream = await client.post(
                base + request.url.path,
                content=body,
                headers=_forward_headers(request.headers.get("content-type")),
            )
        except httpx.HTTPError as exc:
            return PlainTextResponse(f"upstream error: {type(exc).__name__}", status_code=502)
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type"),
        )

    return Starlette(routes=[Route("/v1/{signal}", forward, methods=["POST"])], lifespan=lifespan)


def _aiohttp_session() -> Any:
    import aiohttp

    # The gateway's own client settings (gateway.ingest.upstream.HttpUpstream).
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=POOL_LIMIT, keepalive_timeout=60),
        timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S),
        auto_decompress=False,
        trust_env=False,
    )


def _starlette_aiohttp_proxy(base: str) -> Any:
    import aiohttp
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with _aiohttp_session() as session:
            yield {"session": session}

    async def forward(request: Request) -> Response:
        body = await request.body()
        session: aiohttp.ClientSession = request.state.session
        try:
            async with session.post(
                base + request.url.path,
                data=body,
                headers=_forward_headers(request.headers.get("content-type")),
            ) as upstream:
                content = await upstream.read()
                return Response(
                    content,
                    status_code=upstream.status,
                    media_type=upstream.headers.get("content-type"),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return PlainTextResponse(f"upstream error: {type(exc).__name__}", status_code=502)

    return Starlette(routes=[Route("/v1/{signal}", forward, methods=["POST"])], lifespan=lifespan)


class AiohttpPassThrough:
    """Python's practical limit: a plain ASGI callable, one shared aiohttp session, no framework."""

    def __init__(self, base: str) -> None:
        self._base = base
        self._session: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        content_type = next(
            (v.decode("latin-1") for n, v in scope["headers"] if n == b"content-type"), None
        )
        try:
            async with self._session.post(
                self._base + scope["path"],
                data=b"".join(chunks),
                headers=_forward_headers(content_type),
            ) as upstream:
                status, body = upstream.status, await upstream.read()
        except Exception as exc:  # any client failure is the upstream's, answered 502
            status, body = 502, f"upstream error: {type(exc).__name__}".encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        for _ in range(2):  # startup, then shutdown
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._session = _aiohttp_session()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._session is not None:
                    await self._session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_proxy_app() -> Any:
    """uvicorn ``--factory`` entry point, configured by LOADTEST_PROXY and LOADTEST_UPSTREAM_URL."""
    kind = os.environ["LOADTEST_PROXY"]
    base = os.environ["LOADTEST_UPSTREAM_URL"].rstrip("/")
    if kind == "starlette-httpx":
        return _httpx_proxy(base)
    if kind == "starlette-aiohttp":
        return _starlette_aiohttp_proxy(base)
    if kind == "asgi-aiohttp":
        return AiohttpPassThrough(base)
    raise ValueError(f"unknown LOADTEST_PROXY {kind!r}")


def pick_http_impl(choice: str = "auto") -> str:
    if choice != "auto":
        return choice
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


def uvicorn_argv(port: int, http_impl: str) -> list[str]:
    return [
        "-m",
        "uvicorn",
        "loadtest.servers:create_proxy_app",
        "--factory",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        # The gateway runs on uvloop by default (GATEWAY_LOOP), so the proxies do too.
        "--loop",
        "uvloop",
        "--http",
        http_impl,
        "--no-access-log",
        "--log-level",
        "warning",
        "--lifespan",
        "on",
        "--timeout-graceful-shutdown",
        "2",
    ]


# --------------------------------------------------------------------------------------------
# nginx (when installed)
# --------------------------------------------------------------------------------------------


def nginx_path() -> str | None:
    return shutil.which("nginx")


def nginx_conf(prefix: Path, port: int, upstream_port: int | None) -> str:
    """One worker answering ``200`` itself, or proxying to ``upstream_port`` over keep-alive."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers may read the prefix we made
    if upstream_port is None:
        location = "location / { return 200; }"
        upstream = ""
    else:
        upstream = f"upstream backend {{ server {HOST}:{upstream_port}; keepalive 128; }}\n"
        location = (
            "location / { proxy_pass http://backend; proxy_http_version 1.1; "
            'proxy_set_header Connection ""; proxy_request_buffering on; }'
        )
    temp = "\n".join(
        f"  {name}_temp_path {prefix / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
master_process on;
worker_processes 1;
{user}pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temp}
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_max_body_size 64m;
  client_body_buffer_size 64m;
  {upstream}server {{ listen {HOST}:{port}; {location} }}
}}
"""


# --------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------


def parent_death_preexec() -> Callable[[], None] | None:
    """Children get SIGTERM if this process dies without cleaning up (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() != parent:  # parent already gone
            os._exit(1)

    return preexec


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    port: int = 0

    def log_tail(self, limit: int = 2000) -> str:
        with contextlib.suppress(OSError, ValueError):
            self.log.flush()
            self.log.seek(0)
            return self.log.read().decode(errors="replace")[-limit:]
        return ""


@dataclass
class Children:
    env: dict[str, str] = field(default_factory=child_env)
    preexec: Callable[[], None] | None = field(default_factory=parent_death_preexec)
    items: list[Child] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        argv: list[str],
        port: int = 0,
        extra_env: dict[str, str] | None = None,
        capture: bool = False,
        python: bool = True,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
    ) -> Child:
        """Start ``argv`` (after ``sys.executable`` when ``python``) with its output in a log;
        ``env`` replaces the inherited environment, ``extra_env`` adds to it."""
        env = dict(self.env if env is None else env, **(extra_env or {}))
        log = tempfile.TemporaryFile(prefix=f"loadtest-{name}-")
        # Input from a file, not a pipe: nothing to feed while waiting for the output.
        feed = tempfile.TemporaryFile(prefix=f"loadtest-{name}-in-") if stdin else None
        try:
            if feed is not None and stdin is not None:
                feed.write(stdin)
                feed.seek(0)
            proc = subprocess.Popen(
                [sys.executable, *argv] if python else argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL if feed is None else feed,
                stdout=subprocess.PIPE if capture else log,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches only us; we stop the children ourselves
                preexec_fn=self.preexec,
            )
        except BaseException:
            log.close()
            raise
        finally:
            if feed is not None:
                feed.close()
        child = Child(name, proc, log, port)
        self.items.append(child)
        return child

    def stop(self, child: Child) -> None:
        self._stop([child])
        if child in self.items:
            self.items.remove(child)

    def stop_all(self) -> None:
        self._stop(list(reversed(self.items)))
        self.items.clear()

    @staticmethod
    def _stop(children: list[Child]) -> None:
        for child in children:
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for child in children:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # Its own session: the group is the child and what it forked (workers), only.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                child.proc.wait(timeout=STOP_GRACE_S)
            if child.proc.stdout is not None:
                child.proc.stdout.close()
            child.log.close()


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        sent = dict(headers or {})
        if body is not None:
            sent.setdefault("content-type", "application/x-protobuf")
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(child: Child, probe: Callable[[], bool], timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(
                f"{child.name} exited with {child.proc.returncode} before becoming ready:\n"
                + child.log_tail()
            )
        try:
            if probe():
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{child.name} not ready after {timeout:.0f}s:\n" + child.log_tail())


def start_ready(
    children: Children,
    spawn: Callable[[int], Child],
    probe: Callable[[int], bool],
    attempts: int = 3,
) -> Child:
    """Spawn on a free port until the child answers ``probe`` (a port from bind(0) can be taken
    before the child binds it)."""
    for attempt in range(attempts):
        child = spawn(free_port())
        try:
            wait_ready(child, functools.partial(probe, child.port))
            return child
        except RuntimeError:
            children.stop(child)
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def start_python_upstream(children: Children) -> Child:
    def spawn(port: int) -> Child:
        argv = ["-m", "loadtest.servers", "upstream", "--port", str(port)]
        return children.spawn("upstream", argv, port=port)

    return start_ready(children, spawn, lambda p: http_request(p, "GET", STATS_PATH)[0] == 200)


def start_nginx(children: Children, name: str, workdir: Path, upstream_port: int | None) -> Child:
    binary = nginx_path()
    if binary is None:
        raise RuntimeError("nginx is not on PATH")

    def spawn(port: int) -> Child:
        prefix = workdir / f"nginx-{name}-{port}"
        prefix.mkdir(parents=True, exist_ok=True)
        prefix.chmod(0o755)
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(prefix, port, upstream_port))
        argv = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
        return children.spawn(name, argv, port=port, python=False)

    return start_ready(children, spawn, lambda p: http_request(p, "POST", ROUTE, b"x")[0] == 200)


def start_proxy(children: Children, kind: str, upstream_port: int, http_impl: str) -> Child:
    def spawn(port: int) -> Child:
        env = {"LOADTEST_PROXY": kind, "LOADTEST_UPSTREAM_URL": f"http://{HOST}:{upstream_port}"}
        return children.spawn(
            f"proxy-{kind}", uvicorn_argv(port, http_impl), port=port, extra_env=env
        )

    return start_ready(children, spawn, lambda p: http_request(p, "POST", ROUTE, b"x")[0] == 200)


def upstream_stats(port: int) -> dict[str, int]:
    status, body = http_request(port, "GET", STATS_PATH)
    if status != 200:
        raise RuntimeError(f"upstream stats returned {status}")
    stats: dict[str, int] = json.loads(body)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.servers")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upstream", help="raw asyncio upstream answering 200")
    up.add_argument("--port", type=int, required=True)
    up.add_argument("--max-lifetime", type=float, default=CHILD_MAX_LIFETIME_S)
    args = parser.parse_args(argv)
    asyncio.run(upstream_main(args.port, args.max_lifetime))
    return 0


if __name__ == "__main__":
    sys.exit(main())
