"""End-to-end fixtures: a real upstream (aiohttp, in a thread) and the real gateway process.

The upstream records every request it receives and can be told to fail or stall. The
gateway is started with ``ingest-gateway serve`` exactly as an operator would, against
a SQLite store in a temporary folder, and stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

VENV_BIN = Path(sys.executable).parent
GATEWAY_BIN = VENV_BIN / "ingest-gateway"
ADMIN_TOKEN = "e2e-admin-token-0123456789"
UPSTREAM_TIMEOUT = 1.0
FLUSH_INTERVAL = 0.2
MAX_BODY = 65536
MAX_DECOMPRESSED = 1024 * 1024


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Received:
    """One request as the upstream saw it."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for n, v in self.headers if n.lower() == name), None)


class Upstream:
    """An aiohttp server on 127.0.0.1 in a thread of its own, recording what it receives."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.status = 200
        self.delay = 0.0
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, name="e2e-upstream", daemon=True)
        self._started = threading.Event()
        self._failure: BaseException | None = None

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the upstream did not start")
        if self._failure is not None:
            raise RuntimeError("the upstream did not start") from self._failure

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def reset(self) -> None:
        self.status = 200
        self.delay = 0.0

    def received(self, org_id: str | None = None, path: str | None = None) -> list[Received]:
        """What arrived so far, optionally only for one org (by X-Gateway-Org-Id) or path."""
        with self._lock:
            seen = list(self._received)
        return [
            r
            for r in seen
            if (org_id is None or r.header("x-gateway-org-id") == org_id)
            and (path is None or r.path == path)
        ]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by start()
            self._failure = exc
            self._started.set()
            return
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            assert self._runner is not None
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # auto_decompress=False: record gzip bodies as the gateway forwarded them.
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=1.0, auto_decompress=False
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        record = Received(
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers=list(request.headers.items()),
            body=body,
        )
        with self._lock:
            self._received.append(record)
        if self.delay:
            await asyncio.sleep(self.delay)
        headers = {}
        if request.headers.get("Content-Type"):
            headers["Content-Type"] = request.headers["Content-Type"]
        return web.Response(status=self.status, body=b"", headers=headers)


@dataclass
class Gateway:
    """A running ``ingest-gateway serve`` process and how to talk to it."""

    process: subprocess.Popen[bytes]
    url: str
    admin_url: str
    admin_port: int
    token: str
    data_dir: Path
    store_url: str
    log_path: Path
    env: dict[str, str]
    _admin: httpx.Client = field(repr=False)

    @property
    def max_body(self) -> int:
        return int(self.env["GATEWAY_MAX_BODY"])

    @property
    def max_decompressed(self) -> int:
        return int(self.env["GATEWAY_MAX_DECOMPRESSED"])

    @property
    def flush_interval(self) -> float:
        return float(self.env["GATEWAY_FLUSH_INTERVAL"])

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """``ingest-gateway <args> --store <this store> --data-dir <this folder>``."""
        command = [str(GATEWAY_BIN), *args, "--store", self.store_url]
        command += ["--data-dir", str(self.data_dir)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        return subprocess.run(
            command, env=env, capture_output=True, timeout=30, check=False, cwd=self.data_dir
        )

    def admin(self, method: str, path: str, json: Any = None) -> httpx.Response:
        return self._admin.request(method, path, json=json)

    def create_org(self, name: str, **body: Any) -> str:
        response = self.admin("POST", "/admin/orgs", {"name": name, **body})
        assert response.status_code == 201, response.text
        org_id: str = response.json()["id"]
        return org_id

    def create_key(self, org_id: str) -> tuple[str, str]:
        response = self.admin("POST", f"/admin/orgs/{org_id}/keys")
        assert response.status_code == 201, response.text
        data = response.json()
        return data["id"], data["key"]

    def new_tenant(self, name: str, **body: Any) -> tuple[str, str]:
        """A fresh org with one key: (org id, ingest key)."""
        org_id = self.create_org(name, **body)
        return org_id, self.create_key(org_id)[1]

    def usage(self, org_id: str) -> dict[str, int]:
        response = self.admin("GET", f"/admin/orgs/{org_id}/usage")
        assert response.status_code == 200, response.text
        counters: dict[str, int] = response.json()["usage"]
        return counters

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait (SIGKILL after ``timeout``); returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._admin.close()
        return self.process.returncode


def start_gateway(
    directory: Path,
    upstream_url: str,
    env: dict[str, str] | None = None,
    *,
    store_url: str | None = None,
    extra: tuple[str, ...] = (),
) -> Gateway:
    directory.mkdir(parents=True, exist_ok=True)
    port, admin_port = free_port(), free_port()
    while admin_port == port:
        admin_port = free_port()
    store_url = store_url or f"sqlite:///{directory / 'gw.db'}"
    command = [
        str(GATEWAY_BIN),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--admin-port",
        str(admin_port),
        "--upstream",
        upstream_url,
        "--store",
        store_url,
        "--data-dir",
        str(directory),
        *extra,
    ]
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OTEL_"))}
    environment.update(
        GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN,
        GATEWAY_UPSTREAM_TIMEOUT=str(UPSTREAM_TIMEOUT),
        GATEWAY_FLUSH_INTERVAL=str(FLUSH_INTERVAL),
        GATEWAY_MAX_BODY=str(MAX_BODY),
        GATEWAY_MAX_DECOMPRESSED=str(MAX_DECOMPRESSED),
        GATEWAY_LOG_LEVEL="warning",
        # Tests point orgs at other loopback ports (a closed one, say): allow them explicitly.
        GATEWAY_UPSTREAM_ALLOWLIST="127.0.0.1",
    )
    environment.update(env or {})
    log_path = directory / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=directory
        )
    gateway = Gateway(
        process=process,
        url=f"http://127.0.0.1:{port}",
        admin_url=f"http://127.0.0.1:{admin_port}",
        admin_port=admin_port,
        token=ADMIN_TOKEN,
        data_dir=directory,
        store_url=store_url,
        log_path=log_path,
        env={k: v for k, v in environment.items() if k.startswith("GATEWAY_")},
        _admin=httpx.Client(
            base_url=f"http://127.0.0.1:{admin_port}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=10,
        ),
    )
    try:
        _wait_until_up(gateway, timeout=15)
    except BaseException:
        gateway.terminate(timeout=2)
        raise
    return gateway


def _wait_until_up(gateway: Gateway, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1) as probe:
        while True:
            if gateway.process.poll() is not None:
                pytest.fail(
                    f"the gateway exited with {gateway.process.returncode}:\n{gateway.logs()}"
                )
            try:
                health = probe.get(f"{gateway.url}/healthz")
                admin = probe.get(f"{gateway.admin_url}/metrics")
                if health.status_code == 200 and admin.status_code == 401:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the gateway did not answer /healthz in {timeout} s:\n{gateway.logs()}"
                )
            time.sleep(0.05)
