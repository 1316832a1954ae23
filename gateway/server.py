"""Both listeners in one process: ingest on the public port, admin on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import uvicorn

from gateway.admin.app import build_admin_app
from gateway.errors import ConfigError
from gateway.ingest.app import IngestApp
from gateway.ingest.header_deadlines import guarded
from gateway.logs import RequestContext
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.types import ASGIApp

log = logging.getLogger("gateway")
MIN_ADMIN_TOKEN = 16
_OUT_OF_RESOURCE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Shorter than asyncio's one-second retry, so each retry really tries.
ACCEPT_REST = 0.5
# Young objects collected every 10,000 allocations, not 700: a request allocates a few hundred.
GC_YOUNG_THRESHOLD = 10_000


class AcceptErrorLog:
    """The loop's exception handler: accept() failing for lack of file descriptors is logged
    at most once per ``interval``, with how many failures were left out; anything else goes to
    the handler it replaces (asyncio's default one)."""

    def __init__(
        self,
        fallback: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None,
        interval: float = 1.0,
    ) -> None:
        self.fallback = fallback
        self.interval = interval
        self.suppressed = 0
        self._last: BaseException | None = None
        self._window: asyncio.TimerHandle | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (
            isinstance(exc, OSError)
            and exc.errno in _OUT_OF_RESOURCE
            and "accept" in str(context.get("message", ""))
        ):
            if self.fallback is not None:
                self.fallback(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self._last = exc
        if self._window is not None:
            self.suppressed += 1
            return
        log.error("socket.accept() out of system resource: %s", exc)
        self._window = loop.call_later(self.interval, self._close_window, loop)

    def _close_window(self, loop: asyncio.AbstractEventLoop) -> None:
        self._window = None
        if self.suppressed:
            log.error(
                "socket.accept() out of system resource: %s (%d more in the last %g s)",
                self._last,
                self.suppressed,
                self.interval,
            )
            self.suppressed = 0
            self._window = loop.call_later(self.interval, self._close_window, loop)


def check_admin_token(settings: Settings) -> None:
    """A short admin token can be guessed; an unset one refuses every admin request."""
    token = settings.admin_token
    if token is None or token == "":
        log.warning("GATEWAY_ADMIN_TOKEN is not set: the admin API refuses every request")
    elif len(token) < MIN_ADMIN_TOKEN:
        raise ConfigError(
            f"GATEWAY_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN} characters;"
            " generate one with: openssl rand -hex 32"
        )


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to ``serve`` (two servers share one process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if sockets is not None and self.started:
            self._log_started_message(sockets)  # uvicorn says where only when it binds itself


class _Listener(socket.socket):
    """A listening socket that reports nothing to accept for a while after running out of
    file descriptors: asyncio (3.11) keeps calling accept() after EMFILE, up to the backlog,
    and schedules a retry for each failure, so the retries would multiply every second."""

    rest_until = 0.0

    def accept(self) -> tuple[socket.socket, Any]:
        if time.monotonic() < self.rest_until:
            raise BlockingIOError(errno.EAGAIN, "resting after running out of descriptors")
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno in _OUT_OF_RESOURCE:
                self.rest_until = time.monotonic() + ACCEPT_REST
            raise


def _bind(host: str, port: int) -> socket.socket:
    sock = _Listener(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def settle_heap() -> None:
    """What startup built lives as long as the process: kept out of the collector's scans
    (each full collection walked all of it), and young objects collected less often. In
    process, a request through every gate went from 85 to 65 µs."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop unless ``GATEWAY_LOOP=asyncio`` (uvloop took 7-20% less CPU a request here)."""
    if loop != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        log.warning("GATEWAY_LOOP=uvloop but uvloop is not installed: using asyncio's loop")
        return None
    return uvloop.new_event_loop


def _run(main: Coroutine[Any, Any, None], loop: str = "asyncio") -> None:
    # Outside any except block, so no traceback of the server is chained to an ImportError.
    with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
        runner.run(main)


def run(settings: Settings) -> int:
    """Serve in this process, or in ``settings.workers`` forked processes sharing the ports.

    Workers share nothing but the store (and the spool folder): limits stay exact because
    every worker reserves quota from the store like any other replica.
    """
    if settings.workers <= 1:
        _run(serve(settings), settings.loop)
        return 0
    check_admin_token(settings)  # refused once here, not by every worker
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
    check_admin_token(settings)
    if sockets is None:
        ingest_socket = _bind(settings.host, settings.port)
        try:
            sockets = (ingest_socket, _bind(settings.admin_host, settings.admin_port))
        except ConfigError:
            ingest_socket.close()
            raise
    try:
        runtime = Runtime(settings)
        await runtime.start()
        settle_heap()
    except BaseException:
        for sock in sockets:
            sock.close()
        raise

    protocol = guarded(settings.header_timeout, settings.max_header_bytes, settings.max_header_line)

    def config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
        return uvicorn.Config(
            app,
            http=protocol,
            host=host,
            port=port,
            lifespan="off",
            log_level=settings.log_level,
            log_config=None,  # uvicorn's loggers write through the root's (gateway.logs)
            access_log=False,
        )

    ingest = _Server(config(RequestContext(IngestApp(runtime)), settings.host, settings.port))
    admin_app = RequestContext(build_admin_app(runtime))
    admin = _Server(config(admin_app, settings.admin_host, settings.admin_port))
    loop = asyncio.get_running_loop()
    log.debug("serving on %s.%s", type(loop).__module__, type(loop).__name__)

    def stop() -> None:
        ingest.should_exit = admin.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(AcceptErrorLog(previous_handler))
    try:
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
        loop.set_exception_handler(previous_handler)
        await runtime.close()
