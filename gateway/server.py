"""Both listeners in one process: ingest on the public port, admin on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Any

import uvicorn

from gateway.admin import build_admin_app
from gateway.app import IngestApp, Runtime
from gateway.errors import ConfigError
from gateway.settings import Settings

log = logging.getLogger("gateway")


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to ``serve`` (two servers share one process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    if settings.admin_port == settings.port and settings.admin_host in {settings.host, "0.0.0.0"}:
        raise ConfigError("the admin listener must not share the ingest port")
    runtime = Runtime(settings)
    await runtime.start()

    def config(app: Any, host: str, port: int) -> uvicorn.Config:
        return uvicorn.Config(
            app,
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
        tasks = [asyncio.create_task(s.serve()) for s in (ingest, admin)]
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
