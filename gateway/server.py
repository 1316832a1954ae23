"""Both listeners in one process: ingest on the public port, admin on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Coroutine, Iterator
from typing import Any

import uvicorn

from gateway.admin import build_admin_app
from gateway.app import IngestApp, Runtime
from gateway.errors import ConfigError
from gateway.protocol import guarded
from gateway.settings import Settings

log = logging.getLogger("gateway")


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to ``serve`` (two servers share one process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _run(main: Coroutine[Any, Any, None], loop: str = "asyncio") -> None:
    """asyncio's loop, or uvloop with ``GATEWAY_LOOP=uvloop`` (it measured no faster here)."""
    try:
        if loop != "uvloop":
            raise ImportError
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def run(settings: Settings) -> int:
    """Serve in this process, or in ``settings.workers`` forked processes sharing the ports.

    Workers share nothing but the store (and the spool folder): limits stay exact because
    every worker reserves quota from the store like any other replica.
    """
    if settings.workers <= 1:
        _run(serve(settings), settings.loop)
        return 0
    settings.key_secret_bytes()  # created once here, not raced by the workers
    sockets = (_bind(settings.host, settings.port), _bind(settings.admin_host, settings.admin_port))
    children = []
    for _ in range(settings.workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _run(serve(settings, sockets=sockets), settings.loop)
            except BaseException:
                log.exception("worker failed")
                code = 1
            os._exit(code)
        children.append(pid)

    def forward(sig: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    worst = 0
    for child in children:
        _, status = os.waitpid(child, 0)
        worst = max(worst, os.waitstatus_to_exitcode(status))
    return worst


async def serve(
    settings: Settings,
    ready: asyncio.Event | None = None,
    sockets: tuple[socket.socket, socket.socket] | None = None,
) -> None:
    if settings.admin_port == settings.port and settings.admin_host in {settings.host, "0.0.0.0"}:
        raise ConfigError("the admin listener must not share the ingest port")
    runtime = Runtime(settings)
    await runtime.start()

    def config(app: Any, host: str, port: int) -> uvicorn.Config:
        return uvicorn.Config(
            app,
            http=guarded(settings.header_timeout),
            host=host,
            port=port,
            lifespan="off",
            log_level=settings.log_level,
            access_log=False,
        )

    ingest = _Server(config(IngestApp(runtime), settings.host, settings.port))
    admin = _Server(config(build_admin_app(runtime), settings.admin_host, settings.admin_port))
    loop = asyncio.get_running_loop()

    def stop() -> None:
        ingest.should_exit = admin.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    if not settings.admin_token:
        log.warning("GATEWAY_ADMIN_TOKEN is not set: the admin API refuses every request")
    try:
        if sockets is None:
            tasks = [asyncio.create_task(s.serve()) for s in (ingest, admin)]
        else:
            tasks = [
                asyncio.create_task(s.serve(sockets=[sock]))
                for s, sock in ((ingest, sockets[0]), (admin, sockets[1]))
            ]
        while not (ingest.started and admin.started):
            if any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.02)
        if ready is not None:
            ready.set()
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runtime.close()
