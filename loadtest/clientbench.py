"""Upstream-client benchmark: Starlette pass-through proxy on httpx vs aiohttp.

Run from the repository root::

    python -m loadtest.clientbench [--seconds 5] [--concurrency 32] [--size 2048]

Everything runs on 127.0.0.1 in child processes started (and always stopped) here:

* ``upstream``  - a raw ``asyncio.Protocol`` HTTP/1.1 server answering ``200`` with an empty
  body (keep-alive, Content-Length bodies);
* ``proxy-httpx`` / ``proxy-aiohttp`` - one uvicorn process each (1 worker, ``--loop asyncio``,
  ``--http httptools`` when installed, else ``h11``, ``--no-access-log``) serving a Starlette app
  whose only route, ``POST /v1/traces``, forwards the body to the upstream through one shared
  client created in the lifespan;
* ``loadgen`` - one aiohttp process per target holding exactly ``--concurrency`` keep-alive
  connections, each looping POSTs of ``--size`` bytes for 1 s warm-up + ``--seconds``.

Results are printed as a table and written to ``reports/clientbench.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import http.client
import importlib.util
import json
import math
import os
import platform
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

HOST = "127.0.0.1"  # the only address anything in this module binds or connects to
ROUTE = "/v1/traces"
STATS_PATH = "/__stats"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "reports" / "clientbench.json"
POOL_LIMIT = 100
UPSTREAM_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 20.0
CHILD_MAX_LIFETIME_S = 600.0
STOP_GRACE_S = 5.0


# --------------------------------------------------------------------------------------------
# Upstream: raw asyncio.Protocol HTTP/1.1 server (child process)
# --------------------------------------------------------------------------------------------

_OK_EMPTY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_MAX_HEAD = 64 * 1024


class _UpstreamProtocol(asyncio.Protocol):
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


async def _upstream_main(port: int, max_lifetime: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stats = {"connections": 0, "requests": 0, "open": 0}
    server = await loop.create_server(
        lambda: _UpstreamProtocol(stats), HOST, port, backlog=1024, reuse_address=True
    )
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max_lifetime)


# --------------------------------------------------------------------------------------------
# Proxies: Starlette apps served by uvicorn (child processes, built via --factory)
# --------------------------------------------------------------------------------------------


def _forward_headers(content_type: str | None) -> dict[str, str]:
    return {"content-type": content_type or "application/x-protobuf"}


def _httpx_proxy(url: str) -> Any:
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

    async def traces(request: Request) -> Response:
        body = await request.body()
        client: httpx.AsyncClient = request.state.client
        try:
            upstream = await client.post(
                url, content=body, headers=_forward_headers(request.headers.get("content-type"))
            )
        except httpx.HTTPError as exc:
            return PlainTextResponse(f"upstream error: {type(exc).__name__}", status_code=502)
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type"),
        )

    return Starlette(routes=[Route(ROUTE, traces, methods=["POST"])], lifespan=lifespan)


def _aiohttp_proxy(url: str) -> Any:
    import aiohttp
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        connector = aiohttp.TCPConnector(limit=POOL_LIMIT, keepalive_timeout=60)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S),
            trust_env=False,
        ) as session:
            yield {"session": session}

    async def traces(request: Request) -> Response:
        body = await request.body()
        session: aiohttp.ClientSession = request.state.session
        try:
            async with session.post(
                url, data=body, headers=_forward_headers(request.headers.get("content-type"))
            ) as upstream:
                content = await upstream.read()
                return Response(
                    content,
                    status_code=upstream.status,
                    media_type=upstream.headers.get("content-type"),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return PlainTextResponse(f"upstream error: {type(exc).__name__}", status_code=502)

    return Starlette(routes=[Route(ROUTE, traces, methods=["POST"])], lifespan=lifespan)


def create_proxy_app() -> Any:
    """uvicorn ``--factory`` entry point; configured through CLIENTBENCH_* env variables."""
    kind = os.environ["CLIENTBENCH_CLIENT"]
    port = int(os.environ["CLIENTBENCH_UPSTREAM_PORT"])
    url = f"http://{HOST}:{port}{ROUTE}"
    if kind == "httpx":
        return _httpx_proxy(url)
    if kind == "aiohttp":
        return _aiohttp_proxy(url)
    raise ValueError(f"unknown CLIENTBENCH_CLIENT {kind!r}")


# --------------------------------------------------------------------------------------------
# Load generator (child process)
# --------------------------------------------------------------------------------------------


def _percentile(sorted_values: list[float], pct: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


async def _loadgen_main(
    port: int, path: str, concurrency: int, seconds: float, warmup: float, size: int
) -> dict[str, Any]:
    import aiohttp

    url = f"http://{HOST}:{port}{path}"
    body = (bytes(range(256)) * (size // 256 + 1))[:size]
    headers = {"content-type": "application/x-protobuf"}
    latencies: list[float] = []
    errors = 0
    error_samples: dict[str, int] = {}
    connections_opened = 0

    async def on_connection_created(*_: Any) -> None:
        nonlocal connections_opened
        connections_opened += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_connection_created)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)

    start = time.perf_counter()
    measure_from = start + warmup
    measure_to = measure_from + seconds

    async def worker() -> None:
        nonlocal errors
        # One session with a one-connection pool per worker: exactly `concurrency` keep-alive
        # connections, each carrying one request at a time.
        connector = aiohttp.TCPConnector(limit=1, keepalive_timeout=60)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, trace_configs=[trace], trust_env=False
        ) as session:
            while True:
                t0 = time.perf_counter()
                if t0 >= measure_to:
                    return
                problem: str | None = None
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        if resp.status != 200:
                            problem = f"HTTP {resp.status}"
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    problem = type(exc).__name__
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    if problem is None:
                        latencies.append(t1 - t0)
                    else:
                        errors += 1
                        error_samples[problem] = error_samples.get(problem, 0) + 1
                if problem is not None:
                    await asyncio.sleep(0.01)  # do not spin on a dead target

    async with asyncio.timeout(warmup + seconds + REQUEST_TIMEOUT_S + 5):
        await asyncio.gather(*(worker() for _ in range(concurrency)))

    latencies.sort()
    p50 = _percentile(latencies, 50)
    p99 = _percentile(latencies, 99)
    return {
        "requests": len(latencies),
        "errors": errors,
        "error_samples": error_samples,
        "req_per_s": len(latencies) / seconds,
        "p50_ms": None if p50 is None else p50 * 1000,
        "p99_ms": None if p99 is None else p99 * 1000,
        "max_ms": latencies[-1] * 1000 if latencies else None,
        "client_connections": connections_opened,
    }


# --------------------------------------------------------------------------------------------
# Orchestration (parent process)
# --------------------------------------------------------------------------------------------


def _parent_death_preexec() -> Callable[[], None] | None:
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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class _Child:
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
class _Children:
    env: dict[str, str]
    preexec: Callable[[], None] | None
    items: list[_Child] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        argv: list[str],
        port: int = 0,
        extra_env: dict[str, str] | None = None,
        capture: bool = False,
    ) -> _Child:
        env = dict(self.env, **(extra_env or {}))
        log = tempfile.TemporaryFile(prefix=f"clientbench-{name}-")
        try:
            proc = subprocess.Popen(
                [sys.executable, *argv],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else log,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches only us; we stop the children ourselves
                preexec_fn=self.preexec,
            )
        except BaseException:
            log.close()
            raise
        child = _Child(name, proc, log, port)
        self.items.append(child)
        return child

    def stop(self, child: _Child) -> None:
        self._stop([child])
        self.items.remove(child)

    def stop_all(self) -> None:
        self._stop(list(reversed(self.items)))
        self.items.clear()

    @staticmethod
    def _stop(children: list[_Child]) -> None:
        for child in children:
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for child in children:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                child.proc.wait(timeout=STOP_GRACE_S)
            if child.proc.stdout is not None:
                child.proc.stdout.close()
            child.log.close()


def _http(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=2.0)
    try:
        headers = {"content-type": "application/x-protobuf"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _wait_ready(child: _Child, probe: Callable[[], bool]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
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
    raise RuntimeError(f"{child.name} not ready after {READY_TIMEOUT_S:.0f}s:\n" + child.log_tail())


def _upstream_stats(port: int) -> dict[str, int]:
    status, body = _http(port, "GET", STATS_PATH)
    if status != 200:
        raise RuntimeError(f"upstream stats returned {status}")
    return json.loads(body)


def _pick_http_impl(choice: str) -> str:
    if choice != "auto":
        return choice
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


def _start_upstream(children: _Children) -> _Child:
    for attempt in range(3):  # a port picked via bind(0) can be taken before the child binds it
        port = _free_port()
        child = children.spawn(
            "upstream",
            [
                "-m",
                "loadtest.clientbench",
                "_upstream",
                "--port",
                str(port),
                "--max-lifetime",
                str(CHILD_MAX_LIFETIME_S),
            ],
            port=port,
        )
        try:
            _wait_ready(child, lambda p=port: _http(p, "GET", STATS_PATH)[0] == 200)
            return child
        except RuntimeError:
            children.stop(child)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _spawn_proxy(children: _Children, kind: str, upstream_port: int, http_impl: str) -> _Child:
    port = _free_port()
    return children.spawn(
        f"proxy-{kind}",
        [
            "-m",
            "uvicorn",
            "loadtest.clientbench:create_proxy_app",
            "--factory",
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            "1",
            "--loop",
            "asyncio",
            "--http",
            http_impl,
            "--no-access-log",
            "--log-level",
            "warning",
            "--lifespan",
            "on",
            "--timeout-graceful-shutdown",
            "2",
        ],
        port=port,
        extra_env={"CLIENTBENCH_CLIENT": kind, "CLIENTBENCH_UPSTREAM_PORT": str(upstream_port)},
    )


def _start_proxies(children: _Children, upstream_port: int, http_impl: str) -> dict[str, _Child]:
    pending = {
        kind: _spawn_proxy(children, kind, upstream_port, http_impl)
        for kind in ("httpx", "aiohttp")
    }
    ready: dict[str, _Child] = {}
    for kind, child in pending.items():
        for attempt in range(3):
            try:
                _wait_ready(child, lambda p=child.port: _http(p, "POST", ROUTE, b"ping")[0] == 200)
                ready[kind] = child
                break
            except RuntimeError:
                children.stop(child)
                if attempt == 2:
                    raise
                child = _spawn_proxy(children, kind, upstream_port, http_impl)
    return ready


def _run_load(
    children: _Children, target: str, port: int, args: argparse.Namespace
) -> dict[str, Any]:
    child = children.spawn(
        f"loadgen-{target}",
        [
            "-m",
            "loadtest.clientbench",
            "_loadgen",
            "--port",
            str(port),
            "--path",
            ROUTE,
            "--concurrency",
            str(args.concurrency),
            "--seconds",
            str(args.seconds),
            "--warmup",
            str(args.warmup),
            "--size",
            str(args.size),
        ],
        capture=True,
    )
    try:
        limit = args.warmup + args.seconds + REQUEST_TIMEOUT_S + 15
        try:
            out, _ = child.proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"load generator for {target} exceeded {limit:.0f}s") from exc
        if child.proc.returncode != 0:
            raise RuntimeError(
                f"load generator for {target} failed ({child.proc.returncode}):\n"
                + child.log_tail()
            )
        return json.loads(out.decode().strip().splitlines()[-1])
    finally:
        children.stop(child)


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _render(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        f"clientbench: {cfg['seconds']:g}s (+{cfg['warmup']:g}s warm-up) x {cfg['concurrency']} "
        f"conns, {cfg['size']} B bodies; uvicorn --http {cfg['uvicorn_http']} --loop asyncio; "
        f"{cfg['cpus']} CPUs, loadavg {cfg['loadavg_1m_at_start']:.2f}",
        f"{'target':<16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}",
    ]
    for row in report["results"]:
        lines.append(
            f"{row['target']:<16}{_fmt(row['req_per_s'], '.0f'):>10}"
            f"{_fmt(row['p50_ms'], '.2f'):>9}{_fmt(row['p99_ms'], '.2f'):>9}{row['errors']:>8}"
        )
    ratio = report["ratio_aiohttp_over_httpx"]
    lines.append(
        f"{'aiohttp/httpx':<16}{_fmt(ratio['req_per_s'], '.2f') + 'x':>10}"
        f"{_fmt(ratio['p50_ms'], '.2f') + 'x':>9}{_fmt(ratio['p99_ms'], '.2f') + 'x':>9}"
    )
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {"python": platform.python_version()}
    for dist in ("uvicorn", "starlette", "httpx", "httpcore", "aiohttp", "httptools", "h11"):
        with contextlib.suppress(PackageNotFoundError):
            found[dist] = version(dist)
    return found


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    http_impl = _pick_http_impl(args.http)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    children = _Children(env=env, preexec=_parent_death_preexec())
    config = {
        "seconds": args.seconds,
        "warmup": args.warmup,
        "concurrency": args.concurrency,
        "size": args.size,
        "host": HOST,
        "uvicorn_http": http_impl,
        "uvicorn_loop": "asyncio",
        "pool_limit": POOL_LIMIT,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": os.getloadavg()[0],
        "platform": platform.platform(),
        "versions": _versions(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    results: list[dict[str, Any]] = []
    try:
        upstream = _start_upstream(children)
        proxies = _start_proxies(children, upstream.port, http_impl)
        targets = [
            ("direct", upstream.port),
            ("proxy-httpx", proxies["httpx"].port),
            ("proxy-aiohttp", proxies["aiohttp"].port),
        ]
        for target, port in targets:
            before = _upstream_stats(upstream.port)
            row = _run_load(children, target, port, args)
            after = _upstream_stats(upstream.port)
            row["upstream_connections"] = after["connections"] - before["connections"]
            row["upstream_requests"] = after["requests"] - before["requests"]
            results.append({"target": target, **row})
    finally:
        children.stop_all()

    by_target = {row["target"]: row for row in results}
    hx, ah = by_target["proxy-httpx"], by_target["proxy-aiohttp"]
    return {
        "config": config,
        "results": results,
        "ratio_aiohttp_over_httpx": {
            key: _ratio(ah[key], hx[key]) for key in ("req_per_s", "p50_ms", "p99_ms")
        },
    }


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.clientbench",
        description="Starlette pass-through proxy on httpx vs aiohttp (127.0.0.1 only).",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per target")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--size", type=int, default=2048, help="request body bytes")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument(
        "--http",
        choices=("auto", "httptools", "h11"),
        default="auto",
        help="uvicorn HTTP implementation (auto: httptools if installed)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_upstream"]:
        sub = argparse.ArgumentParser()
        sub.add_argument("--port", type=int, required=True)
        sub.add_argument("--max-lifetime", type=float, default=CHILD_MAX_LIFETIME_S)
        ns = sub.parse_args(argv[1:])
        asyncio.run(_upstream_main(ns.port, ns.max_lifetime))
        return 0
    if argv[:1] == ["_loadgen"]:
        sub = argparse.ArgumentParser()
        for name, kind in (
            ("--port", int),
            ("--path", str),
            ("--concurrency", int),
            ("--seconds", float),
            ("--warmup", float),
            ("--size", int),
        ):
            sub.add_argument(name, type=kind, required=True)
        ns = sub.parse_args(argv[1:])
        result = asyncio.run(
            _loadgen_main(ns.port, ns.path, ns.concurrency, ns.seconds, ns.warmup, ns.size)
        )
        print(json.dumps(result), flush=True)
        return 0

    parser = _main_parser()
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 300:
        parser.error("--seconds must be in (0, 300]")
    if not 0 <= args.warmup <= 60:
        parser.error("--warmup must be in [0, 60]")
    if not 1 <= args.concurrency <= 1000:
        parser.error("--concurrency must be in [1, 1000]")
    if not 0 <= args.size <= 64 * 1024 * 1024:
        parser.error("--size must be in [0, 64 MiB]")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        report = _bench(args)
    except KeyboardInterrupt:
        print("clientbench: interrupted; child processes stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"clientbench: {exc}", file=sys.stderr)
        return 1
    print(_render(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
